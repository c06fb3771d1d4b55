"""``alarms.near_ratio``, chosen on tuning data only (simulator fleets of seeds 5 and 6; never an evaluation set).

A regime-change notice opens when an alarm opening would leave more than ``alarms.fleet_share`` of the
fleet alarmed (:mod:`pipeline.alarms`). On a fleet of four that takes three alarms, so the first two
sensors to cross their thresholds in a change of operating point were always sent. With
``near_ratio`` a sensor whose latest window came within that share of its threshold counts as
alarmed too. The cost: on a fleet without any drift, coincidences open notices that keep real
anomalies off the alerts. For each ratio this prints, from the scorer's own AlarmTracker (policy
``suppress``, quiet 60 s) fed the whole fleet's windows in time order:

- fleets with labelled anomalies and no drift (fit on the anomaly-free first 1,200 readings, scored
  on the next 1,800): notices opened, alarms sent, the share of labelled anomalies that got one;
- the same fleets with a benign change of operating point at reading 2,000 (abrupt, and gradual over
  600 readings; the model is not retrained here): alarms sent in the 10 minutes after it.

The rule, fixed before measuring: the smallest ratio whose recall on the fleets without drift is at
least that of no ratio (``none``) minus 0.02 and which opens no more notices there than ``none`` + 1.

Usage::

    .venv/bin/python scripts/tune_fleet_alarms.py none 0.6 0.7 0.8 0.9
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from benchmarks.untuned import DetectorSettings
from models.detector import AnomalyDetector
from models.grouping import anomaly_episodes
from pipeline.alarms import AlarmTracker
from pipeline.config import load_config
from pipeline.simulator import DriftSpec, FleetSpec, simulate_fleet

FIT_ROWS = 1200
QUIET_S = 60.0
DRIFT_ROW = 2000
BATCH = 200  # windows per tracker update, as micro-batches feed it


Row = tuple[float, str, bool, float, float, np.ndarray, int]  # end, sensor, flagged, error, threshold, channels, row


def fleet_windows(detector: AnomalyDetector, fleet: pd.DataFrame, channels: tuple[str, ...]):
    """The fleet's scored windows after ``FIT_ROWS`` in time order, and per sensor its labelled spans."""
    rows: list[Row] = []
    spans: dict[str, list[tuple[int, int]]] = {}
    for sensor, group in fleet.groupby("sensor_id"):
        detection = detector.predict(group[list(channels)].to_numpy()[FIT_ROWS:])
        truth = group["anomaly"].to_numpy()[FIT_ROWS:].astype(bool)
        spans[str(sensor)] = [(a + FIT_ROWS, b + FIT_ROWS) for a, b in anomaly_episodes(truth)]
        for j, end in enumerate(detection.window_end_row.tolist()):
            row = end + FIT_ROWS
            rows.append(
                (float(row), str(sensor), bool(detection.exceeded[j]), float(detection.error[j]),
                 float(detection.threshold[j]), detection.channel_error[j], row)
            )  # fmt: skip
    rows.sort(key=lambda r: (r[0], r[1]))
    return rows, spans


def fleet_events(rows: list[Row], channels: tuple[str, ...], near: float | None) -> list[dict]:
    """Every alarm and notice event the scorer's tracker raises on ``rows``, fed in micro-batches."""
    tracker = AlarmTracker(QUIET_S, channels, regime_policy="suppress", fleet_share=0.5, near_ratio=near)
    events = []
    for lo in range(0, len(rows), BATCH):
        part = rows[lo : lo + BATCH]
        events += tracker.update(
            [r[1] for r in part], np.array([r[0] for r in part]), np.array([r[2] for r in part]),
            np.array([r[3] for r in part]), np.array([r[4] for r in part]), np.stack([r[5] for r in part]),
            "v1", ["t"] * len(part), np.zeros(len(part), int), np.array([r[6] for r in part]),
        )  # fmt: skip
    return events


def sent_opens(events: list[dict]) -> list[dict]:
    seen, out = set(), []
    for e in events:
        if e["type"] == "alarm" and e["event"] == "open" and not e["suppressed"] and e["alarm_id"] not in seen:
            seen.add(e["alarm_id"])
            out.append(e)
    return out


def main(argv: list[str]) -> None:
    nears = [None if a == "none" else float(a) for a in argv] or [None, 0.6, 0.7, 0.8, 0.9]
    settings = DetectorSettings.from_config(load_config())
    figures = {near: {"notices": 0, "sent": 0, "caught": 0, "drift_sent": 0} for near in nears}
    labelled = 0
    for seed in (5, 6):
        spec = FleetSpec(sensors=4, rows=3000, anomalies_per_sensor=4, normal_prefix_rows=FIT_ROWS, seed=seed)
        fleet = simulate_fleet(spec)
        channels = tuple(spec.channels)
        detector = settings.fit([g[list(channels)].to_numpy()[:FIT_ROWS] for _, g in fleet.groupby("sensor_id")])
        windows, spans = fleet_windows(detector, fleet, channels)
        drifted = [
            fleet_windows(detector, simulate_fleet(
                FleetSpec(sensors=4, rows=3000, anomalies_per_sensor=0, seed=seed,
                          drift=DriftSpec(at_row=DRIFT_ROW, kind=kind, ramp_rows=600))  # type: ignore[arg-type]
            ), channels)[0]
            for kind in ("abrupt", "gradual")
        ]  # fmt: skip
        for near in nears:
            events = fleet_events(windows, channels, near)
            opens = sent_opens(events)
            f = figures[near]
            f["notices"] += sum(e["type"] == "regime_change" and e["event"] == "open" for e in events)
            f["sent"] += len(opens)
            for sensor, sensor_spans in spans.items():
                starts = [e["opened_at"] for e in opens if e["sensor_id"] == sensor]
                f["caught"] += sum(any(a <= s <= b + settings.window for s in starts) for a, b in sensor_spans)
            for drifted_windows in drifted:
                events = fleet_events(drifted_windows, channels, near)
                f["drift_sent"] += sum(DRIFT_ROW <= e["opened_at"] < DRIFT_ROW + 600 for e in sent_opens(events))
        labelled += sum(len(s) for s in spans.values())
    print(f"{labelled} labelled anomalies on 2 fleets without drift (seeds 5, 6); 4 benign drifts (2 seeds x 2 kinds)")
    header = ("near_ratio", 10), ("notices (no drift)", 19), ("alarms sent", 12), ("recall", 7), ("sent per drift", 15)
    print(" ".join(f"{name:>{width}}" for name, width in header))
    for near in nears:
        f = figures[near]
        print(
            f"{near!s:>10} {f['notices']:>19} {f['sent']:>12} {f['caught'] / labelled:>7.2f} "
            f"{f['drift_sent'] / 4:>15.2f}"
        )
    base = figures[nears[0]]
    ok = [
        n
        for n in nears
        if n is not None
        and figures[n]["caught"] >= base["caught"] - 0.02 * labelled
        and figures[n]["notices"] <= base["notices"] + 1
    ]
    print(f"rule: the smallest ratio with recall >= none's - 0.02 and notices <= none's + 1: {min(ok) if ok else None}")


if __name__ == "__main__":
    main(sys.argv[1:])
