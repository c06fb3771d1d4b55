"""The Parquet error log: atomic parts, Hive layout readable by pandas/pyarrow/DuckDB, no duplicates on replay."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from models.atomic import atomic_file
from pipeline.sinks import DeadLetter, DeadLetterFile, DriftEventSink, ErrorLogSink, ScoredWindows

CHANNELS = ("flow", "pressure")
DAY = 1767225600.0  # 2026-01-01T00:00:00Z


def batch(partition: int, offsets: list[int], start_ts: float = DAY, version: str = "v000001") -> ScoredWindows:
    n = len(offsets)
    ends = start_ts + np.arange(n, dtype=float)
    return ScoredWindows(
        sensor_id=[f"s{o % 3}" for o in offsets],
        window_start=ends - 29,
        window_end=ends,
        error=np.linspace(0, 1, n),
        channel_error=np.tile([0.5, 1.5], (n, 1)),
        threshold=0.8,
        exceeded=np.linspace(0, 1, n) > 0.8,
        anomaly=np.linspace(0, 1, n) > 0.8,
        drift=np.zeros(n, bool),
        model_version=version,
        source_topic=["readings"] * n,
        source_partition=np.full(n, partition),
        source_offset_start=np.array(offsets) - 29,
        source_offset_end=np.array(offsets),
    )


def test_parts_are_hive_partitioned_and_readable_everywhere(tmp_path: Path) -> None:
    sink = ErrorLogSink(tmp_path, CHANNELS)
    sink.append(batch(0, list(range(100, 110))))
    sink.append(batch(1, list(range(50, 55)), start_ts=DAY + 86_400))  # next day
    written = sink.flush()
    assert sorted(p.relative_to(tmp_path / "errors").parent.name for p in written) == [
        "date=2026-01-01",
        "date=2026-01-02",
    ]
    assert not list(tmp_path.rglob("*.tmp")), "no temporary file may remain"

    frame = pd.read_parquet(tmp_path / "errors")
    assert len(frame) == 15
    assert {"error_flow", "error_pressure", "threshold", "anomaly", "model_version", "date"} <= set(frame.columns)
    assert str(frame["window_end"].dt.tz) == "UTC"
    dataset = ds.dataset(tmp_path / "errors", format="parquet", partitioning="hive")
    assert dataset.count_rows() == 15
    query = f"select count(*), min(date) from read_parquet('{tmp_path}/errors/**/*.parquet', hive_partitioning=true)"
    rows = duckdb.connect().execute(query).fetchall()
    assert rows[0][0] == 15
    assert str(rows[0][1]) == "2026-01-01"
    metadata = pq.read_schema(written[0]).metadata
    assert metadata[b"driftline.schema"] == b"error_log"
    assert metadata[b"driftline.schema_version"] == b"1"


def test_uncommitted_parts_are_discarded_so_a_replay_writes_each_window_once(tmp_path: Path) -> None:
    sink = ErrorLogSink(tmp_path, CHANNELS)
    sink.append(batch(0, list(range(0, 10))))
    sink.flush()  # committed: next offset 10
    sink.append(batch(0, list(range(10, 20))))
    sink.append(batch(1, list(range(0, 5))))
    sink.flush()  # crash before the commit of partition 0 at 20
    removed = sink.discard_uncommitted("readings", 0, committed_offset=10)
    assert len(removed) == 1
    sink.append(batch(0, list(range(10, 20))))  # the replay
    sink.flush()
    frame = pd.read_parquet(tmp_path / "errors")
    assert frame.groupby("source_partition").size().to_dict() == {0: 20, 1: 5}
    assert not frame.duplicated(["source_partition", "source_offset_end"]).any()


def test_drift_events_and_dead_letters_are_durable(tmp_path: Path) -> None:
    events = DriftEventSink(tmp_path)
    events.append(
        [
            {
                "ts": DAY,
                "scope": "fleet",
                "sensor_id": None,
                "detector": "adwin",
                "model_version": "v1",
                "observations": 10,
                "recent_mean_error": 0.5,
            }
        ]
    )
    path = events.flush()
    assert path is not None
    assert pd.read_parquet(path)["scope"].tolist() == ["fleet"]
    letters = DeadLetterFile(tmp_path / "dead.jsonl")
    letters.send(DeadLetter("not valid JSON", "readings", 2, 41, b"s1", b"\xff"))
    letters.flush()
    line = (tmp_path / "dead.jsonl").read_text().strip()
    assert '"source_offset": 41' in line
    assert '"raw_b64": "/w=="' in line


def test_atomic_file_replaces_all_or_nothing_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "CURRENT.json"
    target.write_text("old")

    def crash_while_writing() -> None:
        with atomic_file(target, "w") as handle:
            handle.write("half of the new")
            raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError):
        crash_while_writing()
    assert target.read_text() == "old"
    with atomic_file(target, "w") as handle:
        handle.write("new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["CURRENT.json"]
    assert target.stat().st_mode & 0o044, "readable by others as a plain open() would make it (umask permitting)"


def test_events_without_the_key_field_are_published_unkeyed() -> None:
    from pipeline.sinks import KafkaEventPublisher

    class Producer:
        def __init__(self) -> None:
            self.sent: list[tuple[str, bytes | None]] = []

        def send(self, topic: str, key: bytes | None = None, value: bytes = b"") -> None:
            self.sent.append((topic, key))

    producer = Producer()
    publisher = KafkaEventPublisher(producer, "alerts", key="sensor_id")
    publisher.publish({"type": "alarm", "sensor_id": "p7"})
    publisher.publish({"type": "regime_change", "notice_id": "n1"})  # fleet-wide: no sensor
    assert producer.sent == [("alerts", b"p7"), ("alerts", None)]
