"""When drift asks for retraining: the one policy of the scheduler, the demo and the drift benchmark.

- **Which events.** A drift event of scope ``fleet`` (most sensors' errors rising together: a new
  operating point the model has not seen) asks for a run; with ``retrain.on_drift_scope = "any"``
  a single sensor's drift does too. A sensor's own drift is otherwise left to its alarms: retraining
  the fleet's model on it would teach every sensor what may be one sensor's fault.
- **Only material drift** (the event's ``material``, set by the scorer: the alarms feel it, see
  ``drift.min_ratio`` and :class:`pipeline.drift.DriftEvent`). An event without the flag (an older
  scorer's) counts as material.
- **When the run starts.** ``debounce_s`` after the latest event, and at most ``debounce_max_s`` after
  the first: while the error keeps rising (a gradual drift, a ramp) the plant has not settled, and a
  run that started at once would learn a state the plant is leaving; but a drift that never settles
  still gets its run. Events while a run is pending move it within that bound; events while one runs
  join it (the scheduler's lock, the benchmark's busy worker).

Times are seconds on whatever clock the caller keeps: wall time for the scheduler, plant time (the
stream's timestamps) for the drift benchmark, which replays hours of plant in minutes.

>>> policy = DriftRetrainPolicy(debounce_s=60, debounce_max_s=300)
>>> policy.wants_run({"type": "drift", "scope": "fleet"}), policy.wants_run({"type": "drift", "scope": "sensor"})
(True, False)
>>> policy.wants_run({"type": "drift", "scope": "fleet", "material": False})  # the alarms do not feel it
False
>>> policy.run_at(first_event=0, latest_event=0), policy.run_at(first_event=0, latest_event=200)
(60.0, 260.0)
>>> policy.run_at(first_event=0, latest_event=290)  # still rising after 290 s: no later than 300 s
300.0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.config import RetrainSettings


@dataclass(frozen=True)
class DriftRetrainPolicy:
    """Which drift events ask for a retraining run, and when that run starts."""

    debounce_s: float
    debounce_max_s: float
    scopes: tuple[str, ...] = ("fleet",)

    @classmethod
    def from_settings(cls, settings: RetrainSettings) -> DriftRetrainPolicy:
        scopes = ("fleet", "sensor") if settings.on_drift_scope == "any" else ("fleet",)
        return cls(settings.debounce_s, settings.debounce_max_s, scopes)

    def wants_run(self, event: Any) -> bool:
        """True for a drift event (a dict as the loop publishes it) that should start or join a run."""
        if not (isinstance(event, dict) and event.get("type") == "drift" and event.get("scope") in self.scopes):
            return False
        return bool(event.get("material", True))

    def run_at(self, first_event: float, latest_event: float) -> float:
        """When the run asked for by events from ``first_event`` to ``latest_event`` starts."""
        return float(min(latest_event + self.debounce_s, first_event + max(self.debounce_max_s, self.debounce_s)))
