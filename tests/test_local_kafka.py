"""The project's local KRaft broker: its own quirks, against the real jars."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import pipeline.local_kafka as local_kafka
from pipeline.config import load_config

pytestmark = pytest.mark.kafka


def test_a_cluster_id_that_starts_with_a_dash_still_formats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """1 in 64 random ids starts with '-'; passed as a separate argument the storage tool took it for a flag."""
    settings = load_config(env=os.environ).local_kafka
    try:
        libs = local_kafka.fetch_kafka_jars(settings.cache_dir)
    except local_kafka.LocalKafkaError as error:
        pytest.skip(f"no Kafka jars: {error}")
    monkeypatch.setattr(local_kafka, "_cluster_id", lambda: "-g5WbEr6T9iJ78A7puhA_A")
    broker = local_kafka.LocalKafkaBroker(libs, tmp_path / "broker", heap="256m")
    try:
        broker.start(settings.start_timeout_s)
        assert broker.has_storage()
    finally:
        broker.stop()
