"""Drift detection on the reconstruction-error stream with River detectors, per sensor and fleet-wide.

ADWIN (default), PageHinkley (``mode="up"``) and KSWIN are selectable. **Only rising error is drift**
(``rising_only``, the default): ADWIN and KSWIN test for any change, and a reconstruction error that
*falls* (an anomaly ended, a calm phase) is a change too, but never a reason to retrain; in the demo such
a fall was the one fleet-wide false alarm, and it started a retraining run on data from before the real
drift. A change counts as rising when the mean of what the detector keeps after the cut (ADWIN's newer
sub-window, KSWIN's recent sample) is above the mean it kept before.

**Material drift.** ADWIN also finds statistically real rises that leave the error well under the
threshold, which no alarm feels (a slow load cycle the training stretch barely covered). In the drift
benchmark (seed 21, gradual) such fleet drifts came before the injected drift at 0.33 and 0.49 of the
threshold (the stream's recent mean error over it, ``recent_mean_ratio``); each started a retraining
run, and the second, still training when the real drift came, learned mostly pre-drift data and then
served the drift with 60-99 % of windows flagged. So an event is *material* (it may ask for
retraining; a fleet drift opens a regime-change notice) only when its ratio reaches ``min_ratio``
(1: the median sensor errs at its alarm threshold on average) or while most sensors are alarmed at
once; the others are still logged. The injected drift's first fleet event came at 0.49 (material:
most sensors were alarmed by then), the next at 1.21.

Each detection becomes a :class:`DriftEvent`. :meth:`DriftMonitor.reset` starts every detector afresh
(``clone()``) and is called on every model swap, since the error stream of a new model is a new stream.

**Fleet-wide** the detector watches the *median across sensors* of each sensor's latest error, fed
once per round (as many updates as there are active sensors). An anomaly on one sensor moves that
sensor's error but not the fleet median, so anomalies do not read as fleet drift; a change of operating
point moves every sensor, hence the median. Sensors silent for ``fleet_max_age_s`` (event time) leave
the median.

>>> monitor = DriftMonitor("page_hinkley", model_version="v000001")
>>> events = [e for i in range(600) for e in monitor.update("s1", float(i), 0.1 if i < 300 else 5.0)]
>>> [(e.scope, e.sensor_id, e.detector) for e in events][:2]
[('sensor', 's1', 'page_hinkley'), ('fleet', None, 'page_hinkley')]
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np
from river import drift
from river.base import DriftDetector

DetectorName = Literal["adwin", "page_hinkley", "kswin"]
#: Errors the running mean of a stream (an event's ``recent_mean_error``) covers, about: short enough to
#: have caught up with a rise when ADWIN detects it (~50 errors after a tripling, where a mean of the last
#: 100 still read 0.67 of the threshold: the drift looked immaterial), long enough to smooth single windows.
LEVEL_SPAN = 30
FLEET = "__fleet__"


def _kept_mean(detector: DriftDetector) -> float | None:
    """Mean of the errors the detector keeps; None for PageHinkley, which only detects rises here."""
    if isinstance(detector, drift.ADWIN):
        return float(detector.estimation)
    if isinstance(detector, drift.KSWIN):
        return statistics.fmean(detector.window) if detector.window else None
    return None


def make_detector(name: DetectorName, seed: int = 0) -> DriftDetector:
    """A fresh River detector by name, with settings suited to a reconstruction-error stream."""
    if name == "adwin":
        return drift.ADWIN(delta=0.002)
    if name == "page_hinkley":
        return drift.PageHinkley(mode="up")
    if name == "kswin":
        return drift.KSWIN(alpha=0.005, window_size=100, stat_size=30, seed=seed)
    raise ValueError(f"unknown drift detector {name!r}; choose adwin, page_hinkley or kswin")


@dataclass(frozen=True)
class DriftEvent:
    """One detection: where (a sensor or the fleet), when (event time), by which detector, on which model."""

    scope: Literal["sensor", "fleet"]
    sensor_id: str | None
    ts: float
    detector: str
    model_version: str
    observations: int
    recent_mean_error: float  # running mean of about the last LEVEL_SPAN errors
    recent_mean_ratio: float | None = None  # recent_mean_error / the threshold its windows were judged by
    material: bool = True  # the alarms feel it (see DriftMonitor.is_material): it may ask for retraining

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class _Stream:
    """One error stream's detector and what the monitor keeps beside it (one lookup per error)."""

    detector: DriftDetector
    mean: float  # running mean over about LEVEL_SPAN errors (an event's recent_mean_error)
    count: int = 0
    # ADWIN's window, mirrored: its sum and size grow by one error per update and change otherwise only
    # when it detects (it drops its older part, and River starts it afresh on the next update), so the
    # mean before an update needs no call into it
    window_total: float = 0.0
    window_width: int = 0
    restarts: bool = False  # the last update detected: the next one starts ADWIN's window afresh


