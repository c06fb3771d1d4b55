"""Calibration benchmark: does a threshold set for a nominal false-alarm rate keep it on new normal data?

For each held-out normal set a detector is fitted on normal data only, with the configuration's model
settings and its threshold at ``model.target_far`` (a per-window rate, k-of-n off), and the share of
windows over the threshold is measured on normal data it never saw:

- ``tep``: fit on TEP ``d00.dat`` (25 h), observe on ``d00_te.dat`` (48 h of another run);
- ``skab``: fit on the first 2,000 rows of SKAB's ``anomaly-free.csv``, observe on rows 5,001-9,405
  (rows 1-5,000 are the tuning data of the README's procedure, so none of them is observed here);
- ``simulator``: fit on the first 1,200 readings of 4 simulated sensors, observe on their next 1,800
  (a fresh stretch of the same machines: another seed would be other machines, which a fleet model
  has never been trained on);
- ``five_minute``: the simulator sampled every 5 minutes (every 300th reading), fit on the first 40 %
  of each sensor, observe on the rest.

Target: observed within [0.5x, 2x] of nominal on every set. No labels are involved anywhere.

The baseline, measured in the same run on the same windows: PCA Q (SPE) of each window's last reading
against its Jackson-Mudholkar limit at ``1 - target_far``, PCA fitted on the same normal data with the
fewest components explaining 90 % of its variance (as :mod:`benchmarks.ensemble`). It is the classical
static-limit monitor: where it misses the band too, the normal data after the fit differ from the fit's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.ensemble import VARIANCE_SHARE, Ensemble
from benchmarks.skab import CHANNELS as SKAB_CHANNELS
from benchmarks.tep import PcaMonitor, load_tep
from benchmarks.untuned import DetectorSettings
from models.preprocessing import components_for_variance
from models.threshold import RecentLevelJudge, TargetFarRule
from pipeline.simulator import FleetSpec, simulate_fleet

TARGET_BAND = (0.5, 2.0)
TUNING_ROWS = 5000  # rows 1-5,000 of SKAB's anomaly-free.csv are tuning data (README: tuning procedure)


@dataclass(frozen=True)
class NormalSet:
    """Normal segments to fit on and normal segments to observe the alarm rate on."""

    name: str
    fit: list[np.ndarray]
    observe: list[np.ndarray]
    description: str


@dataclass(frozen=True)
class CalibrationResult:
    name: str
    description: str
    nominal: float
    observed: float
    windows: int
    threshold: float
    method: str
    observed_recent_level: float | None = None  # the same windows judged by RecentLevelJudge
    observed_ensemble: float | None = None  # benchmarks.ensemble: LSTM-AE or PCA Q at half the rate each
    observed_pca_q: float | None = None  # the baseline: PCA Q alone at the nominal rate, same windows

    @property
    def ratio(self) -> float:
        return self.observed / self.nominal

    @property
    def within_target(self) -> bool:
        return TARGET_BAND[0] <= self.ratio <= TARGET_BAND[1]


def _fleet_segments(spec: FleetSpec) -> list[np.ndarray]:
    fleet = simulate_fleet(spec)
    return [group[list(spec.channels)].to_numpy() for _, group in fleet.groupby("sensor_id")]


def normal_sets(tep_dir: Path | None, skab_dir: Path | None) -> list[NormalSet]:
    """The held-out normal sets whose data are present (TEP and SKAB are skipped when their folder is absent)."""
    sets = []
    if tep_dir is not None and (tep_dir / "d00.dat").is_file():
        tep = load_tep(tep_dir)
        sets.append(NormalSet("tep", [tep.train], [tep.normal_test], "TEP d00.dat -> d00_te.dat"))
    free = skab_dir / "anomaly-free" / "anomaly-free.csv" if skab_dir is not None else None
    if free is not None and free.is_file():
        frame = pd.read_csv(free, sep=";", index_col="datetime", parse_dates=True).sort_index()
        values = frame[list(SKAB_CHANNELS)].to_numpy(dtype=float)
        observed = values[TUNING_ROWS:]
        sets.append(NormalSet("skab", [values[:2000]], [observed], "SKAB anomaly-free, rows 1-2,000 -> 5,001-9,405"))
    fleet = _fleet_segments(FleetSpec(sensors=4, rows=3000, anomalies_per_sensor=0, seed=101))
    sets.append(
        NormalSet(
            "simulator",
            [s[:1200] for s in fleet],
            [s[1200:] for s in fleet],
            "4 simulated sensors (seed 101), rows 1-1,200 -> next 1,800",
        )
    )
    slow = [s[::300] for s in _fleet_segments(FleetSpec(sensors=3, rows=2500 * 300, anomalies_per_sensor=0, seed=7))]
    split = [int(len(s) * 0.4) for s in slow]
    sets.append(
        NormalSet(
            "five_minute",
            [s[:k] for s, k in zip(slow, split, strict=True)],
            [s[k:] for s, k in zip(slow, split, strict=True)],
            "simulator sampled every 5 min, first 40 % -> rest",
        )
    )
    return sets


def run_calibration(
    sets: Sequence[NormalSet],
    settings: DetectorSettings,
    on_result: Callable[[CalibrationResult], None] | None = None,
) -> list[CalibrationResult]:
    """Fit on each set's normal data, then measure the alarm rate on its held-out normal data."""
    results = []
    target_far = settings.target_far
    for normal in sets:
        detector = settings.fit(normal.fit)
        assert detector.threshold is not None
        assert detector.calibration_errors is not None
        detections = [detector.predict(segment) for segment in normal.observe]
        # the share of windows over the threshold, before any k-of-n filter
        exceeded = np.concatenate([detection.exceeded for detection in detections])
        observed, windows = float(exceeded.mean()), int(exceeded.size)
        judge = RecentLevelJudge.calibrate(detector.calibration_errors, TargetFarRule(target_far))
        recent_flags = [judge.run(detection.error, detector.calibration_errors) for detection in detections]
        ensemble = Ensemble.fit(detector, normal.fit, target_far)
        ensemble_flags = np.concatenate(
            [ensemble.window_flags(s, d) for s, d in zip(normal.observe, detections, strict=True)]
        )
        pooled = np.concatenate(normal.fit)
        pca = PcaMonitor.fit(pooled, components_for_variance(pooled, VARIANCE_SHARE), confidence=1.0 - target_far)
        pca_flags = np.concatenate(
            [
                pca.statistics(s)[1][d.window_end_row] > pca.q_limit
                for s, d in zip(normal.observe, detections, strict=True)
            ]
        )
        result = CalibrationResult(
            normal.name,
            normal.description,
            target_far,
            observed,
            windows,
            detector.threshold.value,
            str(detector.threshold.params.get("method", detector.threshold.rule)),
            float(np.concatenate(recent_flags).mean()),
            float(ensemble_flags.mean()),
            float(pca_flags.mean()),
        )
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def format_table(results: Sequence[CalibrationResult], seconds: float) -> str:
    lines = [
        f"calibration: nominal vs observed per-window alarm rate on held-out normal data ({seconds:.0f} s)",
        "",
        f"{'set':<13}{'nominal':>9}{'observed':>10}{'ratio':>8}{'in [0.5x, 2x]':>15}{'windows':>9}"
        f"{'threshold':>11}  {'rule':<9}{'recent level':>14}{'ensemble':>10}{'PCA Q':>8}  data",
    ]
    for r in results:
        lines.append(
            f"{r.name:<13}{r.nominal:>9.2%}{r.observed:>10.2%}{r.ratio:>8.2f}{'yes' if r.within_target else 'no':>15}"
            f"{r.windows:>9,}{r.threshold:>11.4f}  {r.method:<9}"
            f"{(r.observed_recent_level or 0.0):>14.2%}{(r.observed_ensemble or 0.0):>10.2%}"
            f"{(r.observed_pca_q or 0.0):>8.2%}  {r.description}"
        )
    return "\n".join(lines)


def headline(results: Sequence[CalibrationResult]) -> dict[str, Any]:
    out: dict[str, Any] = {"nominal_far": results[0].nominal if results else None}
    for r in results:
        out[f"observed_far_{r.name}"] = round(r.observed, 5)
        out[f"ratio_{r.name}"] = round(r.ratio, 3)
        if r.observed_recent_level is not None:
            out[f"observed_far_recent_level_{r.name}"] = round(r.observed_recent_level, 5)
        if r.observed_ensemble is not None:
            out[f"observed_far_ensemble_{r.name}"] = round(r.observed_ensemble, 5)
        if r.observed_pca_q is not None:
            out[f"observed_far_pca_q_{r.name}"] = round(r.observed_pca_q, 5)
    out["sets_within_target"] = sum(r.within_target for r in results)
    low, high = TARGET_BAND
    out["pca_q_sets_within_target"] = sum(
        r.observed_pca_q is not None and low <= r.observed_pca_q / r.nominal <= high for r in results
    )
    out["sets"] = len(results)
    return out


def timed_run(**kwargs: Any) -> tuple[list[CalibrationResult], float]:
    started = time.monotonic()
    results = run_calibration(**kwargs)
    return results, time.monotonic() - started
