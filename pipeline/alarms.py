"""Alarm episodes: what an operator is told, once per anomaly, from the scored window stream.

Per sensor, an episode **opens** at the first window the k-of-n filter flags, is **updated** while it
lasts (peak error, peak error / threshold, windows flagged, the channels that contribute most) and
**closes** once the sensor has been quiet (no flagged window) for ``quiet_s`` seconds of event time,
or when the sensor goes idle. Each change is an event (schema :data:`ALARM_SCHEMA`)::

    {"schema": 1, "type": "alarm", "event": "open" | "update" | "close", "alarm_id": "3f2a...",
     "sensor_id": "pump-7", "severity": "warning" | "major" | "critical", "opened_at": 1767225600.0,
     "last_anomalous_at": ..., "closed_at": null, "closed_by": null, "peak_error": 2.1, "peak_ratio": 3.4,
     "windows": 12, "top_channels": ["flow", "pressure"], "model_version": "v000002",
     "source": {"topic": "sensor-readings", "partition": 0, "offset": 4711}, "at": 1767225660.0}

``alarm_id`` is derived from the sensor and the source position of the episode's first flagged
window, so scoring the same readings again (a replay after a crash or a rebalance) gives the same id:
delivery is at least once, and a consumer of the alerts deduplicates by ``(alarm_id, event)``.
Open episodes travel with the offset commits (:meth:`AlarmTracker.snapshot` / :meth:`restore`), so the
next owner of a partition continues an open alarm under its id instead of raising a second one; so does
an open regime-change notice (:meth:`AlarmTracker.notice_snapshot` / :meth:`restore_notice`).
Updates are sent only when the peak ratio has grown by half since the last event, not per window.

Severity is the peak error / threshold ratio: below 2 ``warning``, below 4 ``major``, else
``critical``.

**Regime changes.** A fleet-wide drift (most sensors' errors rising together) is far more often a new
operating point than a fault of every sensor at once. One ``regime_change`` notice (``{"type":
"regime_change", "event": "open", "notice_id": ..., "cause": ..., "policy": ..., "alarms_covered":
n}``), never silent, opens on whichever sign comes first: the drift detectors' fleet-wide drift
(:meth:`AlarmTracker.fleet_drift`, ``cause: "fleet_drift"``), or an alarm opening while more than
``fleet_share`` of the active sensors (and at least :data:`MIN_FLEET_ALARMS`) would have one open
(``cause: "fleet_alarms"``): a change of operating point reaches the alarms of most sensors within seconds,
minutes before a drift detector has the evidence, so without this every sensor but the last was
alarmed first. The notice closes once the fleet has been quiet for ``quiet_s`` (no alarm open; on a large
fleet, at most :data:`QUIET_SHARE` of ``fleet_share`` of its sensors alarmed): ``closed_by:
"model_swap"`` when a new model has served since it opened (:meth:`AlarmTracker.model_swapped`),
``"quiet"`` when the fleet settled by itself (a passing disturbance). A swap alone does not close it:
the first model after a change (a recalibrated threshold, or one fine-tuned mid-ramp) often still
alarms on most sensors, and closing the notice at the swap sent those alarms (drift benchmark, gradual
drift: 2 of 5 alarms sent within 3 minutes after a first-stage swap). While it is open, episodes are marked
``suspected_regime_change`` and, by ``regime_policy``: ``suppress`` keeps them off the alerts topic
(``"suppressed": true``; still in the alarms table; alarms open when the notice opens are closed
with ``"closed_by": "regime_change"``) unless the sensor *stands out from the fleet*
(its *level*, an exponential average of its error ratio over about :data:`STANDOUT_SPAN` windows, at
least ``standout_factor`` times the fleet's median level, and that many times its threshold while the
fleet's level is still below it), in which case it is sent under its id, and closed (``"closed_by":
"rejoined_fleet"``) once its level is back with the fleet's (below :data:`REJOIN_SHARE` of the level
that stands out); ``notify`` sends them marked; ``alarm`` ignores the drift. The risk: a real
plant-wide fault looks the same as a regime change; the notice says so, and ``alarm`` is there for
plants where that risk is not acceptable.

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
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

ALARM_SCHEMA = 1
RegimePolicy = Literal["notify", "suppress", "alarm"]
REGIME_POLICIES: tuple[str, ...] = ("notify", "suppress", "alarm")
#: Open alarms carried per partition in a commit's metadata, and the bytes they may take there (Kafka's
#: ``offset.metadata.max.bytes`` is 4,096 by default; the rewind point needs the rest).
MAX_CARRIED_PER_PARTITION = 10
MAX_CARRIED_BYTES = 3_000
#: Windows a sensor's level averages over while a regime-change notice is open. One window's ratio is
#: noisy: judged window by window, every sensor "stood out" now and then during a regime change (9
#: alarms sent in the drift benchmark's gradual drift, each from a single window at 3x the batch median).
#: Early in a regime change the fleet's level is still low, so a sensor must also reach ``standout_factor``
#: times its threshold: judged against the fleet's level alone, a sensor merely at its threshold "stood out".
STANDOUT_SPAN = 30
#: Alarms open at once that can be a regime change (besides more than ``fleet_share`` of the sensors). With
#: two, a fleet of four whose retrained model alarmed on 3 % of windows kept opening notices from
#: coincidences, and the notices kept real anomalies off the alerts (drift benchmark, gradual drift).
MIN_FLEET_ALARMS = 3
#: Under a notice the fleet is *quiet* while at most this share of ``fleet_share`` of its active sensors
#: has an alarm open (rounded down: none on a fleet of four, 125 of 1,000 at a share of 0.5). "No alarm
#: open" alone never holds on a large fleet, whose normal false alarms overlap all the time, so a notice
#: there would never close and keep every alarm that does not stand out off the alerts.
QUIET_SHARE = 0.25
#: A sensor alarmed because it stood out under a notice *rejoins the fleet* once its level falls below
#: this share of the level that stands out (hysteresis, so a level near the limit does not open and close
#: alarms in turn): its alarm closes (``closed_by: "rejoined_fleet"``) and its windows, still flagged like
#: the rest of the fleet's, belong to the notice again. Without it, an anomaly that stood out in the middle
#: of a regime change kept its alarm open until the plant settled: in the drift benchmark's gradual drift
#: (seed 23) two real anomalies of one or two minutes held alarms open for 31 and 21 minutes.
REJOIN_SHARE = 0.5


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
    suspected_regime_change: bool = False  # opened while a fleet-wide drift was open
    suppressed: bool = False  # kept off the alerts topic by the ``suppress`` policy (never off the table)

    def event(
        self, kind: str, at: float, closed_at: float | None = None, closed_by: str | None = None
    ) -> dict[str, Any]:
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
            "closed_by": closed_by,  # close events: "quiet", "idle", "regime_change" or "rejoined_fleet"
            "peak_error": self.peak_error,
            "peak_ratio": self.peak_ratio,
            "windows": self.windows,
            "top_channels": list(self.top_channels),
            "model_version": self.model_version,
            "source": dict(self.source),
            "suspected_regime_change": self.suspected_regime_change,
            "suppressed": self.suppressed,
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
            self.suspected_regime_change,
            self.suppressed,
        ]

    @classmethod
    def from_carried(cls, sensor_id: str, topic: str, partition: int, values: list[Any]) -> Episode:
        alarm, opened, last, peak, ratio, windows, top, version, offset, suspected, suppressed = values
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
            suspected_regime_change=bool(suspected),
            suppressed=bool(suppressed),
        )
        episode.reported_ratio = episode.peak_ratio
        return episode


class AlarmTracker:
    """Turns flagged windows into alarm episodes and their events (see the module docstring)."""

    def __init__(
        self,
        quiet_s: float,
        channels: Sequence[str],
        top_channels: int = 3,
        regime_policy: RegimePolicy = "suppress",
        standout_factor: float = 3.0,
        fleet_share: float | None = 0.5,
        near_ratio: float | None = 0.6,
    ) -> None:
        if quiet_s < 0:
            raise ValueError("quiet_s must be >= 0")
        if regime_policy not in REGIME_POLICIES:
            raise ValueError(f"regime_policy must be one of {REGIME_POLICIES}, got {regime_policy!r}")
        self.quiet_s = quiet_s
        self.channels = tuple(channels)
        self.top_channels = top_channels
        self.regime_policy = regime_policy
        self.standout_factor = standout_factor
        self.fleet_share = fleet_share
        self.near_ratio = near_ratio
        self._last_ratio: dict[str, float] = {}  # sensor -> its latest window's error ratio (before this batch)
        self._open: dict[str, Episode] = {}
        self._active: set[str] = set()  # sensors seen and not gone idle: the fleet's size
        self._regime: dict[str, Any] | None = None  # the open regime-change notice, if any
        self._levels: dict[str, float] = {}  # sensor -> its level (averaged error ratio) while a notice is open
        self._fleet_quiet_since: float | None = None  # event time since which the fleet is quiet, under a notice
        self._swapped_under_notice = False  # a new model has served since the notice opened

    @property
    def regime_open(self) -> bool:
        return self._regime is not None

    @property
    def fleet_alarmed(self) -> bool:
        """A regime-change notice is open because most sensors alarmed at once."""
        return self._regime is not None and self._regime["cause"] == "fleet_alarms"

    def fleet_drift(self, at: float, model_version: str, cause: str = "fleet_drift") -> list[dict[str, Any]]:
        """A fleet-wide drift was detected: open one ``regime_change`` notice (unless one is open)."""
        if self._regime is not None or self.regime_policy == "alarm":
            return []
        notice_id = hashlib.sha256(f"regime\x00{model_version}\x00{at!r}".encode()).hexdigest()[:20]
        self._regime = {"notice_id": notice_id, "opened_at": at, "model_version": model_version, "cause": cause}
        events = [self._notice("open", at)]
        for sensor, episode in list(self._open.items()):  # what is open now is covered by the notice too
            episode.suspected_regime_change = True
            if self.regime_policy == "suppress":  # resolved by the notice; a sensor that stands out re-opens
                events.append(self._open.pop(sensor).event("close", at, closed_at=at, closed_by="regime_change"))
        self._fleet_quiet_since = None
        self._note_quiet(at)
        return events

    def _quiet_limit(self) -> int:
        """Open alarms the fleet may have and still count as quiet under a notice (see :data:`QUIET_SHARE`)."""
        return int(QUIET_SHARE * (self.fleet_share or 0.0) * len(self._active))

    def _note_quiet(self, at: float) -> None:
        """An alarm closed (or a notice opened) at ``at``: the fleet's quiet time starts if it is quiet now."""
        if self._fleet_quiet_since is None and len(self._open) <= self._quiet_limit():
            self._fleet_quiet_since = at

    def model_swapped(self) -> None:
        """A new model serves: an open notice closes once the fleet is quiet under it (``closed_by: "model_swap"``)."""
        self._swapped_under_notice = self._regime is not None

    def regime_settled(self, at: float, *, closed_by: str) -> list[dict[str, Any]]:
        """Close the notice, if one is open (the fleet is judged to be in a known regime again)."""
        if self._regime is None:
            return []
        event = {**self._notice("close", at), "closed_by": closed_by}
        self._regime = self._fleet_quiet_since = None
        self._swapped_under_notice = False
        self._levels.clear()
        return [event]

    def _update_levels(self, sensor_ids: Sequence[str], ratio: np.ndarray) -> tuple[float, np.ndarray]:
        """Average each sensor's error ratio into its level, window by window; return the level that stands
        out now and, per window, its sensor's level as of that window (not as of the batch's end: a batch
        may hold minutes of one sensor, e.g. a partition read far ahead of the others)."""
        alpha = 2.0 / (STANDOUT_SPAN + 1)
        levels = self._levels
        row_levels = np.empty(len(sensor_ids))
        for i, (sensor, r) in enumerate(zip(sensor_ids, ratio.tolist(), strict=True)):
            level = levels.get(sensor)
            levels[sensor] = row_levels[i] = r if level is None else level + alpha * (r - level)
        return self.standout_factor * max(1.0, float(np.median(list(levels.values())))), row_levels

    def _rejoined_fleet(self, episode: Episode, level: float, standout_level: float) -> bool:
        """Was ``episode`` sent because its sensor stood out under the notice, and is its ``level`` back with
        the fleet?"""
        return (
            self._regime is not None
            and self.regime_policy == "suppress"
            and episode.suspected_regime_change
            and not episode.suppressed
            and level < REJOIN_SHARE * standout_level
        )

    @property
    def _fleet_rule_share(self) -> float | None:
        """``fleet_share`` where most of the fleet alarming at once can open a notice (None: it cannot)."""
        return None if self.regime_policy == "alarm" else self.fleet_share

    def _fleet_alarming(self, sensor_ids: Sequence[str], ratio: np.ndarray, row: int) -> bool:
        """Would an alarm opening at ``row`` make more than ``fleet_share`` of the active sensors (and three) alarmed?

        Sensors without an open alarm whose latest window before ``row`` came within ``near_ratio`` of
        their threshold count as alarmed: a fleet-wide rise brings most sensors there together, and the
        first ones to cross would otherwise be sent before the rest made it a regime change.
        """
        share = self._fleet_rule_share
        if share is None:
            return False
        needed = max(MIN_FLEET_ALARMS, int(share * len(self._active)) + 1)
        alarmed = len(self._open) + 1
        if alarmed >= needed or self.near_ratio is None:
            return alarmed >= needed
        latest = dict(self._last_ratio)
        latest.update(zip(sensor_ids[:row], ratio[:row].tolist(), strict=True))
        sensor, near = sensor_ids[row], self.near_ratio
        alarmed += sum(r >= near for s, r in latest.items() if s != sensor and s not in self._open)
        return alarmed >= needed

    def _notice(self, kind: str, at: float) -> dict[str, Any]:
        assert self._regime is not None
        covered = sum(e.suspected_regime_change for e in self._open.values())
        return {
            "schema": ALARM_SCHEMA,
            "type": "regime_change",
            "event": kind,
            **self._regime,
            "policy": self.regime_policy,
            "alarms_covered": covered,
            "at": at,
        }

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
        if self.fleet_share is not None:
            self._active.update(sensor_ids)
        # during a regime change a sensor still stands out when its level is far above the fleet's
        standout_level, level = float("inf"), np.zeros(len(sensor_ids))
        if self._regime is not None:
            standout_level, level = self._update_levels(sensor_ids, ratio)
        watched = set(self._open).union(sensor_ids[i] for i in np.flatnonzero(flagged).tolist())  # open, or opening now
        rows = np.flatnonzero(np.fromiter(map(watched.__contains__, sensor_ids), bool, len(sensor_ids)))
        for i in rows.tolist():
            sensor, ts = sensor_ids[i], float(end_ts[i])
            episode = self._open.get(sensor)
            if flagged[i]:
                if episode is not None and self._rejoined_fleet(episode, float(level[i]), standout_level):
                    events.append(self._open.pop(sensor).event("close", ts, closed_at=ts, closed_by="rejoined_fleet"))
                    episode = None  # what it still flags is the regime change's: a suppressed episode opens
                if episode is None:
                    if self._regime is None and self._fleet_alarming(sensor_ids, ratio, i):  # a regime change
                        events += self.fleet_drift(ts, model_version, cause="fleet_alarms")
                        standout_level, level = self._update_levels(sensor_ids, ratio)
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
                    if len(self._open) > self._quiet_limit():
                        self._fleet_quiet_since = None
                    if self._regime is not None:
                        episode.suspected_regime_change = True
                        episode.suppressed = bool(self.regime_policy == "suppress" and level[i] < standout_level)
                    events.append(episode.event("open", ts))
                    continue
                if episode.suppressed and level[i] >= standout_level:  # it stands out: alarm it
                    episode.suppressed = False
                    episode.last_anomalous_at = ts
                    episode.windows += 1
                    episode.peak_ratio = max(episode.peak_ratio, float(ratio[i]))
                    episode.peak_error = max(episode.peak_error, float(error[i]))
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
                events.append(self._open.pop(sensor).event("close", ts, closed_at=ts, closed_by="quiet"))
                self._note_quiet(ts)
        if self.near_ratio is not None and self._fleet_rule_share is not None:
            self._last_ratio.update(zip(sensor_ids, ratio.tolist(), strict=True))
        quiet_since = self._fleet_quiet_since
        if self._regime is not None and quiet_since is not None and float(end_ts[-1]) - quiet_since >= self.quiet_s:
            # the fleet quiet for quiet_s: judged normal again (under a new model, or by itself)
            closed_by = "model_swap" if self._swapped_under_notice else "quiet"
            events += self.regime_settled(quiet_since + self.quiet_s, closed_by=closed_by)
        return events

    def close(self, sensor_ids: Sequence[str], at: float) -> list[dict[str, Any]]:
        """Close the episodes of ``sensor_ids`` (e.g. sensors gone idle); return their close events."""
        for sensor in sensor_ids:
            self._active.discard(sensor)
            self._levels.pop(sensor, None)
            self._last_ratio.pop(sensor, None)
        events = [
            self._open.pop(s).event("close", at, closed_at=at, closed_by="idle") for s in sensor_ids if s in self._open
        ]
        if events:
            self._note_quiet(at)
        return events

    def _top(self, channel_error: np.ndarray) -> list[str]:
        order = np.argsort(-np.asarray(channel_error, dtype=np.float64), kind="stable")[: self.top_channels]
        return [self.channels[j] for j in order]

    def snapshot(self) -> dict[tuple[str, int], dict[str, list[Any]]]:
        """Open episodes by the partition of their first window (for that partition's commit metadata).

        At most :data:`MAX_CARRIED_PER_PARTITION` per partition in :data:`MAX_CARRIED_BYTES` of JSON,
        the most recently flagged first: an alarm left out is raised again after a restart, under a new
        id (never lost).
        """
        out: dict[tuple[str, int], dict[str, list[Any]]] = {}
        size: dict[tuple[str, int], int] = {}
        for episode in sorted(self._open.values(), key=lambda e: e.last_anomalous_at, reverse=True):
            tp = (episode.source["topic"], episode.source["partition"])
            carried = out.setdefault(tp, {})
            entry = episode.carried()
            cost = len(json.dumps({episode.sensor_id: entry})) + 2
            if len(carried) < MAX_CARRIED_PER_PARTITION and size.get(tp, 0) + cost <= MAX_CARRIED_BYTES:
                carried[episode.sensor_id] = entry
                size[tp] = size.get(tp, 0) + cost
        return {tp: carried for tp, carried in out.items() if carried}

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

    def notice_snapshot(self) -> dict[str, Any] | None:
        """The open regime-change notice as every partition's commit metadata carries it (None: none open).

        A restart or the next owner of a partition continues the notice under its id instead of sending
        the fleet's alarms until most sensors alarm again. The sensors' levels are not carried: after a
        restart a sensor's level starts afresh from its next windows.
        """
        if self._regime is None:
            return None
        return {**self._regime, "swapped": self._swapped_under_notice, "quiet_since": self._fleet_quiet_since}

    def restore_notice(self, carried: object) -> bool:
        """Continue the notice a commit carried (no event: it was sent); False when there is none.

        Partitions committed at different times may carry different notices (one that received no
        data since keeps an older one): the most recently opened wins.
        """
        if self.regime_policy == "alarm" or not isinstance(carried, dict):
            return False
        try:
            regime = {
                "notice_id": str(carried["notice_id"]),
                "opened_at": float(carried["opened_at"]),
                "model_version": str(carried["model_version"]),
                "cause": str(carried["cause"]),
            }
            quiet_since = carried.get("quiet_since")
            quiet = None if quiet_since is None else float(quiet_since)
        except (KeyError, TypeError, ValueError):
            return False  # metadata written by something else: a lasting regime change opens a notice again
        if self._regime is not None and self._regime["opened_at"] >= regime["opened_at"]:
            return False
        self._regime, self._fleet_quiet_since = regime, quiet
        self._swapped_under_notice = bool(carried.get("swapped", False))
        return True

    def drop_partitions(self, partitions: Sequence[tuple[str, int]]) -> int:
        """Forget, without an event, the episodes of ``partitions`` (moved to another consumer)."""
        gone = set(partitions)
        dropped = [s for s, e in self._open.items() if (e.source["topic"], e.source["partition"]) in gone]
        for sensor in dropped:
            del self._open[sensor]
        return len(dropped)
