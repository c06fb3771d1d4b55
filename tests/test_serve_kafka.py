"""The streaming scorer against a real Kafka broker: end to end, kill -9, rebalance, poison messages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient
from kafka.errors import CoordinatorNotAvailableError

from models.detector import AnomalyDetector
from models.grouping import anomaly_episodes
from models.registry import ModelRegistry
from models.training import TrainingConfig
from pipeline.config import load_config
from pipeline.messages import encode_readings
from pipeline.producer import batch_messages, create_topic, produce
from pipeline.service import serve
from pipeline.simulator import FleetSpec, simulate_fleet

pytestmark = pytest.mark.kafka

WINDOW = 20
SPEC = FleetSpec(
    sensors=6,
    rows=900,
    normal_prefix_rows=400,
    anomalies_per_sensor=1,
    anomaly_kinds=("level_shift",),
    anomaly_rows=(60, 90),
    seed=3,
)
CHANNELS = list(SPEC.channels)


@pytest.fixture(scope="module")
def fleet() -> pd.DataFrame:
    return simulate_fleet(SPEC)


def publish_model(fleet: pd.DataFrame, normal_rows: int, root: Path) -> Path:
    """A model trained on the first ``normal_rows`` of every sensor, published under ``root`` as current."""
    segments = [g[CHANNELS].to_numpy()[:normal_rows] for _, g in fleet.groupby("sensor_id")]
    detector = AnomalyDetector.fit(
        segments,
        window=WINDOW,
        hidden_size=32,
        latent_size=4,
        channels=tuple(CHANNELS),
        training=TrainingConfig(epochs=25, batch_size=64, progress=False),
    )
    ModelRegistry(root).publish(detector, promote=True)
    return root


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory: pytest.TempPathFactory, fleet: pd.DataFrame) -> Path:
    """A model trained on the normal prefix of every sensor, published as the current version."""
    return publish_model(fleet, SPEC.normal_prefix_rows, tmp_path_factory.mktemp("registry"))


def make_topic(bootstrap: str, partitions: int) -> str:
    return create_topic(bootstrap, "readings", partitions)


def write_config(tmp_path: Path, bootstrap: str, topic: str, registry_dir: Path, **sections: dict) -> Path:
    config = {
        "data_dir": str(tmp_path / "data"),
        "kafka": {
            "bootstrap_servers": bootstrap,
            "topics": [topic],
            "group_id": f"g-{topic}",
            "dead_letter_topic": f"{topic}-dlq",
            "events_topic": f"{topic}-events",
            "max_poll_records": 200,
            "session_timeout_ms": 8000,
        },
        "model": {"registry_dir": str(registry_dir), "device": "cpu"},
        "metrics": {"port": 0},
        "sinks": {"roll_rows": 300, "roll_seconds": 1.0},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    path = tmp_path / "driftline.toml"
    import tomli_w

    path.write_text(tomli_w.dumps(config))
    return path


def expected_windows(frame: pd.DataFrame) -> set[tuple[str, pd.Timestamp]]:
    expected = set()
    for sensor, group in frame.groupby("sensor_id"):
        ends = group["timestamp"].sort_values().iloc[WINDOW - 1 :]
        expected |= {(str(sensor), pd.Timestamp(ts)) for ts in ends}
    return expected


def read_log(data_dir: Path) -> pd.DataFrame:
    errors = data_dir / "error_log" / "errors"
    if not errors.exists():
        return pd.DataFrame(columns=["sensor_id", "window_end"])
    return pd.read_parquet(errors)


def assert_exactly_once(log: pd.DataFrame, frame: pd.DataFrame) -> None:
    keys = list(zip(log["sensor_id"], log["window_end"], strict=True))
    duplicates = len(keys) - len(set(keys))
    assert duplicates == 0, f"{duplicates} windows written twice"
    missing = expected_windows(frame) - set(keys)
    assert not missing, f"{len(missing)} windows never scored, e.g. {sorted(missing)[:3]}"
    assert len(keys) == len(expected_windows(frame))


SMALL_BATCHES = {"kafka": {"max_poll_records": 50}, "sinks": {"roll_rows": 100, "roll_seconds": 0.2}}


def send(bootstrap: str, topic: str, frame: pd.DataFrame, per_message: int = 1, client: str = "kafka-python") -> None:
    """Produce ``frame`` keyed by sensor with our producer, or with ``client="librdkafka"`` (confluent-kafka,
    zstd-compressed batches): a client nobody here wrote."""
    if client == "librdkafka":
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": bootstrap, "compression.type": "zstd", "linger.ms": 10})
        for key, readings in batch_messages(frame, CHANNELS, readings_per_message=per_message):
            producer.produce(topic, key=key, value=encode_readings(readings))
            producer.poll(0)
        assert producer.flush(30) == 0, "librdkafka: messages left unsent"
        return
    kafka_python = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=10)
    produce(kafka_python, topic, frame, CHANNELS, readings_per_message=per_message, progress=False)
    kafka_python.close()


def wait_for_parts(data_dir: Path, parts: int, process: subprocess.Popen[str], timeout_s: float = 120) -> None:
    """Wait until ``process`` has written ``parts`` error-log parts (it must still be running)."""
    deadline = time.monotonic() + timeout_s
    while len(list(data_dir.rglob("part-*.parquet"))) < parts:
        assert process.poll() is None, f"serve ended early:\n{process.stdout.read() if process.stdout else ''}"
        assert time.monotonic() < deadline, f"serve wrote fewer than {parts} parts in {timeout_s:.0f}s"
        time.sleep(0.05)


def wait_for_members(bootstrap: str, group: str, members: int, timeout_s: float = 120) -> None:
    """Block until the consumer group has ``members`` members in a stable state."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            try:
                description = admin.describe_consumer_groups([group])[0]
            except CoordinatorNotAvailableError:  # a fresh broker creates __consumer_offsets on first use
                time.sleep(0.2)
                continue
            if description.state == "Stable" and len(description.members) == members:
                return
            time.sleep(0.2)
    finally:
        admin.close()
    raise AssertionError(f"group {group} never reached {members} stable members")


