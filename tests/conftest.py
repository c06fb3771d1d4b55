"""Shared fixtures. The Kafka broker is real; how it is found:

1. ``KAFKA_BOOTSTRAP_SERVERS`` set: use that broker as it is.
2. A Docker engine answers: testcontainers' Kafka in KRaft mode.
3. Otherwise: the local broker of ``pipeline.local_kafka`` (Maven-fetched jars, Java 17).

Outside CI a test that needs Kafka is skipped, with the reason, when none of these works; in CI
(``CI=true``) it fails instead, so that a missing broker can never pass silently.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from pipeline.config import load_config
from pipeline.local_kafka import KAFKA_VERSION, LocalKafkaBroker, LocalKafkaError, fetch_kafka_jars

log = logging.getLogger("tests.kafka")

TESTCONTAINERS_IMAGE = f"apache/kafka:{KAFKA_VERSION}"


@dataclass(frozen=True)
class KafkaBroker:
    """A reachable broker: its bootstrap address, what it is and where it came from."""

    bootstrap_servers: str
    version: str
    source: str


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _docker_engine_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:  # any failure means "no usable engine"; the reason is irrelevant here
        return False


def _announce(request: pytest.FixtureRequest, broker: KafkaBroker) -> None:
    line = f"kafka broker: {broker.version} via {broker.source} at {broker.bootstrap_servers}"
    log.info(line)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\n{line}")


@pytest.fixture(scope="session")
def kafka_broker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A real Apache Kafka broker for the whole session (see module docstring for how it is found)."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        broker = KafkaBroker(external, "external broker (version not probed)", "KAFKA_BOOTSTRAP_SERVERS")
        _announce(request, broker)
        yield broker
        return

    if _docker_engine_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer(TESTCONTAINERS_IMAGE).with_kraft() as container:
            broker = KafkaBroker(container.get_bootstrap_server(), f"Apache Kafka {KAFKA_VERSION}", "testcontainers")
            _announce(request, broker)
            yield broker
        return

    settings = load_config(env=os.environ).local_kafka  # DRIFTLINE_LOCAL_KAFKA__CACHE_DIR moves the jar cache
    try:
        libs = fetch_kafka_jars(settings.cache_dir)
        local = LocalKafkaBroker(libs, tmp_path_factory.mktemp("kafka"), heap=settings.heap)
        local.start(settings.start_timeout_s)
    except LocalKafkaError as error:
        reason = (
            "no Kafka broker: KAFKA_BOOTSTRAP_SERVERS is unset, no Docker engine answers, "
            f"and the local broker failed: {error}"
        )
        if _in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    broker = KafkaBroker(local.bootstrap_servers, f"Apache Kafka {local.version} (KRaft)", "local broker")
    _announce(request, broker)
    try:
        yield broker
    finally:
        local.stop()
