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
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

Position = tuple[str, int, int]  # topic, partition, offset
TopicPartitionKey = tuple[str, int]


@dataclass(frozen=True)
class Window:
    sensor_id: str
    start_ts: float
    end_ts: float
    values: np.ndarray  # [length, channels]
    end_position: Position
    first_position: Position


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
    """The last ``length`` readings of one sensor. Values live twice in a ``[2 * length, channels]`` ring,
    so the current window is always one contiguous slice (copied once when a window is emitted)."""

    __slots__ = ("count", "last_seen_ts", "length", "positions", "ring", "timestamps")

    def __init__(self, length: int) -> None:
        self.length = length
        self.ring: np.ndarray | None = None  # allocated on the first reading, when channels are known
        self.count = 0
        self.timestamps: deque[float] = deque(maxlen=length)
        self.positions: deque[Position] = deque(maxlen=length)
        self.last_seen_ts = 0.0

    def append(self, ts: float, values: np.ndarray, position: Position) -> None:
        if self.ring is None:
            self.ring = np.empty((2 * self.length, len(values)), dtype=np.float64)
        slot = self.count % self.length
        self.ring[slot] = values
        self.ring[slot + self.length] = values
        self.count += 1
        self.timestamps.append(ts)
        self.positions.append(position)

    @property
    def last_values(self) -> np.ndarray:
        assert self.ring is not None
        return np.asarray(self.ring[(self.count - 1) % self.length])

    def window(self) -> np.ndarray:
        """The last ``length`` values, oldest first, as a new array ``[length, channels]``."""
        assert self.ring is not None
        start = self.count % self.length
        return self.ring[start : start + self.length].copy()


class WindowAssembler:
    """Per-sensor sliding windows from a stream of readings, by the rules in the module docstring."""

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

    def __len__(self) -> int:
        return len(self._buffers)

    def _new_buffer(self) -> _SensorBuffer:
        return _SensorBuffer(self.length)

    def _emits(self, ts: float) -> bool:
        return self.stride == 1 or round(ts / self.sample_period_s) % self.stride == 0

    def _append(
        self, buffer: _SensorBuffer, sensor_id: str, ts: float, values: np.ndarray, position: Position
    ) -> Window | None:
        buffer.append(ts, values, position)
        if buffer.count < self.length or not self._emits(ts):
            return None
        self.stats.emitted += 1
        return Window(sensor_id, buffer.timestamps[0], ts, buffer.window(), position, buffer.positions[0])

    def add(self, sensor_id: str, ts: float, values: np.ndarray, position: Position) -> list[Window]:
        """Feed one reading; return the windows it completes (forward-filled gaps may complete several)."""
        buffer = self._buffers.get(sensor_id)
        if buffer is None:
            buffer = self._buffers[sensor_id] = self._new_buffer()
        windows: list[Window] = []
        if buffer.timestamps:
            last = buffer.timestamps[-1]
            if ts < last:
                self.stats.late += 1
                return windows
            if ts == last:
                self.stats.duplicates += 1
                return windows
            gap = ts - last
            self._recent_gaps.append(gap)
            if gap > self.max_fill_s:
                self.stats.gap_restarts += 1
                if buffer.count < self.length:
                    self.stats.unwindowed += buffer.count
                buffer = self._buffers[sensor_id] = self._new_buffer()
            else:
                missing = round(gap / self.sample_period_s) - 1
                fill_values = buffer.last_values.copy()
                for k in range(1, missing + 1):
                    self.stats.filled += 1
                    window = self._append(buffer, sensor_id, last + k * self.sample_period_s, fill_values, position)
                    if window is not None:
                        windows.append(window)
        self.stats.accepted += 1
        buffer.last_seen_ts = ts
        window = self._append(buffer, sensor_id, ts, values, position)
        if window is not None:
            windows.append(window)
        return windows

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
        oldest: dict[TopicPartitionKey, int] = {}
        for buffer in self._buffers.values():
            for topic, partition, offset in buffer.positions:
                key = (topic, partition)
                if offset < oldest.get(key, offset + 1):
                    oldest[key] = offset
        return oldest

    def drop_partitions(self, partitions: Iterable[TopicPartitionKey]) -> int:
        """Forget the sensors whose latest reading came from ``partitions`` (after a revoke)."""
        gone = set(partitions)
        dropped = [s for s, b in self._buffers.items() if b.positions and b.positions[-1][:2] in gone]
        for sensor_id in dropped:
            del self._buffers[sensor_id]
        return len(dropped)