def spawn_serve(config_path: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "DRIFTLINE_CONFIG": str(config_path), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "pipeline.cli", "serve", *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def kill_9_mid_stream(config_path: Path, data_dir: Path, parts: int) -> None:
    """Start serve, let it write ``parts`` error-log parts, then kill -9 it."""
    first = spawn_serve(config_path, "--idle-timeout", "10")
    wait_for_parts(data_dir, parts, first)
    first.send_signal(signal.SIGKILL)
    first.wait()


def test_end_to_end_simulated_fleet_is_scored_and_anomalies_flagged(
    kafka_broker, registry_dir, fleet, tmp_path
) -> None:
    topic = make_topic(kafka_broker.bootstrap_servers, partitions=3)
    config = load_config(write_config(tmp_path, kafka_broker.bootstrap_servers, topic, registry_dir))
    send(kafka_broker.bootstrap_servers, topic, fleet, per_message=3)

    stats = serve(config, idle_timeout_s=5)

    log = read_log(config.data_dir)
    assert_exactly_once(log, fleet)
    assert stats.readings == len(fleet)
    assert stats.commits >= 2
    labels = fleet.set_index(["sensor_id", "timestamp"])["anomaly"]
    log["label"] = labels.loc[
        list(zip(log["sensor_id"], log["window_end"].dt.tz_convert("UTC"), strict=True))
    ].to_numpy()
    caught = 0
    for sensor, group in fleet.groupby("sensor_id"):
        for start, stop in anomaly_episodes(group["anomaly"].to_numpy()):
            times = group["timestamp"].iloc[start:stop]
            flagged = log[(log.sensor_id == sensor) & log.window_end.isin(times)]["anomaly"]
            caught += int(flagged.any())
    injected = sum(len(anomaly_episodes(g["anomaly"].to_numpy())) for _, g in fleet.groupby("sensor_id"))
    assert caught >= injected - 1, f"only {caught} of {injected} injected level shifts were flagged"
    normal = log[(log["label"] == 0)]
    assert normal["anomaly"].mean() < 0.1, "normal windows should rarely alarm"


def test_kill_9_mid_stream_then_restart_scores_every_window_exactly_once(kafka_broker, registry_dir, fleet, tmp_path):
    topic = make_topic(kafka_broker.bootstrap_servers, partitions=3)
    config_path = write_config(tmp_path, kafka_broker.bootstrap_servers, topic, registry_dir, **SMALL_BATCHES)
    send(kafka_broker.bootstrap_servers, topic, fleet)
    data_dir = tmp_path / "data"

    kill_9_mid_stream(config_path, data_dir, 4)
    scored_before = len(read_log(data_dir))
    assert 0 < scored_before < len(expected_windows(fleet)), "the kill must land mid-stream"

    second = spawn_serve(config_path, "--idle-timeout", "5")
    output, _ = second.communicate(timeout=180)
    assert second.returncode == 0, output
    assert_exactly_once(read_log(data_dir), fleet)


def test_rebalance_between_two_consumers_loses_and_duplicates_nothing(kafka_broker, registry_dir, fleet, tmp_path):
    topic = make_topic(kafka_broker.bootstrap_servers, partitions=4)
    config_path = write_config(tmp_path, kafka_broker.bootstrap_servers, topic, registry_dir, **SMALL_BATCHES)
    send(kafka_broker.bootstrap_servers, topic, fleet.iloc[: len(fleet) // 2])
    data_dir = tmp_path / "data"

    # long idle timeouts: the consumers are stopped with SIGTERM once every window is in the log, so a
    # slow start of the second one can never let the first leave before the rebalance
    first = spawn_serve(config_path, "--idle-timeout", "600")
    wait_for_parts(data_dir, 2, first)
    second = spawn_serve(config_path, "--idle-timeout", "600")  # joins the group: partitions move
    wait_for_members(kafka_broker.bootstrap_servers, load_config(config_path).kafka.group_id, 2)
    send(kafka_broker.bootstrap_servers, topic, fleet.iloc[len(fleet) // 2 :])
    deadline = time.monotonic() + 180
    while len(read_log(data_dir)) < len(expected_windows(fleet)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for process in (first, second):
        process.send_signal(signal.SIGTERM)  # graceful: finish the batch, flush, commit, close
    outputs = [process.communicate(timeout=120)[0] for process in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    assert any("partitions revoked" in output for output in outputs), "no rebalance happened"
    assert_exactly_once(read_log(data_dir), fleet)


def test_serve_workers_split_the_partitions_and_score_each_window_once(kafka_broker, registry_dir, fleet, tmp_path):
    topic = make_topic(kafka_broker.bootstrap_servers, partitions=4)
    config_path = write_config(tmp_path, kafka_broker.bootstrap_servers, topic, registry_dir, **SMALL_BATCHES)
    data_dir = tmp_path / "data"
    supervisor = spawn_serve(config_path, "--workers", "2", "--idle-timeout", "600")
    try:
        wait_for_members(kafka_broker.bootstrap_servers, load_config(config_path).kafka.group_id, 2)
    except AssertionError:
        supervisor.kill()
        raise AssertionError(supervisor.communicate()[0]) from None
    send(kafka_broker.bootstrap_servers, topic, fleet)
    deadline = time.monotonic() + 180
    while len(read_log(data_dir)) < len(expected_windows(fleet)) and time.monotonic() < deadline:
        time.sleep(0.2)
    supervisor.send_signal(signal.SIGTERM)  # forwarded to both workers: each flushes, commits and exits 0
    output, _ = supervisor.communicate(timeout=120)
    assert supervisor.returncode == 0, output
    assert output.count("stopped: ") == 2, output  # one summary per worker
    assert_exactly_once(read_log(data_dir), fleet)


def test_poison_messages_are_dead_lettered_and_the_stream_goes_on(kafka_broker, registry_dir, fleet, tmp_path) -> None:
    topic = make_topic(kafka_broker.bootstrap_servers, partitions=1)
    sensors = sorted(fleet["sensor_id"].unique())
    config = load_config(
        write_config(
            tmp_path,
            kafka_broker.bootstrap_servers,
            topic,
            registry_dir,
            scoring={"allowed_sensors": sensors, "max_message_bytes": 10_000},
        )
    )
    good = fleet[fleet["sensor_id"] == sensors[0]].iloc[:100]
    poison = [
        (b"bad-json", b"{not json"),
        (b"no-values", json.dumps({"sensor_id": sensors[0], "ts": 5.0}).encode()),
        (b"nan", b'{"sensor_id": "%s", "ts": 7.0, "values": {"flow": NaN}}' % sensors[0].encode()),
        (
            b"stranger",
            json.dumps({"sensor_id": "stranger", "ts": 1.0, "values": dict.fromkeys(CHANNELS, 1.0)}).encode(),
        ),
        (b"huge", b"x" * 20_000),
    ]
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers, acks="all")
    produce(producer, topic, good.iloc[:50], CHANNELS, progress=False)
    for key, value in poison:
        producer.send(topic, key=key, value=value)
    produce(producer, topic, good.iloc[50:], CHANNELS, progress=False)
    producer.close()

    stats = serve(config, idle_timeout_s=4)

    assert stats.dead_letters == len(poison)
    assert stats.windows == len(good) - WINDOW + 1, "good readings around the poison are all scored"
    dlq = KafkaConsumer(
        f"{topic}-dlq",
        bootstrap_servers=kafka_broker.bootstrap_servers,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    letters = [json.loads(message.value) for message in dlq]
    dlq.close()
    reasons = {letter["key_b64"]: letter["reason"] for letter in letters}
    assert len(letters) == len(poison)
    assert all(letter["source_topic"] == topic and letter["source_offset"] >= 50 for letter in letters)
    import base64

    by_key = {base64.b64decode(k): v for k, v in reasons.items()}
    assert "not valid JSON" in by_key[b"bad-json"]
    assert "values must be an object" in by_key[b"no-values"]
    assert "NaN" in by_key[b"nan"] or "missing" in by_key[b"nan"]
    assert "unknown sensor" in by_key[b"stranger"]
    assert "byte limit" in by_key[b"huge"]
    assert np.isfinite(read_log(config.data_dir)["error"]).all()
