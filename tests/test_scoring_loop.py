"""The scoring loop's two stages (consumer thread + scorer thread) against an in-memory source.

Kafka behaviour (commits surviving restarts, rebalances) is pinned against the real broker in
test_serve_kafka.py; here the source is a list, so the ordering rules of the pipeline can be checked
exactly: same rows as the single-threaded loop, swaps at batch boundaries, commits only of durable work.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from models.detector import AnomalyDetector
from models.training import TrainingConfig
from pipeline.alarms import AlarmTracker
from pipeline.checkpointer import CheckpointSettings
from pipeline.consumer import LoopSettings, ScoringLoop
from pipeline.messages import encode_readings
from pipeline.scorer import WindowScorer
from pipeline.sinks import AlarmEventSink, DeadLetterFile, ErrorLogSink, ScoredWindows
from pipeline.sources import Record, TopicPartitionKey
from pipeline.windows import Window, WindowAssembler, WindowBatch

CHANNELS = ("a", "b")
WINDOW = 5
HOURLY = CheckpointSettings(every_s=3600)
EVERY_BATCH = CheckpointSettings(every_s=0.0)  # a checkpoint after every batch


class ListSource:
    """Hands out ``records`` ``batch`` at a time; remembers every commit."""

    def __init__(self, records: list[Record], batch: int) -> None:
        self.records, self.batch, self.position = records, batch, 0
        self.commits: list[dict[TopicPartitionKey, tuple[int, dict[str, Any]]]] = []

    def poll(self, timeout_s: float, max_records: int) -> list[Record]:
        out = self.records[self.position : self.position + min(self.batch, max_records)]
        self.position += len(out)
        return out

    def commit(self, offsets: dict[TopicPartitionKey, tuple[int, dict[str, Any]]]) -> None:
        self.commits.append(dict(offsets))

    def seek(self, topic: str, partition: int, offset: int) -> None:
        self.position = offset

    def lag(self) -> dict[TopicPartitionKey, int]:
        return {("t", 0): len(self.records) - self.position}

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def detector() -> AnomalyDetector:
    rng = np.random.default_rng(0)
    return AnomalyDetector.fit(
        rng.normal(size=(400, 2)),
        window=WINDOW,
        hidden_size=8,
        latent_size=2,
        channels=CHANNELS,
        training=TrainingConfig(epochs=1, progress=False),
    )


def records(n_per_sensor: int = 60, sensors: int = 3) -> list[Record]:
    rng = np.random.default_rng(1)
    out = []
    for t in range(n_per_sensor):
        for s in range(sensors):
            values = dict(zip(CHANNELS, rng.normal(size=2).tolist(), strict=True))
            reading = {"sensor_id": f"s{s}", "ts": 1_700_000_000.0 + t, "values": values}
            out.append(Record("t", 0, len(out), f"s{s}".encode(), encode_readings([reading])))
    return out


def make_loop(
    detector: AnomalyDetector,
    root: Path,
    *,
    pipelined: bool,
    checkpoint: CheckpointSettings = HOURLY,
    **parts: Any,  # alarms, alerts, alarm_log, ...
) -> ScoringLoop:
    return ScoringLoop(
        WindowScorer(detector, "v1"),
        WindowAssembler(WINDOW),
        ErrorLogSink(root, CHANNELS),
        DeadLetterFile(root / "dead.jsonl"),
        settings=LoopSettings(pipelined=pipelined, max_poll_records=16, checkpoint=checkpoint),
        **parts,
    )


def read_log(root: Path) -> pd.DataFrame:
    frame = pd.read_parquet(root / "errors")
    return frame.sort_values(["sensor_id", "window_end"]).reset_index(drop=True)


def test_pipelined_loop_writes_the_same_rows_as_the_single_threaded_one(
    detector: AnomalyDetector, tmp_path: Path
) -> None:
    logs = {}
    for pipelined in (False, True):
        loop = make_loop(detector, tmp_path / str(pipelined), pipelined=pipelined)
        source = ListSource(records(), batch=16)
        stats = loop.run(source, idle_timeout_s=0)
        assert stats.windows == 3 * (60 - WINDOW + 1)
        assert source.commits[-1][("t", 0)][0] == 180  # everything committed at the end
        logs[pipelined] = read_log(tmp_path / str(pipelined)).drop(columns=["ingest_time"])
    pd.testing.assert_frame_equal(logs[False], logs[True])


def test_a_model_swap_lands_between_two_micro_batches(detector: AnomalyDetector, tmp_path: Path) -> None:
    loop = make_loop(detector, tmp_path, pipelined=True)
    swapped_at: list[int] = []

    def swap_after_three_polls(loop: ScoringLoop) -> None:
        if source.position == 48 and not swapped_at:
            swapped_at.append(source.position)
            loop.swap_model(detector, "v2")

    loop.before_batch = swap_after_three_polls
    source = ListSource(records(), batch=16)
    stats = loop.run(source, idle_timeout_s=0)
    frame = read_log(tmp_path)
    old, new = frame[frame["model_version"] == "v1"], frame[frame["model_version"] == "v2"]
    assert stats.model_swaps == 1
    assert len(old) + len(new) == stats.windows
    # every window whose last reading came before the swap was scored by v1, every later one by v2
    assert old["source_offset_end"].max() < 48 <= new["source_offset_end"].min()
    assert stats.swap_pause_ms is not None
    assert stats.swap_pause_ms >= 0


def test_a_scorer_failure_stops_the_loop_and_commits_nothing_unwritten(
    detector: AnomalyDetector, tmp_path: Path
) -> None:
    loop = make_loop(detector, tmp_path, pipelined=True, checkpoint=EVERY_BATCH)
    real_reconstruct = loop.scorer.reconstruct
    calls = {"n": 0}

    def failing_reconstruct(windows, *model):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("model blew up")
        return real_reconstruct(windows, *model)

    loop.scorer.reconstruct = failing_reconstruct  # type: ignore[method-assign]
    source = ListSource(records(), batch=16)
    with pytest.raises(RuntimeError, match="model blew up"):
        loop.run(source, idle_timeout_s=0)
    written = set(read_log(tmp_path)["source_offset_end"])
    for commit in source.commits:  # every committed offset is covered by rows already written
        next_offset = commit[("t", 0)][0]
        expected = set(range(WINDOW * 3 - 3, next_offset))  # offsets whose readings end windows
        assert expected <= written
    assert source.commits
    assert source.commits[-1][("t", 0)][0] <= 4 * 16


def test_a_failed_commit_is_retried_at_the_next_checkpoint(detector: AnomalyDetector, tmp_path: Path) -> None:
    from kafka.errors import CommitFailedError

    loop = make_loop(detector, tmp_path, pipelined=True, checkpoint=EVERY_BATCH)
    source = ListSource(records(), batch=16)
    real_commit = source.commit
    failures = {"left": 1}

    def flaky_commit(offsets):  # type: ignore[no-untyped-def]
        if failures["left"]:
            failures["left"] -= 1
            raise CommitFailedError("group rebalanced")
        real_commit(offsets)

    source.commit = flaky_commit  # type: ignore[method-assign]
    loop.run(source, idle_timeout_s=0)
    assert failures["left"] == 0
    assert source.commits[-1][("t", 0)][0] == 180


def test_streamed_windows_score_as_the_detector_scores_its_readings() -> None:
    readings = np.random.default_rng(5).normal(size=(200, 2)) + np.array([0.0, 4.0])
    detector = AnomalyDetector.fit(
        readings[:150],
        window=WINDOW,
        hidden_size=8,
        latent_size=2,
        channels=CHANNELS,
        relative_channels=("b",),
        training=TrainingConfig(epochs=1, progress=False),
    )
    windows = [
        Window(
            "s1", float(end - WINDOW + 1), float(end), readings[end - WINDOW + 1 : end + 1], ("t", 0, end), ("t", 0, 0)
        )
        for end in range(WINDOW - 1, len(readings))
    ]
    streamed = WindowScorer(detector, "v1").score(WindowBatch.of(windows))
    np.testing.assert_allclose(streamed.error, detector.score(readings)[1].error, rtol=1e-5)


def test_the_loop_checkpoints_every_roll_rows_windows(detector: AnomalyDetector, tmp_path: Path) -> None:
    loop = make_loop(detector, tmp_path, pipelined=True, checkpoint=CheckpointSettings(every_rows=40, every_s=3600))
    source = ListSource(records(), batch=16)
    stats = loop.run(source, idle_timeout_s=0)
    # 168 windows, one per reading once windows are full. A checkpoint seals the buffered rows as
    # parts once >= 40 rows are buffered (and once at the end); the writer thread makes them durable
    # and the loop commits the newest durable checkpoint at its next poll, so several checkpoints
    # sealed between two polls are committed once: the commits are a timing-dependent subsequence
    # of the checkpoints, and the cadence is asserted on the parts, where it is guaranteed.
    parts = sorted((tmp_path / "errors").rglob("*.parquet"), key=lambda path: path.name)
    rows = [len(pd.read_parquet(path)) for path in parts]
    ends = [int(path.stem.rsplit("-", 1)[1]) + 1 for path in parts]
    assert sum(rows) == stats.windows
    # every 40 rows means at least 2 checkpoints before the end: without the condition only the final one
    assert len(parts) - 1 >= 2, rows
    assert all(count >= 40 for count in rows[:-1]), rows
    assert len(parts) <= stats.windows // 40 + 1
    committed = [commit[("t", 0)][0] for commit in source.commits]
    assert committed[-1] == ends[-1] == 180
    assert set(committed) <= set(ends), (committed, ends)  # only ever a sealed checkpoint's end
    assert committed == sorted(committed)


def test_an_open_regime_notice_travels_with_the_commit_to_the_next_owner(
    detector: AnomalyDetector, tmp_path: Path
) -> None:
    from pipeline.sources import Assignment

    def loop_with_alarms(root: Path) -> ScoringLoop:
        alarms = AlarmTracker(quiet_s=1e6, channels=CHANNELS, regime_policy="suppress")
        return make_loop(detector, root, pipelined=True, alarms=alarms, alerts=Collect())

    first = loop_with_alarms(tmp_path / "first")
    assert first.alarms is not None
    (opened,) = first.alarms.fleet_drift(at=1_700_000_000.0, model_version="v1")
    source = ListSource(records(), batch=16)
    first.run(source, idle_timeout_s=0)
    offset, metadata = source.commits[-1][("t", 0)]
    assert metadata["regime"]["notice_id"] == opened["notice_id"]

    second = loop_with_alarms(tmp_path / "second")
    second.on_assigned([Assignment("t", 0, offset, json.loads(json.dumps(metadata)))])
    assert second.alarms is not None
    assert second.alarms.regime_open  # continued under its id: no second notice, the fleet's alarms held
    assert second.alarms.fleet_drift(at=2.0, model_version="v1") == []
    carried = second.alarms.notice_snapshot()
    assert carried is not None
    assert carried["notice_id"] == opened["notice_id"]


class Collect:
    def __init__(self) -> None:
        self.events: list[dict] = []

    def publish(self, event: dict) -> None:
        self.events.append(event)

    def flush(self) -> None:
        pass


def test_the_loop_sends_alarms_at_once_and_keeps_suppressed_ones_off_the_alerts(
    detector: AnomalyDetector, tmp_path: Path
) -> None:
    alerts = Collect()
    alarms = AlarmTracker(quiet_s=5.0, channels=CHANNELS, regime_policy="suppress")
    loop = make_loop(
        detector, tmp_path, pipelined=True, alarms=alarms, alerts=alerts, alarm_log=AlarmEventSink(tmp_path)
    )
    stats = loop.run(ListSource(records(), batch=16), idle_timeout_s=0)
    table = pd.read_parquet(tmp_path / "alarms") if (tmp_path / "alarms").exists() else pd.DataFrame()
    opened = [e for e in alerts.events if e["event"] == "open"]
    assert stats.anomalies == 0 or opened, "flagged windows but no alarm was sent"
    assert len(table) == len(alerts.events)  # nothing suppressed without a fleet drift: all sent, all kept
    assert loop.alarms is not None
    assert loop.alarms.fleet_drift(at=1.0, model_version="v1")  # a regime change opens ...
    loop._send_alarms(loop.alarms.fleet_drift(at=2.0, model_version="v1"))  # ... once
    suppressed = loop.alarms.update(
        ["s9"],
        np.array([3.0]),
        np.array([True]),
        np.array([2.0]),
        np.array([1.0]),
        np.ones((1, 2)),
        "v1",
        ["t"],
        np.zeros(1, int),
        np.array([999]),
    )
    sent_before = len(alerts.events)
    loop._send_alarms(suppressed)
    assert suppressed[0]["suppressed"]
    assert len(alerts.events) == sent_before  # off the alerts topic


def test_alarms_go_out_while_an_earlier_checkpoint_is_still_being_written(
    detector: AnomalyDetector, tmp_path: Path
) -> None:
    """A slow disk holds back commits, never alarms: parts are written on the writer thread."""
    writing, released, wrote = threading.Event(), threading.Event(), threading.Event()

    class SlowDisk(ErrorLogSink):
        def write(self, batches: list[ScoredWindows]) -> list[Path]:
            if batches:
                writing.set()
                released.wait(timeout=10)  # a write on the scorer thread would hold the alarm until then
                wrote.set()
            return super().write(batches)

    class Alerts(Collect):
        def publish(self, event: dict) -> None:
            if event["event"] == "open" and event["sensor_id"] == "late":
                self.while_writing = writing.is_set() and not wrote.is_set()
                released.set()
            super().publish(event)

    always = copy.copy(detector)
    assert detector.threshold is not None
    always.threshold = dataclasses.replace(detector.threshold, value=0.0)  # every window alarms
    stream = [
        Record("t", 0, offset, key.encode(), encode_readings([{"sensor_id": key, "ts": 1_700_000_000.0 + t,
                                                                "values": {"a": 0.1 * t, "b": 1.0}}]))
        for offset, (t, key) in enumerate(
            [(t, "early") for t in range(40)] + [(t, "late") for t in range(40, 60)]
        )
    ]  # fmt: skip
    alerts = Alerts()
    loop = ScoringLoop(
        WindowScorer(always, "v1"),
        WindowAssembler(WINDOW),
        SlowDisk(tmp_path, CHANNELS),
        DeadLetterFile(tmp_path / "dead.jsonl"),
        settings=LoopSettings(pipelined=True, max_poll_records=8, checkpoint=EVERY_BATCH),
        alarms=AlarmTracker(quiet_s=5.0, channels=CHANNELS),
        alerts=alerts,
    )
    source = ListSource(stream, batch=8)
    loop.run(source, idle_timeout_s=0)
    assert any(e["sensor_id"] == "late" and e["event"] == "open" for e in alerts.events)
    assert alerts.while_writing, "the late sensor's alarm waited for the earlier checkpoint's write"
    assert source.commits[-1][("t", 0)][0] == len(stream), "and everything was committed once written"
    assert len(read_log(tmp_path)) == (40 - WINDOW + 1) + (20 - WINDOW + 1)
