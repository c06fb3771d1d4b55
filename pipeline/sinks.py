"""Where scored windows, drift events and rejected messages go, each made durable before a commit.

**Error log** (:class:`ErrorLogSink`): one row per scored window, Hive-partitioned by day::

    <root>/errors/date=2026-01-01/part-<topic>-<partition>-<first offset>-<last offset>.parquet

Rows are buffered and written at each checkpoint of the scoring loop (its cadence:
``sinks.roll_rows`` windows or ``sinks.roll_seconds``, see :mod:`pipeline.checkpointer`), which
commits right after. Every sink the loop makes durable follows :class:`DurableSink` (seal on the
scorer thread, write on the writer thread). A part is written to a temporary name, fsynced and
renamed, so a half-written part is never visible. **No duplicates after a crash:** a part holds the windows of
one source partition whose last readings lie at offsets ``first..last``; when a partition is
assigned with committed offset ``c``, every part of it with ``first >= c`` was written but never
committed, so it is removed (:meth:`ErrorLogSink.discard_uncommitted`) before the windows are scored
again. Readers therefore see each window exactly once, with no extra step.

**Drift events** (:class:`DriftEventSink`) go to ``<root>/drift_events/date=.../`` the same way.
**Dead letters** go to a Kafka topic or, for file sources, a JSON-lines file (:class:`DeadLetterFile`).
Schema name and version are stored in each Parquet file's metadata (``driftline.schema``,
``driftline.schema_version``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from kafka.errors import KafkaError

from models.atomic import atomic_file
from pipeline.durability import DurabilityError

ERROR_LOG_SCHEMA_VERSION = 1
DRIFT_EVENTS_SCHEMA_VERSION = 2  # 2 added recent_mean_ratio and material
_PART = re.compile(r"^part-(?P<topic>.+)-(?P<partition>\d+)-(?P<first>\d{20})-(?P<last>\d{20})\.parquet$")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", name)


def write_parquet_atomically(table: pa.Table, path: Path, dictionary_columns: Sequence[str] | None = None) -> None:
    """Write ``table`` to ``path`` via a temp file in the same folder, fsync, rename, fsync the folder.

    ``dictionary_columns``: dictionary-encode only these (None: Arrow tries every column and falls back
    where a dictionary grows too large, which costs CPU on columns of distinct floats).
    """
    with atomic_file(path) as handle:
        use_dictionary: bool | list[str] = True if dictionary_columns is None else list(dictionary_columns)
        pq.write_table(table, handle, compression="zstd", use_dictionary=use_dictionary)


# Error-log columns with few distinct values per part (names, one threshold per model and regime, one
# ingest time): dictionary-encoded. The errors, times and offsets are nearly all distinct, and trying a
# dictionary on them first cost more than all else in a part (20,000 real rows: 0.83 -> 0.38 us per row
# to encode, 39 -> 24 bytes per row on disk).
ERROR_LOG_DICTIONARY_COLUMNS = ("sensor_id", "threshold", "model_version", "source_topic", "ingest_time")


def error_log_schema(channels: Sequence[str]) -> pa.Schema:
    fields = [
        pa.field("sensor_id", pa.string()),
        pa.field("window_start", pa.timestamp("ms", tz="UTC")),
        pa.field("window_end", pa.timestamp("ms", tz="UTC")),
        pa.field("error", pa.float32()),
        *(pa.field(f"error_{channel}", pa.float32()) for channel in channels),
        pa.field("threshold", pa.float32()),
        pa.field("exceeded", pa.bool_()),
        pa.field("anomaly", pa.bool_()),
        pa.field("drift", pa.bool_()),
        pa.field("model_version", pa.string()),
        pa.field("source_topic", pa.string()),
        pa.field("source_partition", pa.int32()),
        pa.field("source_offset_start", pa.int64()),
        pa.field("source_offset_end", pa.int64()),
        pa.field("ingest_time", pa.timestamp("ms", tz="UTC")),
    ]
    metadata = {"driftline.schema": "error_log", "driftline.schema_version": str(ERROR_LOG_SCHEMA_VERSION)}
    return pa.schema(fields, metadata=metadata)


@dataclass
class ScoredWindows:
    """A micro-batch of scored windows, column-wise (what the scoring loop hands the sink)."""

    sensor_id: list[str]
    window_start: np.ndarray  # [n] epoch seconds
    window_end: np.ndarray  # [n] epoch seconds
    error: np.ndarray  # [n]
    channel_error: np.ndarray  # [n, channels]
    threshold: np.ndarray | float  # [n], or one value for every row
    exceeded: np.ndarray  # [n] bool
    anomaly: np.ndarray  # [n] bool
    drift: np.ndarray  # [n] bool
    model_version: str
    source_topic: list[str]
    source_partition: np.ndarray  # [n]
    source_offset_start: np.ndarray  # [n]
    source_offset_end: np.ndarray  # [n]

    def __len__(self) -> int:
        return len(self.sensor_id)


def _epoch_ms(seconds: np.ndarray) -> pa.Array:
    return pa.array(
        np.round(np.asarray(seconds, dtype=np.float64) * 1000).astype("int64"), pa.timestamp("ms", tz="UTC")
    )


class DurableSink(Protocol):
    """What the scoring loop makes durable at each checkpoint, before it commits the offsets.

    Rows are buffered by the sink's own ``append`` (scorer thread); :meth:`seal` hands over what was
    buffered so far, in order with the batches (scorer thread); :meth:`write` makes that durable and
    returns only then (writer thread; it is retried after a failure, so it must be safe to redo).
    A new sink is one class with these three methods, listed in ``ScoringLoop.durable_sinks``.
    """

    name: str  # in the write-failure metric's ``sink`` label

    def seal(self) -> Any: ...

    def write(self, sealed: Any) -> Any: ...


class ErrorLogSink:
    """The error log: one row per scored window, as Parquet parts per day, topic and partition.

    >>> import tempfile
    >>> sink = ErrorLogSink(Path(tempfile.mkdtemp()), ["flow"])
    >>> one, no = np.array([0]), np.array([False])
    >>> sink.append(ScoredWindows(["s1"], np.array([0.0]), np.array([29.0]), np.array([0.5]), np.array([[0.5]]),
    ...                           0.9, no, no, no, "v1", ["t"], one, one, np.array([29])))
    >>> [part.name for part in sink.write(sink.seal())]
    ['part-t-0-00000000000000000029-00000000000000000029.parquet']
    """

    name = "error_log"

    def __init__(self, root: Path, channels: Sequence[str]) -> None:
        self.root = Path(root) / "errors"
        self.channels = tuple(channels)
        self.schema = error_log_schema(self.channels)
        self._pending: list[ScoredWindows] = []

    def append(self, batch: ScoredWindows) -> None:
        """Buffer ``batch``; :meth:`flush` writes it (the scoring loop flushes at each checkpoint)."""
        if len(batch):
            self._pending.append(batch)

    def seal(self) -> list[ScoredWindows]:
        """Hand over everything buffered so far (for :meth:`write`, possibly on another thread)."""
        sealed, self._pending = self._pending, []
        return sealed

    def _table(self, batches: list[ScoredWindows]) -> pa.Table:
        ingest = pa.scalar(datetime.now(UTC), pa.timestamp("ms", tz="UTC"))
        n = sum(len(b) for b in batches)
        channel_error = np.concatenate([b.channel_error for b in batches]).astype(np.float32)
        columns: dict[str, Any] = {
            "sensor_id": pa.array([s for b in batches for s in b.sensor_id], pa.string()),
            "window_start": _epoch_ms(np.concatenate([b.window_start for b in batches])),
            "window_end": _epoch_ms(np.concatenate([b.window_end for b in batches])),
            "error": pa.array(np.concatenate([b.error for b in batches]).astype(np.float32)),
        }
        for i, channel in enumerate(self.channels):
            columns[f"error_{channel}"] = pa.array(channel_error[:, i])
        columns |= {
            "threshold": pa.array(
                np.concatenate([np.broadcast_to(b.threshold, len(b)) for b in batches]).astype(np.float32)
            ),
            "exceeded": pa.array(np.concatenate([b.exceeded for b in batches]).astype(bool)),
            "anomaly": pa.array(np.concatenate([b.anomaly for b in batches]).astype(bool)),
            "drift": pa.array(np.concatenate([b.drift for b in batches]).astype(bool)),
            "model_version": pa.concat_arrays(
                [pa.repeat(pa.scalar(b.model_version, pa.string()), len(b)) for b in batches]
            ),
            "source_topic": pa.array([t for b in batches for t in b.source_topic], pa.string()),
            "source_partition": pa.array(np.concatenate([b.source_partition for b in batches]).astype(np.int32)),
            "source_offset_start": pa.array(np.concatenate([b.source_offset_start for b in batches]).astype(np.int64)),
            "source_offset_end": pa.array(np.concatenate([b.source_offset_end for b in batches]).astype(np.int64)),
            "ingest_time": pa.repeat(ingest, n),
        }
        return pa.table(columns, schema=self.schema)

    def flush(self) -> list[Path]:
        """Write every pending row durably; return the parts written. On error nothing is dropped."""
        written = self.write(self._pending)
        self._pending = []
        return written

    def write(self, batches: list[ScoredWindows]) -> list[Path]:
        """Write ``batches`` (from :meth:`seal`) durably as Parquet parts; return them. Safe to retry."""
        if not batches:
            return []
        table = self._table(batches)
        written = []
        days = table["window_end"].cast(pa.int64()).to_numpy() // 86_400_000
        encoded = table["source_topic"].combine_chunks().dictionary_encode()  # no Python string per row
        names = encoded.dictionary.to_pylist()
        topics = sorted(names)
        topic_index = np.argsort(np.argsort(names))[encoded.indices.to_numpy()]  # index into sorted topics
        partitions = table["source_partition"].to_numpy()
        order = np.lexsort((partitions, topic_index, days))  # rows grouped by (date, topic, partition)
        keys = np.column_stack([days, topic_index, partitions])[order]
        bounds = np.flatnonzero(np.any(np.diff(keys, axis=0) != 0, axis=1)) + 1
        for rows in np.split(order, bounds):
            first = rows[0]
            date = str(np.datetime64(int(days[first]), "D"))
            topic, partition = str(topics[topic_index[first]]), int(partitions[first])
            part = table.take(pa.array(rows, pa.int64()))
            offsets = part["source_offset_end"].to_numpy()
            name = f"part-{_safe(topic)}-{partition}-{int(offsets.min()):020d}-{int(offsets.max()):020d}.parquet"
            path = self.root / f"date={date}" / name
            write_parquet_atomically(part, path, ERROR_LOG_DICTIONARY_COLUMNS)
            written.append(path)
        return written

    def discard_uncommitted(self, topic: str, partition: int, committed_offset: int) -> list[Path]:
        """Remove parts of ``topic``/``partition`` written beyond ``committed_offset`` (they will be redone)."""
        removed: list[Path] = []
        if not self.root.is_dir():
            return removed
        for path in self.root.glob(f"date=*/part-{_safe(topic)}-{partition}-*.parquet"):
            match = _PART.match(path.name)
            if match and int(match["partition"]) == partition and int(match["first"]) >= committed_offset:
                path.unlink()
                removed.append(path)
        return removed


def drift_events_schema() -> pa.Schema:
    fields = [
        pa.field("ts", pa.timestamp("ms", tz="UTC")),
        pa.field("scope", pa.string()),
        pa.field("sensor_id", pa.string()),
        pa.field("detector", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("observations", pa.int64()),
        pa.field("recent_mean_error", pa.float64()),
        pa.field("recent_mean_ratio", pa.float64()),
        pa.field("material", pa.bool_()),
    ]
    metadata = {
        "driftline.schema": "drift_events",
        "driftline.schema_version": str(DRIFT_EVENTS_SCHEMA_VERSION),
    }
    return pa.schema(fields, metadata=metadata)


class _EventPartSink:
    """Events (rare) buffered as dicts and written as one small Parquet part per flush, under
    ``<root>/<folder>/date=<day of the first event>/<prefix>-<ms>-<random>.parquet``."""

    folder = ""
    prefix = ""
    time_key = ""  # the event field (epoch seconds) whose day names the partition

    def __init__(self, root: Path) -> None:
        self.root = Path(root) / self.folder
        self._pending: list[dict[str, Any]] = []

    def append(self, events: Sequence[dict[str, Any]]) -> None:
        self._pending.extend(events)

    def _table(self, rows: list[dict[str, Any]]) -> pa.Table:
        raise NotImplementedError

    def seal(self) -> list[dict[str, Any]]:
        """Hand over the events buffered so far (for :meth:`write`, possibly on another thread)."""
        sealed, self._pending = self._pending, []
        return sealed

    def flush(self) -> Path | None:
        """Write the pending events durably as one part; return it (None when there were none)."""
        path = self.write(self._pending)
        self._pending = []
        return path

    def write(self, rows: list[dict[str, Any]]) -> Path | None:
        """Write ``rows`` (from :meth:`seal`) durably as one part; return it (None for no rows)."""
        if not rows:
            return None
        table = self._table(rows)
        date = datetime.fromtimestamp(rows[0][self.time_key], UTC).strftime("%Y-%m-%d")
        name = f"{self.prefix}-{int(time.time() * 1000)}-{uuid.uuid4().hex[:8]}.parquet"
        path = self.root / f"date={date}" / name
        write_parquet_atomically(table, path)
        return path


class DriftEventSink(_EventPartSink):
    """Drift events as small Parquet parts (events are rare), written at each flush."""

    folder, prefix, time_key = "drift_events", "events", "ts"
    name = "drift_events"

    def _table(self, rows: list[dict[str, Any]]) -> pa.Table:
        return pa.table(
            {
                "ts": _epoch_ms(np.array([e["ts"] for e in rows])),
                "scope": [e["scope"] for e in rows],
                "sensor_id": [e["sensor_id"] for e in rows],
                "detector": [e["detector"] for e in rows],
                "model_version": [e["model_version"] for e in rows],
                "observations": [e["observations"] for e in rows],
                "recent_mean_error": [e["recent_mean_error"] for e in rows],
                "recent_mean_ratio": [e.get("recent_mean_ratio") for e in rows],
                "material": [e.get("material", True) for e in rows],
            },
            schema=drift_events_schema(),
        )


def alarms_schema() -> pa.Schema:
    """The ``alarms`` table: one row per alarm event (open / update / close), see :mod:`pipeline.alarms`."""
    ts = pa.timestamp("ms", tz="UTC")
    fields = [
        pa.field("at", ts),
        pa.field("event", pa.string()),
        pa.field("alarm_id", pa.string()),
        pa.field("sensor_id", pa.string()),
        pa.field("severity", pa.string()),
        pa.field("opened_at", ts),
        pa.field("last_anomalous_at", ts),
        pa.field("closed_at", ts),
        pa.field("closed_by", pa.string()),
        pa.field("peak_error", pa.float64()),
        pa.field("peak_ratio", pa.float64()),
        pa.field("windows", pa.int64()),
        pa.field("top_channels", pa.list_(pa.string())),
        pa.field("model_version", pa.string()),
        pa.field("source_topic", pa.string()),
        pa.field("source_partition", pa.int32()),
        pa.field("source_offset", pa.int64()),
        pa.field("suspected_regime_change", pa.bool_()),
        pa.field("suppressed", pa.bool_()),
    ]
    return pa.schema(fields, metadata={"driftline.schema": "alarms", "driftline.schema_version": "1"})


class AlarmEventSink(_EventPartSink):
    """Alarm events as small Parquet parts under ``alarms/``, written at each flush (before the commit)."""

    folder, prefix, time_key = "alarms", "alarms", "at"
    name = "alarms"

    def _table(self, rows: list[dict[str, Any]]) -> pa.Table:
        def stamps(key: str) -> pa.Array:
            values = [r[key] for r in rows]
            return pa.array([None if v is None else round(v * 1000) for v in values], pa.int64()).cast(
                pa.timestamp("ms", tz="UTC")
            )

        return pa.table(
            {
                "at": stamps("at"),
                "event": [r["event"] for r in rows],
                "alarm_id": [r["alarm_id"] for r in rows],
                "sensor_id": [r["sensor_id"] for r in rows],
                "severity": [r["severity"] for r in rows],
                "opened_at": stamps("opened_at"),
                "last_anomalous_at": stamps("last_anomalous_at"),
                "closed_at": stamps("closed_at"),
                "closed_by": [r["closed_by"] for r in rows],
                "peak_error": [r["peak_error"] for r in rows],
                "peak_ratio": [r["peak_ratio"] for r in rows],
                "windows": [r["windows"] for r in rows],
                "top_channels": [r["top_channels"] for r in rows],
                "model_version": [r["model_version"] for r in rows],
                "source_topic": [r["source"]["topic"] for r in rows],
                "source_partition": [r["source"]["partition"] for r in rows],
                "source_offset": [r["source"]["offset"] for r in rows],
                "suspected_regime_change": [r["suspected_regime_change"] for r in rows],
                "suppressed": [r["suppressed"] for r in rows],
            },
            schema=alarms_schema(),
        )


# A dead letter must fit the producer's max_request_size (1 MiB by default) after base64 (x 4/3):
# raw bytes beyond this are cut, with the full length and sha256 kept so the original can be matched.
DEAD_LETTER_MAX_RAW_BYTES = 512 * 1024
DEAD_LETTER_MAX_KEY_BYTES = 16 * 1024
DEAD_LETTER_MAX_REASON_CHARS = 2_000


def _b64_cut(data: bytes | None, limit: int) -> tuple[str | None, bool]:
    if data is None:
        return None, False
    return base64.b64encode(data[:limit]).decode(), len(data) > limit


@dataclass(frozen=True)
class DeadLetter:
    """A rejected message (or reading) with everything needed to find and replay it.

    ``code`` is the reason's code (see ``pipeline.messages.REJECTION_CODES``), ``reason`` the detail.
    The JSON form always fits a default Kafka producer: an oversize raw payload is truncated, and its
    full length and sha256 are recorded beside it.

    >>> letter = json.loads(DeadLetter("too big", "t", 0, 7, None, b"x" * 2_000_000, code="too_large").to_json())
    >>> letter["raw_truncated"], letter["raw_length"], len(base64.b64decode(letter["raw_b64"]))
    (True, 2000000, 524288)
    """

    reason: str
    source_topic: str
    source_partition: int
    source_offset: int
    key: bytes | None
    raw: bytes | None
    code: str = "undecodable"

    def to_json(self) -> bytes:
        raw_b64, raw_truncated = _b64_cut(self.raw, DEAD_LETTER_MAX_RAW_BYTES)
        key_b64, key_truncated = _b64_cut(self.key, DEAD_LETTER_MAX_KEY_BYTES)
        return json.dumps(
            {
                "code": self.code,
                "reason": self.reason[:DEAD_LETTER_MAX_REASON_CHARS],
                "source_topic": self.source_topic,
                "source_partition": self.source_partition,
                "source_offset": self.source_offset,
                "key_b64": key_b64,
                "key_truncated": key_truncated,
                "raw_b64": raw_b64,
                "raw_truncated": raw_truncated,
                "raw_length": len(self.raw) if self.raw is not None else None,
                "raw_sha256": hashlib.sha256(self.raw).hexdigest() if self.raw is not None else None,
                "rejected_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            }
        ).encode()


class DeadLetterSink(Protocol):
    """Where refused messages go (:class:`DeadLetterFile`, :class:`KafkaDeadLetters`); ``flush`` returns
    once every letter sent so far is durable (before each commit, on the consumer thread)."""

    def send(self, letter: DeadLetter) -> None: ...

    def flush(self) -> None: ...


class DeadLetterFile:
    """Dead letters as JSON lines in a file (file sources and demos); fsynced on flush."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = self.path.open("ab")

    def send(self, letter: DeadLetter) -> None:
        self._handle.write(letter.to_json() + b"\n")

    def flush(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self.flush()
        self._handle.close()


class KafkaDeadLetters:
    """Dead letters to a Kafka topic, keyed like the source message.

    ``flush`` waits for the broker's ack of every letter sent since the last successful flush and checks
    each result: a refused or unacknowledged letter is sent again and :class:`DurabilityError` is
    raised, so the loop commits nothing past it and retries.
    """

    def __init__(self, producer: Any, topic: str, flush_timeout_s: float = 30.0) -> None:
        self.producer = producer
        self.topic = topic
        self.flush_timeout_s = flush_timeout_s
        self._unacked: list[tuple[DeadLetter, bytes, Any]] = []

    def _send(self, letter: DeadLetter, value: bytes) -> Any:
        key = letter.key[:DEAD_LETTER_MAX_KEY_BYTES] if letter.key is not None else None
        try:
            return self.producer.send(self.topic, key=key, value=value)
        except KafkaError as error:  # e.g. the local buffer is full: treat like a failed ack
            return error

    def send(self, letter: DeadLetter) -> None:
        value = letter.to_json()
        self._unacked.append((letter, value, self._send(letter, value)))

    def flush(self) -> None:
        if not self._unacked:
            return
        try:
            self.producer.flush(timeout=self.flush_timeout_s)
        except KafkaError as error:
            raise DurabilityError(f"dead-letter topic {self.topic}: flush failed ({error})") from error
        failed: list[tuple[DeadLetter, bytes, Any]] = []
        last_error: object = None
        for letter, value, future in self._unacked:
            if isinstance(future, BaseException) or not future.is_done or future.failed():
                last_error = future if isinstance(future, BaseException) else future.exception or "no ack in time"
                failed.append((letter, value, future))
        if not failed:
            self._unacked = []
            return
        self._unacked = [(letter, value, self._send(letter, value)) for letter, value, _ in failed]
        raise DurabilityError(
            f"dead-letter topic {self.topic}: {len(failed)} of the letters were not acknowledged ({last_error}); "
            "they are sent again and nothing is committed past them"
        )


class KafkaEventPublisher:
    """Events as JSON on a topic: drift events and model swaps on the events topic, alarm events
    (keyed by sensor, so one sensor's events stay in order) on the alerts topic."""

    def __init__(self, producer: Any, topic: str, key: str | None = None) -> None:
        self.producer = producer
        self.topic = topic
        self.key = key  # the event field used as message key, if any

    def publish(self, event: dict[str, Any]) -> None:
        value = event.get(self.key) if self.key is not None else None
        key = str(value).encode() if value is not None else None  # a regime-change notice has no sensor
        self.producer.send(self.topic, key=key, value=json.dumps(event, default=str).encode())

    def flush(self) -> None:
        self.producer.flush()


class FanOut:
    """Publishes each event to several publishers (the alerts topic and Alertmanager); flushes them all."""

    def __init__(self, *publishers: Any) -> None:
        self.publishers = [p for p in publishers if p is not None]

    def publish(self, event: dict[str, Any]) -> None:
        for publisher in self.publishers:
            publisher.publish(event)

    def flush(self) -> None:
        for publisher in self.publishers:
            publisher.flush()
