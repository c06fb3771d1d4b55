"""Detection metrics as SKAB defines them: point-wise F1 / FAR / MAR and NAB changepoint scores.

>>> import numpy as np
>>> m = point_metrics(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 0]))
>>> (m.f1, m.far, m.mar)
(0.5, 50.0, 50.0)
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from models.grouping import anomaly_episodes as anomaly_episodes  # re-exported: the harnesses use it

# NAB profiles as (A_tp, A_fp, A_fn), SKAB's table of coefficients.
NAB_PROFILES: dict[str, tuple[float, float, float]] = {
    "standard": (1.0, -0.11, -1.0),
    "low_fp": (1.0, -0.22, -1.0),
    "low_fn": (1.0, -0.11, -2.0),
}


@dataclass(frozen=True)
class PointMetrics:
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def f1(self) -> float:
        """TP / (TP + (FP + FN) / 2)."""
        denominator = self.tp + (self.fp + self.fn) / 2
        return self.tp / denominator if denominator else 0.0

    @property
    def far(self) -> float:
        """False alarm rate FP / (FP + TN), in %."""
        return 100.0 * self.fp / (self.fp + self.tn) if self.fp + self.tn else 0.0

    @property
    def mar(self) -> float:
        """Missing alarm rate FN / (FN + TP), in %."""
        return 100.0 * self.fn / (self.fn + self.tp) if self.fn + self.tp else 0.0


def point_metrics(truth: np.ndarray, predicted: np.ndarray) -> PointMetrics:
    truth, predicted = np.asarray(truth).astype(bool), np.asarray(predicted).astype(bool)
    return PointMetrics(
        tp=int((truth & predicted).sum()),
        fp=int((~truth & predicted).sum()),
        tn=int((~truth & ~predicted).sum()),
        fn=int((truth & ~predicted).sum()),
    )


def alarms_from_flags(flags: pd.Series) -> pd.Series:
    """Changepoint alarms: 1 where the outlier flags flip (0->1 or 1->0), else 0; same index."""
    values = flags.astype(int).to_numpy()
    flips = np.zeros(len(values), dtype=int)
    flips[1:] = (np.diff(values) != 0).astype(int)
    return pd.Series(flips, index=flags.index)


def _nab_scale(
    window_start: pd.Timestamp, detected: pd.Timestamp, window_end: pd.Timestamp, a_tp: float, a_fp: float
) -> float:
    """SKAB's 'improved' NAB scale: A_tp at the window start falling by a tanh to A_fp at its end."""
    position = (detected - window_start) / (window_end - window_start)  # in [0, 1]
    x = -np.pi / 2 + min(position, 1.0) * np.pi
    return float((a_tp - a_fp) / 2 * -np.tanh(x) / np.tanh(np.pi / 2) + (a_tp - a_fp) / 2 + a_fp)


def _detection_windows(changepoints: pd.Series, width: pd.Timedelta) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """Right-side windows ``[cp, cp + width]``; a window overlapping the next is cut at the previous end."""
    windows: list[list[pd.Timestamp]] = [[t, t + width] for t in changepoints[changepoints == 1].index]
    for previous, current in itertools.pairwise(windows):
        if previous[1] >= current[0]:
            current[0] = previous[1]
    return [(start, end) for start, end in windows]


def nab_counts(
    changepoints: pd.Series, alarms: pd.Series, width: pd.Timedelta, profile: str
) -> tuple[float, float, float]:
    """(score, null score, perfect score) of one series for one profile (summed over series by caller)."""
    a_tp, a_fp, a_fn = NAB_PROFILES[profile]
    windows = _detection_windows(changepoints, width)
    alarm_times = alarms[alarms == 1].index.sort_values()
    score = 0.0
    inside = np.zeros(len(alarm_times), dtype=bool)
    for start, end in windows:
        hit = (alarm_times >= start) & (alarm_times <= end)
        inside |= hit
        if hit.any():
            score += _nab_scale(start, alarm_times[hit][0], end, a_tp, a_fp)
        else:
            score += a_fn
    score += a_fp * int((~inside).sum())
    return score, len(windows) * a_fn, len(windows) * a_tp


def nab_scores(
    changepoints: Sequence[pd.Series], alarms: Sequence[pd.Series], width: pd.Timedelta = pd.Timedelta("60s")
) -> dict[str, float]:
    """Normalised NAB score per profile over several series: null detector 0, perfect detector 100."""
    results = {}
    for profile in NAB_PROFILES:
        totals = np.zeros(3)
        for truth, predicted in zip(changepoints, alarms, strict=True):
            totals += nab_counts(truth, predicted, width, profile)
        score, null, perfect = totals
        results[profile] = float(100.0 * (score - null) / (perfect - null)) if perfect != null else 0.0
    return results
