"""No single message, producer or broker fault stops the scorer: against the real broker.

- compressed batches from librdkafka (confluent-kafka) in every codec, with keys and headers;
- a corpus of poison messages (absurd numbers, deep nesting, lone surrogates, far-future clocks,
  an oversize payload) between good readings: each is a dead letter with its code, every good
  window is scored once, the error log stays queryable;
- SIGTERM while the broker is gone ends `serve` within scoring.stop_timeout_s, and the broker comes
  back on the same storage with the committed offsets.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import time
import urllib.error
import urllib.request

import duckdb
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from test_serve_kafka import (  # fleet and registry_dir are fixtures: the same trained model
    CHANNELS,
    WINDOW,
    assert_exactly_once,
    expected_windows,
    fleet,
    read_log,
    registry_dir,
    spawn_serve,
    write_config,
)

from pipeline.config import load_config
from pipeline.local_kafka import LocalKafkaBroker, LocalKafkaError, fetch_kafka_jars, free_port
from pipeline.messages import REJECTION_CODES
from pipeline.producer import batch_messages, create_topic, produce
from pipeline.service import serve

pytestmark = pytest.mark.kafka

CODECS = ("gzip", "snappy", "lz4", "zstd")


def read_dead_letters(bootstrap: str, topic: str, expected: int, timeout_s: float = 20) -> list[dict]:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=3000)
    letters: list[dict] = []
    deadline = time.monotonic() + timeout_s
    while len(letters) < expected and time.monotonic() < deadline:
        letters.extend(json.loads(message.value) for message in consumer)
    consumer.close()
    return letters


def test_every_codec_from_a_librdkafka_producer_is_scored(kafka_broker, registry_dir, fleet, tmp_path) -> None:
    from confluent_kafka import Producer

    bootstrap = kafka_broker.bootstrap_servers
    topic = create_topic(bootstrap, "codecs", 2)
    sensors = sorted(fleet["sensor_id"].unique())[: len(CODECS)]
    frame = fleet[fleet["sensor_id"].isin(sensors)].iloc[: 4 * 300]
    for codec, sensor in zip(CODECS, sensors, strict=True):
        producer = Producer({"bootstrap.servers": bootstrap, "compression.type": codec, "linger.ms": 20})
        for key, readings in batch_messages(frame[frame["sensor_id"] == sensor], CHANNELS, readings_per_message=2):
            value = json.dumps({"schema": 1, "readings": readings}).encode()
            producer.produce(topic, key=key, value=value, headers=[("codec", codec.encode()), ("plant", b"7")])
        assert producer.flush(30) == 0, f"{codec}: messages left unsent"
    config = load_config(write_config(tmp_path, bootstrap, topic, registry_dir))

    stats = serve(config, idle_timeout_s=4)

    assert stats.dead_letters == 0
    log = read_log(config.data_dir)
    assert_exactly_once(log, frame)
    assert set(log["sensor_id"]) == set(sensors), "a sensor per codec, every one scored"


def poison_corpus(sensor: str) -> dict[str, tuple[bytes, str]]:
    """name -> (raw message, expected rejection code): each kind that once stopped the consumer."""
    good_values = json.dumps(dict.fromkeys(CHANNELS, 1.0))

    def reading(ts: str, sensor_id: str = json.dumps(sensor)) -> bytes:
        return f'{{"sensor_id": {sensor_id}, "ts": {ts}, "values": {good_values}}}'.encode()

    return {
        "ts-400-digits": (reading("9" * 400), "bad_ts"),
        "int-5000-digits": (reading("1767225600", sensor_id='"x"').replace(b"1.0", b"1" * 5000, 1), "invalid_json"),
        "nested-100000": (b"[" * 100_000, "invalid_json"),
        "surrogate-id": (reading("1767225600", sensor_id='"\\ud800"'), "bad_sensor_id"),
        "far-future": (reading('"9999-12-31T23:59:59Z"'), "ts_out_of_range"),
        "ts-1e15": (reading("1e15"), "ts_out_of_range"),
        "empty-batch": (b'{"schema": 1, "readings": []}', "bad_readings"),
        "oversize-800kB": (b"{" + b"x" * 800_000, "invalid_json"),
        "random-bytes": (os.urandom(64), "invalid_json"),
    }


def test_poison_messages_each_get_a_coded_dead_letter_and_the_fleet_is_scored(
    kafka_broker, registry_dir, fleet, tmp_path
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = create_topic(bootstrap, "poison", 1)
    sensors = sorted(fleet["sensor_id"].unique())[:3]
    good = fleet[fleet["sensor_id"].isin(sensors)].iloc[:600]
    corpus = poison_corpus(sensors[0])
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=2_000_000)
    produce(producer, topic, good.iloc[:300], CHANNELS, progress=False)
    for name, (raw, _) in corpus.items():
        producer.send(topic, key=name.encode(), value=raw)
    produce(producer, topic, good.iloc[300:], CHANNELS, progress=False)
    producer.close()
    config = load_config(write_config(tmp_path, bootstrap, topic, registry_dir, metrics={"port": free_port()}))

    stats = serve(config, idle_timeout_s=4)

    assert stats.dead_letters == len(corpus)
    log = read_log(config.data_dir)
    assert_exactly_once(log, good)  # the far-future reading evicted nobody: no window lost
    letters = {
        base64.b64decode(letter["key_b64"]).decode(): letter
        for letter in read_dead_letters(bootstrap, f"{topic}-dlq", len(corpus))
    }
    assert set(letters) == set(corpus), "every poison message is in the dead-letter topic"
    for name, (raw, code) in corpus.items():
        letter = letters[name]
        assert letter["code"] == code, (name, letter["reason"])
        assert letter["code"] in REJECTION_CODES
        assert letter["raw_length"] == len(raw)
        assert letter["raw_sha256"] == hashlib.sha256(raw).hexdigest()
    assert letters["oversize-800kB"]["raw_truncated"] is True
    assert letters["nested-100000"]["raw_truncated"] is False
    assert base64.b64decode(letters["random-bytes"]["raw_b64"]) == corpus["random-bytes"][0]
    # the log stays readable by analysts: no absurd dates, DuckDB reads every part
    parts = f"{config.error_log_dir}/errors/**/*.parquet"
    dates = duckdb.sql(f"SELECT min(window_end), max(window_end), count(*) FROM read_parquet('{parts}')").fetchall()[0]
    assert dates[2] == len(expected_windows(good))
    assert dates[1].year == 2026


def http_status(url: str) -> int:
    try:
        return urllib.request.urlopen(url, timeout=2).status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def committed_offset(bootstrap: str, group: str, topic: str, timeout_s: float) -> int | None:
    """The group's committed offset of partition 0, waiting up to ``timeout_s`` for one to appear."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            committed = consumer.committed(TopicPartition(topic, 0))
            if committed is not None:
                return committed
            time.sleep(0.3)
        return None
    finally:
        consumer.close()


