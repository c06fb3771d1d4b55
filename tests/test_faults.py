"""Faults that must not stop the scorer, without a broker: hostile clocks, failing disks, broken registries.

What needs Kafka (codecs, dead letters acked by the broker, SIGTERM with the broker gone) is in
test_hostile_input_kafka.py; the whole set under load is `driftline benchmark faults`.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_scoring_loop import CHANNELS, WINDOW, ListSource

from models.detector import AnomalyDetector
from models.registry import ModelRegistry
from models.training import TrainingConfig
from pipeline.checkpointer import CheckpointSettings
from pipeline.consumer import LoopSettings, ScoringLoop
from pipeline.durability import RetryPolicy, WriteOutageError
from pipeline.messages import encode_readings
from pipeline.metrics import ScoringMetrics
from pipeline.model_watch import RegistryWatcher
from pipeline.scorer import WindowScorer
from pipeline.sinks import DeadLetterFile, ErrorLogSink, ScoredWindows
from pipeline.sources import Record
from pipeline.windows import WindowAssembler

T0 = 1_767_225_600.0  # 2026-01-01


@pytest.fixture(scope="module")
def detector() -> AnomalyDetector:
    rng = np.random.default_rng(0)
    return AnomalyDetector.fit(
        rng.normal(size=(300, 2)),
        window=WINDOW,
        hidden_size=4,
        latent_size=2,
        channels=CHANNELS,
        training=TrainingConfig(epochs=1, progress=False),
    )


def stream(n: int, sensors: int, extra: dict[int, bytes] | None = None) -> list[Record]:
    """``n`` readings per sensor at 1 s; ``extra`` inserts raw messages at given positions."""
    rng = np.random.default_rng(2)
    out: list[Record] = []
    for t in range(n):
        for s in range(sensors):
            while extra and len(out) in extra:
                out.append(Record("t", 0, len(out), b"x", extra.pop(len(out))))
            values = dict(zip(CHANNELS, rng.normal(size=2).tolist(), strict=True))
            out.append(
                Record(
                    "t", 0, len(out), None, encode_readings([{"sensor_id": f"s{s}", "ts": T0 + t, "values": values}])
                )
            )
    return out


EVERY_40_WINDOWS = CheckpointSettings(every_rows=40, every_s=3600)


def loop_for(detector: AnomalyDetector, root: Path, error_log: ErrorLogSink | None = None, **settings) -> ScoringLoop:
    return ScoringLoop(
        WindowScorer(detector, "v1"),
        WindowAssembler(WINDOW, idle_ttl_s=60),
        error_log or ErrorLogSink(root, CHANNELS),
        DeadLetterFile(root / "dead.jsonl"),
        settings=LoopSettings(max_poll_records=16, checkpoint=EVERY_40_WINDOWS, **settings),
    )


def dead_letters(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "dead.jsonl").read_text().splitlines()]


def test_one_far_future_reading_neither_evicts_the_fleet_nor_reaches_the_log(detector, tmp_path) -> None:
    far = json.dumps({"sensor_id": "liar", "ts": "9999-12-31T23:59:59Z", "values": {"a": 1, "b": 2}}).encode()
    huge = json.dumps({"sensor_id": "liar", "ts": 1e15, "values": {"a": 1, "b": 2}}).encode()
    loop = loop_for(detector, tmp_path)
    stats = loop.run(ListSource(stream(80, 3, {30: far, 31: huge}), batch=16), idle_timeout_s=0)
    assert stats.windows == 3 * (80 - WINDOW + 1), "every healthy sensor keeps all its windows"
    assert loop.assembler.stats.evicted == 0
    assert [d["code"] for d in dead_letters(tmp_path)] == ["ts_out_of_range", "ts_out_of_range"]
    log = pd.read_parquet(tmp_path / "errors")
    assert log["window_end"].max() < pd.Timestamp("2027-01-01", tz="UTC")


def test_a_reading_before_min_ts_is_dead_lettered(detector, tmp_path) -> None:
    old = json.dumps({"sensor_id": "s0", "ts": 5, "values": {"a": 1, "b": 2}}).encode()
    loop_for(detector, tmp_path).run(ListSource(stream(10, 1, {3: old}), batch=16), idle_timeout_s=0)
    assert [d["code"] for d in dead_letters(tmp_path)] == ["ts_out_of_range"]


class FlakyDisk(ErrorLogSink):
    """An error log whose first ``failures`` durable writes fail as a full disk would."""

    def __init__(self, root: Path, failures: int) -> None:
        super().__init__(root, CHANNELS)
        self.failures = failures
        self.attempts = 0

    def write(self, batches: list[ScoredWindows]) -> list[Path]:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(batches)


@pytest.mark.parametrize("pipelined", [False, True])
def test_a_full_disk_is_waited_out_and_nothing_is_committed_meanwhile(detector, tmp_path, pipelined) -> None:
    disk = FlakyDisk(tmp_path, failures=3)
    loop = loop_for(detector, tmp_path, disk, pipelined=pipelined, write_retry=RetryPolicy(initial_backoff_s=0.01))
    loop.metrics = metrics = ScoringMetrics()
    source = ListSource(stream(40, 2), batch=16)
    stats = loop.run(source, idle_timeout_s=0)
    assert disk.attempts > 3
    assert stats.windows == 2 * (40 - WINDOW + 1)
    assert len(pd.read_parquet(tmp_path / "errors")) == stats.windows, "no window lost to the full disk"
    assert source.commits[-1][("t", 0)][0] == len(source.records)
    assert b'driftline_write_failures_total{sink="error_log"} 3.0' in metrics.exposition()


def test_a_disk_that_stays_full_ends_the_loop_with_a_write_outage_and_no_commit(detector, tmp_path) -> None:
    disk = FlakyDisk(tmp_path, failures=10**9)
    loop = loop_for(
        detector, tmp_path, disk, pipelined=False, write_retry=RetryPolicy(initial_backoff_s=0.01, give_up_after_s=0.1)
    )
    source = ListSource(stream(40, 2), batch=16)
    with pytest.raises(WriteOutageError, match="No space left"):
        loop.run(source, idle_timeout_s=0)
    assert source.commits == []


def test_readiness_reports_what_is_missing(detector, tmp_path) -> None:
    loop = loop_for(detector, tmp_path)
    assert loop.readiness()["ok"] is False  # not running, nothing assigned
    loop.run(ListSource(stream(10, 1), batch=16), idle_timeout_s=0)
    ready = loop.readiness()
    assert ready["assigned"] is True
    assert ready["committing"] is True
    assert ready["alive"] is False  # the loop has returned


# -- the registry and its watcher ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pointer",
    [b"[]", b'{"current": 5}', b"\xff\xfe\x00", b'{"current": "../../etc"}', b'{"current": "v000001", "history": 3}'],
)
def test_a_malformed_pointer_is_refused_and_the_watcher_keeps_watching(detector, tmp_path, pointer) -> None:
    registry = ModelRegistry(tmp_path)
    first = registry.publish(detector, promote=True)
    refused: list[str] = []
    watcher = RegistryWatcher(registry, first, poll_s=0.01, on_refused=refused.append)
    (tmp_path / "CURRENT.json").write_bytes(pointer)
    watcher.check_once()
    assert refused == ["pointer"]
    assert watcher.take_pending() is None
    second = registry.publish(detector)  # a valid pointer again, naming a new version
    registry.promote(second)
    watcher.check_once()
    pending = watcher.take_pending()
    assert pending is not None
    assert pending[1] == second


def test_the_watcher_thread_survives_anything_the_registry_raises(detector, tmp_path) -> None:
    registry = ModelRegistry(tmp_path)
    first = registry.publish(detector, promote=True)

    def explode() -> str:
        raise AttributeError("'list' object has no attribute 'get'")

    registry.current_version = explode  # type: ignore[method-assign]
    watcher = RegistryWatcher(registry, first, poll_s=0.01).start()
    try:
        import time

        time.sleep(0.2)
        assert watcher.alive
        assert watcher.refusals >= 2
    finally:
        watcher.stop()


def _publish_many(root: str, detector: AnomalyDetector, count: int, barrier) -> list[str]:
    barrier.wait()
    return [ModelRegistry(Path(root)).publish(detector) for _ in range(count)]


def test_concurrent_publishers_end_with_distinct_versions(detector, tmp_path) -> None:
    context = multiprocessing.get_context("fork")
    barrier = context.Manager().Barrier(4)
    with context.Pool(4) as pool:
        results = pool.starmap(_publish_many, [(str(tmp_path), detector, 3, barrier)] * 4)
    versions = [v for batch in results for v in batch]
    assert len(versions) == len(set(versions)) == 12
    registry = ModelRegistry(tmp_path)
    assert sorted(registry.versions()) == sorted(versions)
    for version in versions:
        assert registry.load(version).metadata["version"] == version


def test_a_scorer_started_while_the_pointer_is_malformed_serves_the_newest_verified_version(detector, tmp_path) -> None:
    registry = ModelRegistry(tmp_path)
    registry.publish(detector, promote=True)
    newest = registry.publish(detector)
    (tmp_path / "CURRENT.json").write_bytes(b'{"current": 5}')
    assert registry.load_for_serving().metadata["version"] == newest


def test_a_partition_not_yet_replayed_keeps_its_rewind_point_in_every_commit(detector, tmp_path) -> None:
    """Found by the fault benchmark: a checkpoint before partition 1's replay was read committed it with no
    rewind point, so the next start lost the first windows of its sensors."""
    from pipeline.sources import Assignment

    loop = loop_for(detector, tmp_path, pipelined=False)
    source = ListSource(stream(20, 1), batch=8)  # partition 0 only
    loop.source = source
    loop.on_assigned([Assignment("t", 0, 0, {}), Assignment("t", 1, 500, {"v": 1, "rewind_offset": 470})])
    source.position = 0  # the seek of partition 1 does not apply to partition 0's records
    loop.process(source.poll(0, 8))
    loop.checkpoint()
    offset, metadata = source.commits[-1][("t", 1)]
    assert (offset, metadata["rewind_offset"]) == (500, 470)
    replay = [
        Record("t", 1, 470 + i, None, encode_readings([{"sensor_id": "p1", "ts": T0 + i, "values": {"a": 0, "b": 0}}]))
        for i in range(30)
    ]
    loop.process(replay)  # read back to offset 500: the assembler holds those readings again
    loop.checkpoint()
    offset, metadata = source.commits[-1][("t", 1)]
    assert offset == 500
    assert metadata["rewind_offset"] == 500 - WINDOW  # the sensor's buffer: its last WINDOW readings


def test_no_broker_at_start_is_retried_then_named_with_what_to_check() -> None:
    from kafka.errors import NoBrokersAvailable

    from pipeline.service import BrokerUnavailableError, connect_with_retry

    attempts: list[int] = []

    def connect() -> None:
        attempts.append(1)
        raise NoBrokersAvailable()

    with pytest.raises(BrokerUnavailableError, match=r"check kafka\.bootstrap_servers"):
        connect_with_retry(connect, "127.0.0.1:1", timeout_s=0.3, what="consumer")
    assert len(attempts) >= 2


def test_serve_without_a_broker_exits_69(detector, tmp_path) -> None:
    import os
    import subprocess
    import sys

    from pipeline.local_kafka import free_port

    ModelRegistry(tmp_path / "registry").publish(detector, promote=True)
    env = {
        "DRIFTLINE_DATA_DIR": str(tmp_path / "data"),
        "DRIFTLINE_MODEL__REGISTRY_DIR": str(tmp_path / "registry"),
        "DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "DRIFTLINE_KAFKA__CONNECT_TIMEOUT_S": "2",
        "DRIFTLINE_METRICS__PORT": "0",
    }
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "serve"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 69, result.stderr[-2000:]
    assert "no Kafka broker answered" in result.stderr