class DriftMonitor:
    """One detector per sensor plus one on the fleet-wide error stream."""

    def __init__(
        self,
        detector: DetectorName = "adwin",
        model_version: str = "",
        fleet: bool = True,
        fleet_max_age_s: float = 300.0,
        rising_only: bool = True,
        min_ratio: float = 1.0,
    ) -> None:
        self.detector_name: DetectorName = detector
        self.rising_only = rising_only
        self.min_ratio = min_ratio
        self.model_version = model_version
        self.fleet = fleet
        self.fleet_max_age_s = fleet_max_age_s
        self._prototype = make_detector(detector)
        self._mirrored = isinstance(self._prototype, drift.ADWIN)
        self._streams: dict[str, _Stream] = {}
        self._latest: dict[str, tuple[float, float]] = {}  # sensor -> (ts, error), for the fleet median
        self._since_fleet = 0

    def reset(self, model_version: str) -> None:
        """Forget all history (a new model makes a new error stream)."""
        self.model_version = model_version
        self._streams.clear()
        self._latest.clear()
        self._since_fleet = 0

    def forget(self, sensor_ids: Sequence[str]) -> None:
        """Drop the detectors of sensors gone idle (the window assembler evicted them)."""
        for sensor_id in sensor_ids:
            self._streams.pop(sensor_id, None)
            self._latest.pop(sensor_id, None)

    def _observe(self, key: str, error: float) -> bool:
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = _Stream(self._prototype.clone(), error)
        detector = stream.detector
        if self._mirrored:  # ADWIN's estimation before this error, from the mirror of its window
            total, width = stream.window_total, stream.window_width
            before: float | None = total / width if width else 0.0
            if stream.restarts:
                stream.window_total, stream.window_width, stream.restarts = error, 1, False
            else:
                stream.window_total, stream.window_width = total + error, width + 1
        else:
            before = _kept_mean(detector) if self.rising_only else None
        detector.update(error)
        stream.count += 1
        stream.mean += (error - stream.mean) / min(stream.count, LEVEL_SPAN)
        if not detector.drift_detected:
            return False
        if isinstance(detector, drift.ADWIN):  # the mirrored kind (narrowed for the type checker)
            stream.window_total, stream.window_width, stream.restarts = detector.total, detector.width, True
        after = _kept_mean(detector)
        return not self.rising_only or before is None or after is None or after > before

    def update(self, sensor_id: str, ts: float, error: float) -> list[DriftEvent]:
        """Feed one window error; return the drift events it triggered (sensor and/or fleet)."""
        events = []
        if self._observe(sensor_id, error):
            events.append(self._event("sensor", sensor_id, ts))
        if not self.fleet:
            return events
        self._latest[sensor_id] = (ts, error)
        self._since_fleet += 1
        if self._since_fleet >= len(self._latest):
            self._since_fleet = 0
            fresh = [e for t, e in self._latest.values() if ts - t <= self.fleet_max_age_s]
            if len(fresh) < len(self._latest):
                self._latest = {s: v for s, v in self._latest.items() if ts - v[0] <= self.fleet_max_age_s}
            if self._observe(FLEET, statistics.median(fresh)):
                events.append(self._event("fleet", None, ts))
        return events

    def update_many(
        self, sensor_ids: Sequence[str], ts: np.ndarray, errors: np.ndarray
    ) -> list[tuple[int, DriftEvent]]:
        """:meth:`update` for windows in arrival order; returns ``(window index, event)`` pairs.

        >>> monitor = DriftMonitor("page_hinkley", fleet=False)
        >>> found = monitor.update_many(["s1"] * 600, np.arange(600.0), np.r_[np.full(300, 0.1), np.full(300, 5.0)])
        >>> [(i, e.scope) for i, e in found][:1]
        [(310, 'sensor')]
        """
        found: list[tuple[int, DriftEvent]] = []
        update = self.update
        for i, (sensor_id, stamp, error) in enumerate(zip(sensor_ids, ts.tolist(), errors.tolist(), strict=True)):
            events = update(sensor_id, stamp, error)
            if events:
                found += [(i, event) for event in events]
        return found

    def is_material(self, event: DriftEvent, threshold: float, fleet_alarmed: bool = False) -> DriftEvent:
        """``event`` with its ``recent_mean_ratio`` (over ``threshold``) and whether it is material.

        >>> monitor = DriftMonitor(min_ratio=1.0)
        >>> event = DriftEvent("fleet", None, 0.0, "adwin", "v1", 500, 0.2)
        >>> monitor.is_material(event, threshold=0.5).material, monitor.is_material(event, threshold=0.1).material
        (False, True)
        """
        ratio = event.recent_mean_error / max(float(threshold), 1e-12)
        return replace(
            event, recent_mean_ratio=round(ratio, 4), material=bool(ratio >= self.min_ratio or fleet_alarmed)
        )

    def _event(self, scope: Literal["sensor", "fleet"], sensor_id: str | None, ts: float) -> DriftEvent:
        stream = self._streams[sensor_id if sensor_id is not None else FLEET]
        return DriftEvent(scope, sensor_id, ts, self.detector_name, self.model_version, stream.count, stream.mean)
