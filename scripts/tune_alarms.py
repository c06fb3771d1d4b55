"""The alarm on-delay, chosen on tuning data only (simulator fleets of seeds 5 and 6; never an evaluation set).

An operator is told about *episodes* (:mod:`pipeline.alarms`), not windows. With the 5-reading score a
single outlying reading flags about five consecutive windows, and a false alarm is one such short run:
an on-delay (ISA-18.2: raise only when the condition has held for a while; here the k-of-n filter
with k = n, ``model.k_of_n``) removes those runs and delays every real alarm by k - 1 windows. For each
k this prints, on labelled simulator fleets fitted on their anomaly-free first 1,200 readings (the
detection tuning data of the README), the false alarm episodes per sensor-hour, the share of labelled
anomalies that got an alarm (recall of episodes) and the median delay, from the same AlarmTracker the
scorer runs (quiet 60 s, regime handling off).

The rule, fixed before measuring: the largest k whose pooled recall is at least k = 1's minus 0.05.

Usage::

    .venv/bin/python scripts/tune_alarms.py 1 2 3 5 8 10
"""

from __future__ import annotations

import sys

import numpy as np

from benchmarks.untuned import DetectorSettings
from models.grouping import anomaly_episodes
from models.threshold import AlarmFilter
from pipeline.alarms import AlarmTracker
from pipeline.config import load_config
from pipeline.simulator import FleetSpec, simulate_fleet

FIT_ROWS = 1200
QUIET_S = 60.0


def episodes(sensor: str, flags: np.ndarray, error: np.ndarray, end_rows: np.ndarray) -> list[tuple[int, int]]:
    """(first, last flagged row) of each alarm the tracker raises on one sensor's windows."""
    tracker = AlarmTracker(QUIET_S, ("x",), regime_policy="alarm", fleet_share=None)
    n = len(flags)
    events = tracker.update(
        [sensor] * n, end_rows.astype(float), flags, error, np.ones(n), np.ones((n, 1)), "v1", ["t"] * n,
        np.zeros(n, int), end_rows,
    )  # fmt: skip
    opened = {e["alarm_id"]: int(e["opened_at"]) for e in events if e["event"] == "open"}
    last = {e["alarm_id"]: int(e["last_anomalous_at"]) for e in events}
    return [(start, last[alarm]) for alarm, start in opened.items()]


def main(argv: list[str]) -> None:
    ks = [int(a) for a in argv] or [1, 2, 3, 5, 8, 10]
    settings = DetectorSettings.from_config(load_config())
    false_alarms = {k: 0 for k in ks}
    caught = {k: 0 for k in ks}
    delays: dict[int, list[int]] = {k: [] for k in ks}
    labelled, sensor_hours = 0, 0.0
    for seed in (5, 6):
        spec = FleetSpec(sensors=4, rows=3000, anomalies_per_sensor=4, normal_prefix_rows=FIT_ROWS, seed=seed)
        groups = [g for _, g in simulate_fleet(spec).groupby("sensor_id")]
        detector = settings.fit([g[list(spec.channels)].to_numpy()[:FIT_ROWS] for g in groups])
        for i, group in enumerate(groups):
            readings = group[list(spec.channels)].to_numpy()[FIT_ROWS:]
            truth = group["anomaly"].to_numpy()[FIT_ROWS:].astype(bool)
            detection = detector.predict(readings)
            spans = anomaly_episodes(truth)  # (first, last) rows
            labelled += len(spans)
            sensor_hours += len(readings) / 3600
            for k in ks:
                flags = AlarmFilter(k, k).apply(detection.exceeded)
                alarms = episodes(f"s{i}", flags, detection.error, detection.window_end_row)
                window = settings.window
                for start, stop in spans:
                    hits = [a for a, _ in alarms if start <= a <= stop + window]
                    caught[k] += bool(hits)
                    if hits:
                        delays[k].append(min(hits) - start)
                false_alarms[k] += sum(
                    not any(start <= b and a <= stop + window for start, stop in spans) for a, b in alarms
                )
    print(f"{labelled} labelled anomalies, {sensor_hours:.1f} sensor-hours (seeds 5, 6)")
    print(f"{'on-delay k':>10} {'false alarms / sensor-hour':>27} {'recall':>7} {'median delay (windows)':>23}")
    for k in ks:
        print(
            f"{k:>10} {false_alarms[k] / sensor_hours:>27.2f} {caught[k] / labelled:>7.2f} "
            f"{(np.median(delays[k]) if delays[k] else float('nan')):>23.0f}"
        )
    base = caught[ks[0]] / labelled
    chosen = max(k for k in ks if caught[k] / labelled >= base - 0.05)
    print(f"rule: the largest k with recall >= {base:.2f} - 0.05: k = {chosen}")


if __name__ == "__main__":
    main(sys.argv[1:])
