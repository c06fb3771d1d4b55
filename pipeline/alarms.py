"""Alarm episodes: what an operator is told, once per anomaly, from the scored window stream.

Per sensor, an episode **opens** at the first window the k-of-n filter flags, is **updated** while it
lasts (peak error, peak error / threshold, windows flagged, the channels that contribute most) and
**closes** once the sensor has been quiet (no flagged window) for ``quiet_s`` seconds of event time,
or when the sensor goes idle. Each change is an event (schema :data:`ALARM_SCHEMA`)::

    {"schema": 1, "type": "alarm", "event": "open" | "update" | "close", "alarm_id": "3f2a...",
     "sensor_id": "pump-7", "severity": "warning" | "major" | "critical", "opened_at": 1767225600.0,
     "last_anomalous_at": ..., "closed_at": null, "peak_error": 2.1, "peak_ratio": 3.4, "windows": 12,
     "top_channels": ["flow", "pressure"], "model_version": "v000002",
     "source": {"topic": "sensor-readings", "partition": 0, "offset": 4711}, "at": 1767225660.0}

``alarm_id`` is derived from the sensor and the source position of the episode's first flagged
window, so scoring the same readings again (a replay after a crash or a rebalance) gives the same id:
delivery is at least once, and a consumer of the alerts deduplicates by ``(alarm_id, event)``.
Open episodes travel with the offset commits (:meth:`AlarmTracker.snapshot` / :meth:`restore`), so the
next owner of a partition continues an open alarm under its id instead of raising a second one.
Updates are sent only when the peak ratio has grown by half since the last event, not per window.

Severity is the peak error / threshold ratio: below 2 ``warning``, below 4 ``major``, else
``critical``.

>>> import numpy as np
>>> tracker = AlarmTracker(quiet_s=10.0, channels=("a", "b"))
>>> flags = np.array([False, True, True, False, False])
>>> events = tracker.update(
...     ["s1"] * 5, np.arange(5.0) * 5, flags, np.array([0.1, 2.0, 3.0, 0.1, 0.1]), np.ones(5),
...     np.array([[0.1, 0.0], [1.5, 0.5], [2.5, 0.5], [0.1, 0.0], [0.1, 0.0]]), "v1", ["t"] * 5,
...     np.zeros(5, int), np.arange(5))
>>> [(e["event"], e["severity"], e["windows"]) for e in events]
[('open', 'major', 1), ('update', 'major', 2), ('close', 'major', 2)]
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ALARM_SCHEMA = 1
#: Open alarms carried per partition in a commit's metadata (Kafka allows 4 KB of metadata by default).
MAX_CARRIED_PER_PARTITION = 10


def alarm_id(sensor_id: str, topic: str, partition: int, offset: int) -> str:
    """A stable id from the sensor and the source position of the episode's first flagged window.

    >>> alarm_id("pump-7", "readings", 0, 42) == alarm_id("pump-7", "readings", 0, 42)
    True
    """
    return hashlib.sha256(f"{sensor_id}\x00{topic}\x00{partition}\x00{offset}".encode()).hexdigest()[:20]


def severity(ratio: float) -> str:
    """``warning`` below 2x the threshold, ``major`` below 4x, else ``critical``."""
    return "warning" if ratio < 2.0 else "major" if ratio < 4.0 else "critical"


@dataclass
class Episode:
    """One open alarm of one sensor."""

    alarm_id: str
    sensor_id: str
    opened_at: float
    last_anomalous_at: float
    peak_error: float
    peak_ratio: float
    windows: int
    top_channels: list[str]
    model_version: str
    source: dict[str, Any]
    reported_ratio: float = field(default=0.0)  # peak ratio at the last event sent

    def event(self, kind: str, at: float, closed_at: float | None = None) -> dict[str, Any]:
        self.reported_ratio = self.peak_ratio
        return {
            "schema": ALARM_SCHEMA,
            "type": "alarm",
            "event": kind,
            "alarm_id": self.alarm_id,
            "sensor_id": self.sensor_id,
            "severity": severity(self.peak_ratio),
            "opened_at": self.opened_at,
            "last_anomalous_at": self.last_anomalous_at,
            "closed_at": closed_at,
            "peak_error": self.peak_error,
            "peak_ratio": self.peak_ratio,
            "windows": self.windows,
            "top_channels": list(self.top_channels),
            "model_version": self.model_version,
            "source": dict(self.source),
            "at": at,
        }

    def carried(self) -> list[Any]:
        """The compact form that travels in commit metadata (topic and partition are the commit's)."""
        return [
            self.alarm_id,
            self.opened_at,
            self.last_anomalous_at,
            round(self.peak_error, 6),
            round(self.peak_ratio, 4),
            self.windows,
            self.top_channels,
            self.model_version,
            self.source["offset"],
        ]

    @classmethod
    def from_carried(cls, sensor_id: str, topic: str, partition: int, values: list[Any]) -> Episode:
        alarm, opened, last, peak, ratio, windows, top, version, offset = values
        source = {"topic": topic, "partition": partition, "offset": int(offset)}
        episode = cls(
            str(alarm),
            sensor_id,
            float(opened),
            float(last),
            float(peak),
            float(ratio),
            int(windows),
            [str(c) for c in top],
            str(version),
            source,
        )
        episode.reported_ratio = episode.peak_ratio
        return episode


class AlarmTracker:
    """Turns flagged windows into alarm episodes and their events (see the module docstring)."""

    def __init__(self, quiet_s: float, channels: Sequence[str], top_channels: int = 3) -> None:
        if quiet_s < 0:
            raise ValueError("quiet_s must be >= 0")
        self.quiet_s = quiet_s
        self.channels = tuple(channels)
        self.top_channels = top_channels
        self._open: dict[str, Episode] = {}

    def __len__(self) -> int:
        """Open alarms."""
        return len(self._open)

    def update(
        self,
        sensor_ids: Sequence[str],
        end_ts: np.ndarray,
        anomaly: np.ndarray,
        error: np.ndarray,
        threshold: np.ndarray,
        channel_error: np.ndarray,
        model_version: str,
        topics: Sequence[str],
        partitions: np.ndarray,
        offsets: np.ndarray,
    ) -> list[dict[str, Any]]:
        """Feed scored windows in arrival order; return the alarm events they cause, in order."""
        events: list[dict[str, Any]] = []
        if not len(sensor_ids):
            return events
        ratio = np.asarray(error, dtype=np.float64) / np.maximum(np.asarray(threshold, dtype=np.float64), 1e-12)
        flagged = np.asarray(anomaly, dtype=bool)
        watched = set(self._open).union(sensor_ids[i] for i in np.flatnonzero(flagged).tolist())  # open, or opening now
        rows = np.flatnonzero(np.fromiter((s in watched for s in sensor_ids), bool, len(sensor_ids)))
        for i in rows.tolist():
            sensor, ts = sensor_ids[i], float(end_ts[i])
            episode = self._open.get(sensor)
            if flagged[i]:
                if episode is None:
                    episode = self._open[sensor] = Episode(
                        alarm_id(sensor, topics[i], int(partitions[i]), int(offsets[i])),
                        sensor,
                        ts,
                        ts,
                        float(error[i]),
                        float(ratio[i]),
                        1,
                        self._top(channel_error[i]),
                        model_version,
                        {"topic": topics[i], "partition": int(partitions[i]), "offset": int(offsets[i])},
                    )
                    events.append(episode.event("open", ts))
                    continue
                episode.last_anomalous_at = ts
                episode.windows += 1
                if error[i] > episode.peak_error:
                    episode.peak_error = float(error[i])
                    episode.top_channels = self._top(channel_error[i])
                if ratio[i] > episode.peak_ratio:
                    episode.peak_ratio = float(ratio[i])
                if episode.peak_ratio >= 1.5 * episode.reported_ratio:
                    events.append(episode.event("update", ts))
            elif episode is not None and ts - episode.last_anomalous_at >= self.quiet_s:
                events.append(self._open.pop(sensor).event("close", ts, closed_at=ts))
        return events

    def close(self, sensor_ids: Sequence[str], at: float) -> list[dict[str, Any]]:
        """Close the episodes of ``sensor_ids`` (e.g. sensors gone idle); return their close events."""
        return [self._open.pop(s).event("close", at, closed_at=at) for s in sensor_ids if s in self._open]

    def _top(self, channel_error: np.ndarray) -> list[str]:
        order = np.argsort(-np.asarray(channel_error, dtype=np.float64), kind="stable")[: self.top_channels]
        return [self.channels[j] for j in order]

    def snapshot(self) -> dict[tuple[str, int], dict[str, list[Any]]]:
        """Open episodes by the partition of their first window (for that partition's commit metadata).

        At most :data:`MAX_CARRIED_PER_PARTITION` per partition, the most recently flagged first: an
        alarm left out is raised again after a restart, under a new id (never lost).
        """
        out: dict[tuple[str, int], dict[str, list[Any]]] = {}
        for episode in sorted(self._open.values(), key=lambda e: e.last_anomalous_at, reverse=True):
            carried = out.setdefault((episode.source["topic"], episode.source["partition"]), {})
            if len(carried) < MAX_CARRIED_PER_PARTITION:
                carried[episode.sensor_id] = episode.carried()
        return out

    def restore(self, topic: str, partition: int, carried: object) -> int:
        """Take over the open episodes a commit of ``topic``-``partition`` carried; return how many."""
        if not isinstance(carried, dict):
            return 0
        restored = 0
        for sensor, values in carried.items():
            try:
                self._open[str(sensor)] = Episode.from_carried(str(sensor), topic, partition, list(values))
                restored += 1
            except (TypeError, ValueError):
                continue  # metadata written by something else: ignore it; a lasting anomaly opens again
        return restored

    def drop_partitions(self, partitions: Sequence[tuple[str, int]]) -> int:
        """Forget, without an event, the episodes of ``partitions`` (moved to another consumer)."""
        gone = set(partitions)
        dropped = [s for s, e in self._open.items() if (e.source["topic"], e.source["partition"]) in gone]
        for sensor in dropped:
            del self._open[sensor]
        return len(dropped)
