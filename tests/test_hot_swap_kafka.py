"""The running scorer swaps models with no restart and no gap: promotion, rollback, broken checkpoint."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from kafka import KafkaProducer
from test_serve_kafka import CHANNELS, SPEC, assert_exactly_once, make_topic, read_log, write_config

from models.checkpoint import WEIGHTS_FILE
from models.registry import ModelRegistry
from pipeline.config import load_config
from pipeline.producer import produce
from pipeline.service import serve

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def fleet() -> pd.DataFrame:
    from pipeline.simulator import simulate_fleet

    return simulate_fleet(SPEC)


def test_scorer_keeps_scoring_through_promotion_rollback_and_a_broken_checkpoint(
    kafka_broker, fleet: pd.DataFrame, tmp_path: Path
) -> None:
    from models.detector import AnomalyDetector
    from models.training import TrainingConfig

    segments = [g[CHANNELS].to_numpy()[:400] for _, g in fleet.groupby("sensor_id")]
    registry_dir = tmp_path / "registry"
    registry = ModelRegistry(registry_dir)
    first_model = AnomalyDetector.fit(
        segments,
        window=20,
        hidden_size=16,
        latent_size=4,
        channels=tuple(CHANNELS),
        training=TrainingConfig(epochs=3, progress=False),
    )
    v1 = registry.publish(first_model, promote=True)
    v2 = registry.publish(first_model)
    broken = registry.publish(first_model)
    (registry.path_of(broken) / WEIGHTS_FILE).write_bytes(b"\x00" * 64)

    topic = make_topic(kafka_broker.bootstrap_servers, partitions=2)
    config = load_config(
        write_config(
            tmp_path,
            kafka_broker.bootstrap_servers,
            topic,
            registry_dir,
            model={"watch_interval_s": 0.2},
            sinks={"roll_rows": 200, "roll_seconds": 0.3},
        )
    )
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers, acks="all", linger_ms=5)
    chunks = [fleet.iloc[i : i + 600] for i in range(0, len(fleet), 600)]
    events: list[str] = []

    def operate() -> None:
        """Feed the stream in chunks; promote, roll back, then point 'current' at a broken version."""
        for i, chunk in enumerate(chunks):
            produce(producer, topic, chunk, CHANNELS, progress=False)
            time.sleep(0.8)
            if i == 2:
                registry.promote(v2, reason="test promotion")
                events.append("promote")
            elif i == 5:
                registry.rollback(reason="test rollback")
                events.append("rollback")
            elif i == 7:
                registry._write_pointer({"current": broken, "history": [v1]})  # bypasses promote's own check
                events.append("broken")
        producer.flush()

    operator = threading.Thread(target=operate, daemon=True)
    operator.start()
    stats = serve(config, idle_timeout_s=4)
    operator.join()
    producer.close()

    assert events == ["promote", "rollback", "broken"]
    log = read_log(config.data_dir)
    assert_exactly_once(log, fleet)
    assert stats.model_swaps == 2, "promotion and rollback swap; the broken version is refused"
    assert set(log["model_version"]) == {v1, v2}
    for _, rows in log.sort_values("source_offset_end").groupby("source_partition"):
        versions = rows["model_version"].tolist()
        switches = sum(a != b for a, b in itertools.pairwise(versions))
        assert switches == 2, f"expected v1 -> v2 -> v1 in offset order, got {switches} switches"
    last = log.sort_values("ingest_time")["model_version"].iloc[-1]
    assert last == v1, "after the broken checkpoint was refused, the rolled-back model keeps serving"


def test_drift_event_on_the_topic_and_the_schedule_together_give_one_run(kafka_broker, tmp_path: Path) -> None:
    import json

    from jobs.retrain import RetrainDecision
    from jobs.scheduler import run_scheduler

    topic = make_topic(kafka_broker.bootstrap_servers, partitions=1)
    config = load_config(
        overrides=[
            f"data_dir={tmp_path}",
            f"kafka.bootstrap_servers={kafka_broker.bootstrap_servers}",
            f"kafka.events_topic={topic}",
            "retrain.interval_minutes=0.05",
            "retrain.debounce_s=0.5",
        ]
    )
    runs: list[tuple[str, float, float]] = []

    def job(_config, trigger):
        started = time.monotonic()
        time.sleep(4.0)
        runs.append((trigger, started, time.monotonic()))
        return RetrainDecision("t", trigger, "skipped", "test", "v000001", None, 0, 0)

    stop = threading.Event()
    scheduler_thread = threading.Thread(target=run_scheduler, args=(config, stop, job), daemon=True)
    scheduler_thread.start()
    time.sleep(2.0)  # the events consumer joins (it starts at the latest offset)
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers)
    producer.send(topic, json.dumps({"type": "drift", "scope": "fleet", "detector": "adwin"}).encode())
    producer.flush()
    producer.close()
    time.sleep(9.0)
    stop.set()
    scheduler_thread.join(timeout=30)

    assert runs, "neither the schedule nor the drift event started a run"
    for (_, _, end_a), (_, start_b, _) in itertools.pairwise(sorted(runs, key=lambda r: r[1])):
        assert start_b >= end_a, "two retraining runs overlapped"
    # 11 s of a 3 s schedule plus a drift event would be 4-5 runs if nothing held them back; 4 s runs
    # taking turns leave room for at most 3
    assert len(runs) <= 3, f"{len(runs)} runs: triggers did not wait for the run in progress"