def test_sigterm_while_the_broker_is_gone_ends_serve_in_time_and_the_broker_keeps_its_storage(
    kafka_broker, registry_dir, fleet, tmp_path
) -> None:
    settings = load_config(env=os.environ).local_kafka
    try:
        broker = LocalKafkaBroker(fetch_kafka_jars(settings.cache_dir), tmp_path / "broker", heap="384m")
        broker.start(settings.start_timeout_s)
    except LocalKafkaError as error:
        pytest.skip(f"needs a broker of its own to kill: {error}")
    try:
        topic = create_topic(broker.bootstrap_servers, "outage", 1)
        frame = fleet[fleet["sensor_id"] == fleet["sensor_id"].iloc[0]].iloc[:200]
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
        produce(producer, topic, frame, CHANNELS, progress=False)
        producer.close()
        port = free_port()
        config_path = write_config(
            tmp_path,
            broker.bootstrap_servers,
            topic,
            registry_dir,
            metrics={"port": port},
            scoring={"stop_timeout_s": 4.0},
        )
        process = spawn_serve(config_path)
        deadline = time.monotonic() + 90
        while http_status(f"http://127.0.0.1:{port}/readyz") != 200:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "serve never became ready"
            time.sleep(0.2)
        assert committed_offset(broker.bootstrap_servers, f"g-{topic}", topic, 60) == len(frame)
        assert len(read_log(tmp_path / "data")) == len(frame) - WINDOW + 1
        assert http_status(f"http://127.0.0.1:{port}/healthz") == 200

        assert broker.process is not None
        broker.process.send_signal(signal.SIGKILL)
        broker.process.wait()
        time.sleep(1.0)
        stopped = time.monotonic()
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
        took = time.monotonic() - stopped
        assert took < 4.0 + 3.0, f"serve took {took:.1f} s to stop:\n{output[-3000:]}"
        assert process.returncode in (0, 75), output[-3000:]

        broker.start(settings.start_timeout_s, fresh=False)  # same storage: the committed offset survives
        assert committed_offset(broker.bootstrap_servers, f"g-{topic}", topic, 60) == len(frame)
    finally:
        broker.stop()
