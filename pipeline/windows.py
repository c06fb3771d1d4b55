"""Per-sensor sliding windows built from a stream of readings. Knows nothing about Kafka.

Rules (each counted in :class:`WindowStats`):

- **Order.** Readings of one sensor must arrive in timestamp order. A reading older than the sensor's
  last one is *late* and dropped; one with the same timestamp is a *duplicate* and dropped.
- **Gaps.** A gap up to ``max_fill_s`` is forward-filled with the last values at the sample period
  (``filled``); a longer gap restarts the sensor's window (``gap_restarts``): no window spans it.
- **Stride.** A window of ``length`` readings is emitted when its last reading's timestamp, counted in
  sample periods, is a multiple of ``stride``: the same windows come out however the stream is split
  into batches or replayed.
- **Idle sensors.** :meth:`WindowAssembler.evict_idle` forgets sensors silent for ``idle_ttl_s``.

**One clock.** ``sample_period_s`` is learned from the training data's timestamps
(:func:`infer_sample_period`, the median interval) and stored in the checkpoint; ``train``, ``score``,
``serve`` and retraining all build windows by these rules (:func:`regular_segments` applies them to a
whole table, the assembler to a stream), so the model scores windows built the way it was trained on.

Each reading carries its source position (topic, partition, offset); a window carries the position of
its last reading, and :meth:`WindowAssembler.rewind_offsets` says, per partition, the oldest offset
still needed to rebuild the open windows after a restart.

>>> import numpy as np
>>> assembler = WindowAssembler(length=3)
>>> out = [assembler.add("s1", float(t), np.array([float(t)]), ("topic", 0, t)) for t in range(4)]
>>> [len(w) for w in out]
[0, 0, 1, 1]
>>> out[3][0].values[:, 0].tolist(), out[3][0].end_position
([1.0, 2.0, 3.0], ('topic', 0, 3))
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from models.grouping import runs_by_key

Position = tuple[str, int, int]  # topic, partition, offset
TopicPartitionKey = tuple[str, int]

# Position of a reading inside the assembler's rings: columns of the metadata ring.
_TS, _TOPIC, _PARTITION, _OFFSET = 0, 1, 2, 3
#: A sensor's readings in one batch shorter than this go reading by reading (a numpy run costs more).
_MIN_BULK_RUN = 4


@dataclass(frozen=True)
class Window:
    """One window of one sensor: its readings ``[length, channels]`` and where its ends came from."""

    sensor_id: str
    start_ts: float
    end_ts: float
    values: np.ndarray  # [length, channels]
    end_position: Position
    first_position: Position


@dataclass(frozen=True)
class WindowBatch:
    """Windows column-wise: what :meth:`WindowAssembler.add_batch` emits and the scorer consumes.

    Row ``i`` is one window: ``values[i]`` its readings ``[length, channels]``, the other columns where
    and when it ends (``first_offset``: the source offset of its first reading).

    >>> batch = WindowBatch.of([Window("s1", 0.0, 2.0, np.zeros((3, 1)), ("t", 0, 2), ("t", 0, 0))])
    >>> len(batch), batch.values.shape, batch.end_offset.tolist()
    (1, (1, 3, 1), [2])
    """

    sensor_id: list[str]
    start_ts: np.ndarray  # [n] float64
    end_ts: np.ndarray  # [n] float64
    values: np.ndarray  # [n, length, channels] float64
    topic: list[str]  # [n] topic of the last reading
    partition: np.ndarray  # [n] int32, of the last reading
    first_offset: np.ndarray  # [n] int64
    end_offset: np.ndarray  # [n] int64

    def __len__(self) -> int:
        return len(self.sensor_id)

    @classmethod
    def empty(cls, length: int, channels: int) -> WindowBatch:
        return cls(
            [],
            np.empty(0),
            np.empty(0),
            np.empty((0, length, channels)),
            [],
            np.empty(0, np.int32),
            np.empty(0, np.int64),
            np.empty(0, np.int64),
        )

    @classmethod
    def of(cls, windows: Sequence[Window]) -> WindowBatch:
        """The columns of ``windows`` (which must not be empty)."""
        return cls(
            [w.sensor_id for w in windows],
            np.array([w.start_ts for w in windows], dtype=np.float64),
            np.array([w.end_ts for w in windows], dtype=np.float64),
            np.stack([w.values for w in windows]).astype(np.float64, copy=False),
            [w.end_position[0] for w in windows],
            np.array([w.end_position[1] for w in windows], dtype=np.int32),
            np.array([w.first_position[2] for w in windows], dtype=np.int64),
            np.array([w.end_position[2] for w in windows], dtype=np.int64),
        )

    def select(self, keep: np.ndarray) -> WindowBatch:
        """The rows where ``keep`` (bool ``[n]``) is true."""
        if bool(keep.all()):
            return self
        index = np.flatnonzero(keep)
        return WindowBatch(
            [self.sensor_id[i] for i in index],
            self.start_ts[index],
            self.end_ts[index],
            self.values[index],
            [self.topic[i] for i in index],
            self.partition[index],
            self.first_offset[index],
            self.end_offset[index],
        )

    def windows(self) -> list[Window]:
        """The rows as :class:`Window` objects (first position taken on the last reading's partition)."""
        return [
            Window(
                self.sensor_id[i],
                float(self.start_ts[i]),
                float(self.end_ts[i]),
                self.values[i],
                (self.topic[i], int(self.partition[i]), int(self.end_offset[i])),
                (self.topic[i], int(self.partition[i]), int(self.first_offset[i])),
            )
            for i in range(len(self))
        ]


@dataclass
class WindowStats:
    """What the assembler did with the readings it was given (each rule counted)."""

    accepted: int = 0
    late: int = 0
    duplicates: int = 0
    filled: int = 0
    gap_restarts: int = 0
    evicted: int = 0
    emitted: int = 0
    unwindowed: int = 0  # readings dropped with a buffer (gap restart, eviction) before it held a full window


def infer_sample_period(timestamps: np.ndarray) -> float | None:
    """The median positive interval between consecutive ``timestamps`` (epoch seconds), or None.

    Robust to gaps and bursts: a few long gaps or duplicates do not move a median.

    >>> infer_sample_period(np.array([0.0, 300.0, 600.0, 600.0, 4200.0, 4500.0]))
    300.0
    """
    intervals = np.diff(np.sort(np.asarray(timestamps, dtype=np.float64)))
    intervals = intervals[intervals > 0]
    return float(np.median(intervals)) if intervals.size else None


def fleet_sample_period(timestamps_per_sensor: Iterable[np.ndarray]) -> float | None:
    """The sample period of several sensors (or files): the median of their median intervals, or None.

    >>> fleet_sample_period([np.array([0.0, 1.0, 2.0]), np.array([0.0, 1.0, 3.0, 4.0]), np.array([5.0])])
    1.0
    """
    periods = [p for p in (infer_sample_period(t) for t in timestamps_per_sensor) if p is not None]
    return float(np.median(periods)) if periods else None


def default_max_fill_s(sample_period_s: float) -> float:
    """Gaps up to five sample periods are forward-filled unless ``windows.max_fill_s`` says otherwise."""
    return 5.0 * sample_period_s


def regular_segments(
    timestamps: np.ndarray, values: np.ndarray, sample_period_s: float, max_fill_s: float
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The assembler's rules applied to one sensor's table: ``(timestamps, values)`` per gap-free segment.

    Late and duplicate readings are dropped, gaps up to ``max_fill_s`` forward-filled at the sample
    period, longer gaps start a new segment: consecutive rows of a segment are exactly the readings a
    :class:`WindowAssembler` windows in a stream (so ``train`` and ``score`` see what ``serve`` sees).

    >>> ts = np.array([0.0, 300.0, 900.0, 900.0, 5000.0, 5300.0])
    >>> [seg[0].tolist() for seg in regular_segments(ts, np.arange(6.0)[:, None], 300.0, 1500.0)]
    [[0.0, 300.0, 600.0, 900.0], [5000.0, 5300.0]]
    """
    segments: list[tuple[list[float], list[np.ndarray]]] = []
    last: float | None = None
    for ts, row in zip(np.asarray(timestamps, dtype=np.float64), np.asarray(values), strict=True):
        if last is not None and ts <= last:
            continue  # late or duplicate
        if last is None or ts - last > max_fill_s:
            segments.append(([], []))
        else:
            for k in range(1, round((ts - last) / sample_period_s)):
                segments[-1][0].append(last + k * sample_period_s)
                segments[-1][1].append(segments[-1][1][-1])
        segments[-1][0].append(float(ts))
        segments[-1][1].append(row)
        last = float(ts)
    return [(np.array(t), np.array(v)) for t, v in segments]


class _SensorBuffer:
    """The last ``length`` readings of one sensor, values and metadata (ts, topic, partition, offset) each
    stored twice in a ``[2 * length, ...]`` ring, so the current window is always one contiguous slice."""

    __slots__ = ("count", "last_seen_ts", "length", "meta", "ring")

    def __init__(self, length: int) -> None:
        self.length = length
        self.ring: np.ndarray | None = None  # [2 * length, channels], allocated when channels are known
        self.meta = np.empty((2 * length, 4), dtype=np.float64)
        self.count = 0
        self.last_seen_ts = 0.0

    def _allocate(self, channels: int) -> np.ndarray:
        self.ring = np.empty((2 * self.length, channels), dtype=np.float64)
        return self.ring

    @property
    def last_ts(self) -> float:
        return float(self.meta[(self.count - 1) % self.length, _TS])

    @property
    def last_values(self) -> np.ndarray:
        assert self.ring is not None
        return np.asarray(self.ring[(self.count - 1) % self.length])

    def held(self) -> int:
        return min(self.count, self.length)

    def held_meta(self) -> np.ndarray:
        """Metadata rows of the readings still held, oldest first."""
        held = self.held()
        start = (self.count - held) % self.length
        return self.meta[start : start + held]

    def append(self, values: np.ndarray, meta: tuple[float, float, float, float]) -> None:
        ring = self.ring if self.ring is not None else self._allocate(len(values))
        slot = self.count % self.length
        ring[slot] = ring[slot + self.length] = values
        self.meta[slot] = self.meta[slot + self.length] = meta
        self.count += 1

    def window(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The last ``length`` values (a new array ``[length, channels]``), first and last metadata rows."""
        assert self.ring is not None
        start = self.count % self.length
        return (
            self.ring[start : start + self.length].copy(),
            self.meta[start].copy(),
            self.meta[start + self.length - 1].copy(),
        )

    def extend(self, values: np.ndarray, meta: np.ndarray) -> None:
        """Append ``len(values)`` readings at once (only the last ``length`` stay in the ring)."""
        ring = self.ring if self.ring is not None else self._allocate(values.shape[1])
        run = len(values)
        kept = min(run, self.length)
        slots = (self.count + run - kept + np.arange(kept)) % self.length
        ring[slots] = ring[slots + self.length] = values[run - kept :]
        self.meta[slots] = self.meta[slots + self.length] = meta[run - kept :]
        self.count += run

    def recent(self) -> tuple[np.ndarray, np.ndarray]:
        """Values and metadata of the last ``length - 1`` readings held (what a new window may start with)."""
        held = min(self.count, self.length - 1)
        start = (self.count - held) % self.length
        values = self.ring[start : start + held] if self.ring is not None else np.empty((0, 0))
        return values, self.meta[start : start + held]


class _Emitted:
    """Windows collected while a batch is assembled, in pieces; :meth:`batch` puts them in arrival order."""

    def __init__(self) -> None:
        self.values: list[np.ndarray] = []  # [k, length, channels] each
        self.first: list[np.ndarray] = []  # [k, 4] metadata of each window's first reading
        self.end: list[np.ndarray] = []  # [k, 4] ... and of its last
        self.sensor: list[np.ndarray] = []  # [k] index into the batch's sensor names
        self.arrival: list[np.ndarray] = []  # [k] index of the reading that completed the window

    def one(self, sensor: int, arrival: int, window: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        values, first, end = window
        self.values.append(values[None])
        self.first.append(first[None])
        self.end.append(end[None])
        self.sensor.append(np.array([sensor]))
        self.arrival.append(np.array([arrival]))

    def batch(self, names: Sequence[str], topics: Sequence[str], length: int, channels: int) -> WindowBatch:
        if not self.values:
            return WindowBatch.empty(length, channels)
        arrival = np.concatenate(self.arrival)
        order = np.argsort(arrival, kind="stable")
        first = np.concatenate(self.first)[order]
        end = np.concatenate(self.end)[order]
        sensor = np.concatenate(self.sensor)[order]
        topic_index = end[:, _TOPIC].astype(np.int64)
        # the windows straight into their places in arrival order: one copy, not a concatenation and a take
        place = np.empty_like(order)
        place[order] = np.arange(len(order))
        values = np.empty((len(order), *self.values[0].shape[1:]), dtype=self.values[0].dtype)
        start = 0
        for piece in self.values:
            values[place[start : start + len(piece)]] = piece
            start += len(piece)
        return WindowBatch(
            sensor_id=list(map(names.__getitem__, sensor.tolist())),
            start_ts=first[:, _TS],
            end_ts=end[:, _TS],
            values=values,
            topic=list(map(topics.__getitem__, topic_index.tolist())),
            partition=end[:, _PARTITION].astype(np.int32),
            first_offset=first[:, _OFFSET].astype(np.int64),
            end_offset=end[:, _OFFSET].astype(np.int64),
        )


class WindowAssembler:
    """Per-sensor sliding windows from a stream of readings, by the rules in the module docstring.

    :meth:`add_batch` takes a polled batch column-wise; :meth:`add` one reading. Both keep the same
    per-sensor state and give the same windows, in the order the readings arrived.

    >>> assembler = WindowAssembler(length=3)
    >>> windows = assembler.add_batch(["s1"] * 4, np.arange(4.0), np.ones((4, 2)), ["t"] * 4,
    ...                               np.zeros(4, dtype=np.int64), np.arange(4))
    >>> len(windows), windows.end_offset.tolist()  # readings 0-2 and 1-3
    (2, [2, 3])
    """

    def __init__(
        self,
        length: int,
        stride: int = 1,
        sample_period_s: float = 1.0,
        max_fill_s: float = 5.0,
        idle_ttl_s: float = 3600.0,
    ) -> None:
        if length < 1 or stride < 1 or sample_period_s <= 0:
            raise ValueError("length and stride must be >= 1 and sample_period_s > 0")
        self.length = length
        self.stride = stride
        self.sample_period_s = sample_period_s
        self.max_fill_s = max_fill_s
        self.idle_ttl_s = idle_ttl_s
        self.stats = WindowStats()
        self._buffers: dict[str, _SensorBuffer] = {}
        self._recent_gaps: deque[float] = deque(maxlen=1001)  # spacing of recent readings, per sensor
        self._topics: list[str] = []  # topic names by the index stored in the rings
        self._topic_index: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._buffers)

    def _topic(self, topic: str) -> int:
        index = self._topic_index.get(topic)
        if index is None:
            index = self._topic_index[topic] = len(self._topics)
            self._topics.append(topic)
        return index

    def _emits(self, ts: float) -> bool:
        return self.stride == 1 or round(ts / self.sample_period_s) % self.stride == 0

    def _buffer(self, sensor_id: str) -> _SensorBuffer:
        buffer = self._buffers.get(sensor_id)
        if buffer is None:
            buffer = self._buffers[sensor_id] = _SensorBuffer(self.length)
        return buffer

    def _append(
        self,
        buffer: _SensorBuffer,
        values: np.ndarray,
        meta: tuple[float, float, float, float],
        emit: _Emitted,
        sensor: int,
        arrival: int,
    ) -> None:
        buffer.append(values, meta)
        if buffer.count >= self.length and self._emits(meta[_TS]):
            self.stats.emitted += 1
            emit.one(sensor, arrival, buffer.window())

    def _add_one(
        self,
        sensor_id: str,
        ts: float,
        values: np.ndarray,
        topic: int,
        partition: int,
        offset: int,
        emit: _Emitted,
        sensor: int,
        arrival: int,
    ) -> None:
        """The rules applied to one reading; the windows it completes go to ``emit``."""
        buffer = self._buffer(sensor_id)
        meta = (ts, float(topic), float(partition), float(offset))
        if buffer.count:
            last = buffer.last_ts
            if ts < last:
                self.stats.late += 1
                return
            if ts == last:
                self.stats.duplicates += 1
                return
            gap = ts - last
            self._recent_gaps.append(gap)
            if gap > self.max_fill_s:
                self.stats.gap_restarts += 1
                if buffer.count < self.length:
                    self.stats.unwindowed += buffer.count
                buffer = self._buffers[sensor_id] = _SensorBuffer(self.length)
            else:
                fill_values = buffer.last_values.copy()
                for k in range(1, round(gap / self.sample_period_s)):
                    self.stats.filled += 1
                    fill_meta = (last + k * self.sample_period_s, meta[1], meta[2], meta[3])
                    self._append(buffer, fill_values, fill_meta, emit, sensor, arrival)
        self.stats.accepted += 1
        buffer.last_seen_ts = ts
        self._append(buffer, values, meta, emit, sensor, arrival)

    def add(self, sensor_id: str, ts: float, values: np.ndarray, position: Position) -> list[Window]:
        """Feed one reading; return the windows it completes (forward-filled gaps may complete several)."""
        emit = _Emitted()
        topic, partition, offset = position
        self._add_one(sensor_id, ts, values, self._topic(topic), partition, offset, emit, 0, 0)
        return [
            Window(sensor_id, float(f[0, _TS]), float(e[0, _TS]), v[0], self._position(e[0]), self._position(f[0]))
            for v, f, e in zip(emit.values, emit.first, emit.end, strict=True)
        ]

    def _position(self, meta: np.ndarray) -> Position:
        return self._topics[int(meta[_TOPIC])], int(meta[_PARTITION]), int(meta[_OFFSET])

    def add_batch(
        self,
        sensor_ids: Sequence[str],
        ts: np.ndarray,
        values: np.ndarray,
        topics: Sequence[str],
        partitions: np.ndarray,
        offsets: np.ndarray,
    ) -> WindowBatch:
        """Feed readings column-wise (in arrival order); return the windows they complete, in that order.

        The same windows as :meth:`add` called reading by reading. A sensor's readings that are in order
        and one sample period apart are appended in bulk; the rest go through the per-reading rules.

        >>> assembler = WindowAssembler(length=3)
        >>> batch = assembler.add_batch(["s1"] * 5, np.arange(5.0), np.arange(5.0)[:, None], ["t"] * 5,
        ...                             np.zeros(5, int), np.arange(5))
        >>> batch.end_ts.tolist(), batch.values[0, :, 0].tolist(), batch.first_offset.tolist()
        ([2.0, 3.0, 4.0], [0.0, 1.0, 2.0], [0, 1, 2])
        """
        n = len(sensor_ids)
        channels = values.shape[1] if values.ndim == 2 else 0
        emit = _Emitted()
        if n == 0:
            return WindowBatch.empty(self.length, channels)
        names, codes, runs = runs_by_key(sensor_ids)
        for topic in dict.fromkeys(topics):  # each distinct topic once; then a C-level lookup per reading
            self._topic(topic)
        topic_codes = np.fromiter(map(self._topic_index.__getitem__, topics), dtype=np.float64, count=n)
        ts = np.asarray(ts, dtype=np.float64)
        meta = np.column_stack([ts, topic_codes, np.asarray(partitions, np.float64), np.asarray(offsets, np.float64)])
        for run in runs:
            code = int(codes[run[0]])
            if len(run) < _MIN_BULK_RUN or not self._bulk(
                names[code], code, run, ts[run], values[run], meta[run], emit
            ):
                name = names[code]
                for i in run:
                    m = meta[i]
                    self._add_one(name, float(ts[i]), values[i], int(m[1]), int(m[2]), int(m[3]), emit, code, int(i))
        return emit.batch(names, self._topics, self.length, channels)

    def _bulk(
        self,
        sensor_id: str,
        code: int,
        arrival: np.ndarray,
        ts: np.ndarray,
        values: np.ndarray,
        meta: np.ndarray,
        emit: _Emitted,
    ) -> bool:
        """Append one sensor's run at once if it needs no rule (in order, one period apart); else False."""
        buffer = self._buffer(sensor_id)
        gaps = np.diff(ts, prepend=buffer.last_ts) if buffer.count else np.diff(ts)
        if not (gaps.size == 0 or (gaps.min() > 0 and np.rint(gaps / self.sample_period_s).max() <= 1)):
            return False
        if gaps.size and gaps.max() > self.max_fill_s:
            return False
        self._recent_gaps.extend(gaps.tolist())
        recent_values, recent_meta = buffer.recent()
        held = len(recent_meta)
        ends = np.arange(len(ts)) + held  # index of each reading in the recent + run sequence
        emits = ends >= self.length - 1
        if self.stride > 1:
            emits &= np.rint(ts / self.sample_period_s) % self.stride == 0
        ends = ends[emits]
        if ends.size:
            all_values = np.concatenate([recent_values, values]) if held else values
            all_meta = np.concatenate([recent_meta, meta]) if held else meta
            starts = ends - (self.length - 1)
            emit.values.append(all_values[starts[:, None] + np.arange(self.length)])
            emit.first.append(all_meta[starts])
            emit.end.append(all_meta[ends])
            emit.sensor.append(np.full(ends.size, code))
            emit.arrival.append(arrival[ends - held])
            self.stats.emitted += int(ends.size)
        buffer.extend(values, meta)
        buffer.last_seen_ts = float(ts[-1])
        self.stats.accepted += len(ts)
        return True

    def evict_idle(self, now_ts: float) -> list[str]:
        """Forget sensors whose newest reading is older than ``idle_ttl_s`` before ``now_ts``."""
        idle = [s for s, b in self._buffers.items() if now_ts - b.last_seen_ts > self.idle_ttl_s]
        for sensor_id in idle:
            buffer = self._buffers.pop(sensor_id)
            if buffer.count < self.length:
                self.stats.unwindowed += buffer.count
        self.stats.evicted += len(idle)
        return idle

    def observed_period(self, min_intervals: int = 1) -> float | None:
        """The median spacing of the last ~1,000 readings of each sensor (None below ``min_intervals``).

        >>> assembler = WindowAssembler(length=3, sample_period_s=300.0, max_fill_s=1500.0)
        >>> for t in (0.0, 60.0, 120.0, 180.0):
        ...     _ = assembler.add("s1", t, np.array([1.0]), ("t", 0, int(t)))
        >>> assembler.observed_period()
        60.0
        """
        if len(self._recent_gaps) < max(min_intervals, 1):
            return None
        return float(np.median(self._recent_gaps))

    def readings_without_window(self) -> int:
        """Readings that never were in a full window: dropped with a short buffer, or held in one now."""
        held = sum(b.count for b in self._buffers.values() if b.count < self.length)
        return self.stats.unwindowed + held

    def rewind_offsets(self) -> dict[TopicPartitionKey, int]:
        """Per (topic, partition): the oldest source offset still held in an open window."""
        held = [b.held_meta() for b in self._buffers.values() if b.count]
        if not held:
            return {}
        meta = np.concatenate(held)
        keys, inverse = np.unique(meta[:, _TOPIC : _PARTITION + 1], axis=0, return_inverse=True)
        oldest = np.full(len(keys), np.inf)
        np.minimum.at(oldest, inverse.reshape(-1), meta[:, _OFFSET])
        return {
            (self._topics[int(topic)], int(partition)): int(offset)
            for (topic, partition), offset in zip(keys, oldest, strict=True)
        }

    def drop_partitions(self, partitions: Iterable[TopicPartitionKey]) -> int:
        """Forget the sensors whose latest reading came from ``partitions`` (after a revoke)."""
        gone = {(self._topic_index.get(topic), partition) for topic, partition in partitions}

        def latest(buffer: _SensorBuffer) -> tuple[int, int]:
            row = buffer.meta[(buffer.count - 1) % buffer.length]
            return int(row[_TOPIC]), int(row[_PARTITION])

        dropped = [s for s, b in self._buffers.items() if b.count and latest(b) in gone]
        for sensor_id in dropped:
            del self._buffers[sensor_id]
        return len(dropped)
