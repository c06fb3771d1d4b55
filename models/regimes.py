"""Operating regimes and a threshold for each: after the plant moved to a new operating point, one model
covers the old and the new regime but reconstructs them unequally well (in the drift benchmark the new
regime's errors were several times the old one's), so one threshold calibrated on both is too loose for
one and too tight for the other.

A :class:`Regime` describes where a regime's windows sit: a Gaussian over the window *levels* (each
channel's mean within the window, in the scaler's units), with its own calibrated threshold. A window
is judged against the threshold of the regime most likely to have produced it (quadratic discriminant,
equal priors), unless it lies outside every regime (squared Mahalanobis distance above the chi-square
quantile :data:`OUTSIDE_QUANTILE` in each): then the regime with the nearest centre judges it. The
discriminant alone sent such windows to the widest regime: after a first stage fitted on the first
minutes of a ramp, the ramp's later windows, beyond the narrow new regime, went to the old one and were
judged by its far lower threshold (drift benchmark, gradual drift, seed 23: ratios of 40-250 on two of
four sensors, which then stood out of the fleet's regime change and were sent). The level of a window
uses its own readings only, so the choice stays causal.

:func:`fit_regimes` builds the set at retraining: the regimes the current model knew are refitted on the
replay buffer's windows assigned to them (those the buffer no longer holds are dropped), and the recent
windows either join the nearest one or, when their centre lies outside it (Mahalanobis distance above
``separation``), become a regime of their own.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> old, new = rng.normal(0, 1, (500, 2)), rng.normal(6, 1, (500, 2))
>>> regimes = fit_regimes([], old, new)
>>> len(regimes)
2
>>> regimes.assign(np.array([[0.2, -0.1], [5.8, 6.3]])).tolist()
[0, 1]
>>> narrow = fit_regimes([], old, rng.normal(6, 0.1, (500, 2)))  # a regime fitted on a ramp's first minutes
>>> narrow.assign(np.array([[6.0, 6.0], [7.0, 7.0], [2.0, 2.0]])).tolist()  # beyond it: still its window
[1, 1, 0]
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy.stats import chi2

from models.threshold import Threshold, ThresholdRule

# Shrink each covariance towards its mean variance by this much: keeps it invertible when a channel is
# constant (relative channels have level 0 in every window) or when few windows describe the regime.
SHRINKAGE = 0.1
#: A window lies outside a regime when its squared Mahalanobis distance exceeds this quantile of the
#: chi-square law with one degree of freedom per channel (what a Gaussian regime gives 0.1 % of its windows).
OUTSIDE_QUANTILE = 0.999


def window_levels(scaled_windows: np.ndarray) -> np.ndarray:
    """Each channel's mean within each window ``[n, window, channels] -> [n, channels]``."""
    return np.asarray(np.asarray(scaled_windows, dtype=np.float64).mean(axis=1))


@dataclass(frozen=True)
class Regime:
    """One operating regime: a Gaussian over window levels and the threshold calibrated on its windows."""

    centre: np.ndarray  # [channels]
    covariance: np.ndarray  # [channels, channels], shrunk
    threshold: Threshold | None = None
    windows: int = 0  # how many windows described it

    @classmethod
    def fit(cls, levels: np.ndarray) -> Regime:
        levels = np.asarray(levels, dtype=np.float64)
        if len(levels) < 2:
            raise ValueError("need at least two windows to describe a regime")
        covariance = np.atleast_2d(np.cov(levels.T))
        ridge = max(float(np.trace(covariance)) / len(covariance), 1e-6)
        covariance = (1 - SHRINKAGE) * covariance + SHRINKAGE * ridge * np.eye(len(covariance))
        return cls(levels.mean(axis=0), covariance, None, len(levels))

    def mahalanobis(self, levels: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of each row of ``levels`` from the centre."""
        offset = np.asarray(levels, dtype=np.float64) - self.centre
        return np.asarray(np.einsum("ni,ni->n", offset, np.linalg.solve(self.covariance, offset.T).T))

    def to_dict(self) -> dict[str, Any]:
        return {
            "centre": self.centre.tolist(),
            "covariance": self.covariance.tolist(),
            "threshold": self.threshold.to_dict() if self.threshold else None,
            "windows": self.windows,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Regime:
        centre = np.asarray(values["centre"], dtype=np.float64)
        covariance = np.asarray(values["covariance"], dtype=np.float64)
        if centre.ndim != 1 or covariance.shape != (len(centre), len(centre)):
            raise ValueError(f"regime covariance of shape {covariance.shape} does not fit a centre of {len(centre)}")
        if (
            not (np.isfinite(centre).all() and np.isfinite(covariance).all())
            or np.linalg.eigvalsh(covariance).min() <= 0
        ):
            raise ValueError("regime centre and covariance must be finite, the covariance positive definite")
        threshold = Threshold.from_dict(values["threshold"]) if values.get("threshold") else None
        return cls(centre, covariance, threshold, int(values.get("windows", 0)))


@dataclass(frozen=True)
class Regimes:
    """The regimes a model serves, each with its threshold; windows are judged by their likeliest regime."""

    regimes: tuple[Regime, ...]

    def __len__(self) -> int:
        return len(self.regimes)

    def assign(self, levels: np.ndarray) -> np.ndarray:
        """Index of the likeliest regime for each row of ``levels`` ``[n, channels]``."""
        if len(levels) == 0:
            return np.empty(0, dtype=np.int64)
        distances = np.stack([r.mahalanobis(levels) for r in self.regimes], axis=1)  # [n, regimes], squared
        logdets = np.array([np.linalg.slogdet(r.covariance)[1] for r in self.regimes])
        choice = np.asarray((-0.5 * (distances + logdets)).argmax(axis=1))  # Gaussian log density, up to a constant
        outside = (distances > chi2.ppf(OUTSIDE_QUANTILE, df=levels.shape[1])).all(axis=1)
        if outside.any():  # outside every regime: the nearest centre, not the widest spread
            centres = np.stack([r.centre for r in self.regimes])  # [regimes, channels]
            offsets = np.asarray(levels, dtype=np.float64)[outside, None, :] - centres[None]
            choice[outside] = np.einsum("nrc,nrc->nr", offsets, offsets).argmin(axis=1)
        return choice

    def thresholds(self, levels: np.ndarray) -> np.ndarray:
        """The threshold each window is judged against ``[n]`` (every regime must be calibrated)."""
        values = np.array([_calibrated(r).value for r in self.regimes])
        return np.asarray(values[self.assign(levels)])

    def calibrate(
        self, levels: np.ndarray, errors: np.ndarray, rule: ThresholdRule, fallback: Threshold, min_windows: int = 100
    ) -> Regimes:
        """Fit ``rule`` on the ``errors`` of the held-out normal windows assigned to each regime.

        A regime with fewer than ``min_windows`` of them takes ``fallback`` (too few for a tail quantile).
        """
        assigned = self.assign(levels)
        calibrated = []
        for i, regime in enumerate(self.regimes):
            mine = errors[assigned == i]
            threshold = rule.fit(mine) if len(mine) >= min_windows else fallback
            calibrated.append(replace(regime, threshold=threshold))
        return Regimes(tuple(calibrated))

    def carry_over(
        self,
        levels: np.ndarray,
        previous_thresholds: np.ndarray,
        previous_errors: np.ndarray,
        errors: np.ndarray,
        relearned: Collection[int] = (),
        min_windows: int = 100,
    ) -> Regimes:
        """Regimes retraining did not relearn keep the threshold the previous model judged them by,
        scaled by how the median error of their held-out windows moved (new / previous model).

        ``levels``, ``previous_thresholds``, ``previous_errors`` and ``errors`` describe the same held-out
        windows of known regimes (the replay buffer's); ``relearned``: indices of regimes the recent
        windows fall in, which keep their fresh calibration. A regime with fewer than ``min_windows`` of
        the windows keeps it too. Why: a tail quantile re-estimated from a few hundred overlapping
        windows moved the old regime's threshold by up to 2x when the model's errors there had not moved
        (old-regime F1 -17 % .. +9 % in the drift benchmark); the median error ratio is a steady
        estimate of what the model changed.

        >>> import numpy as np
        >>> from models.threshold import Threshold
        >>> old = Regime.fit(np.random.default_rng(0).normal(0, 1, (300, 2)))
        >>> regimes = Regimes((replace(old, threshold=Threshold(0.5, "quantile")),))
        >>> carried = regimes.carry_over(np.zeros((200, 2)), np.full(200, 0.2), np.full(200, 0.1), np.full(200, 0.12))
        >>> round(carried.regimes[0].threshold.value, 3), carried.regimes[0].threshold.params["carried_from"]
        (0.24, 0.2)
        """
        assigned = self.assign(levels)
        regimes = list(self.regimes)
        for i, regime in enumerate(regimes):
            mine = assigned == i
            if i in relearned or mine.sum() < min_windows:
                continue
            ratio = float(np.median(errors[mine]) / np.median(previous_errors[mine]))
            previous = float(np.median(previous_thresholds[mine]))
            calibrated = _calibrated(regime)
            params = {**calibrated.params, "carried_from": previous, "error_ratio": ratio}
            carried = Threshold(previous * ratio, calibrated.rule, params, int(mine.sum()))
            regimes[i] = replace(regime, threshold=carried)
        return Regimes(tuple(regimes))

    def with_margin(self, margin: float) -> Regimes:
        return Regimes(tuple(replace(r, threshold=_calibrated(r).with_margin(margin)) for r in self.regimes))

    def to_list(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.regimes]

    @classmethod
    def from_list(cls, values: Sequence[dict[str, Any]], n_channels: int) -> Regimes:
        regimes = tuple(Regime.from_dict(v) for v in values)
        if not regimes or any(len(r.centre) != n_channels or r.threshold is None for r in regimes):
            raise ValueError(f"regimes must be calibrated and describe {n_channels} channels")
        return cls(regimes)


def _calibrated(regime: Regime) -> Threshold:
    if regime.threshold is None:
        raise ValueError("regime has no calibrated threshold: call Regimes.calibrate() first")
    return regime.threshold


def fit_regimes(
    known: Sequence[Regime],
    replay_levels: np.ndarray,
    recent_levels: np.ndarray,
    *,
    separation: float = 3.0,
    min_windows: int = 100,
    max_regimes: int = 8,
) -> Regimes:
    """Regimes after retraining, from the current model's ``known`` regimes and the windows trained on.

    ``replay_levels`` (the replay buffer's windows) refit the known regimes they are assigned to;
    a known regime left with fewer than ``min_windows`` of them is dropped (the buffer forgot it), and
    with no known regime the whole buffer is one. ``recent_levels`` become a new regime when their centre
    lies farther than ``separation`` (Mahalanobis, in the nearest regime's own spread) from every regime,
    else they join the nearest one. At most ``max_regimes`` are kept, the best described first.
    Thresholds are left for :meth:`Regimes.calibrate`.
    """
    groups: list[np.ndarray] = []
    if known and len(replay_levels):
        assigned = Regimes(tuple(known)).assign(replay_levels)
        groups = [replay_levels[assigned == i] for i in range(len(known))]
    elif len(replay_levels):
        groups = [replay_levels]
    groups = [g for g in groups if len(g) >= min_windows]
    regimes = [Regime.fit(g) for g in groups]
    if len(recent_levels) >= 2:
        centre = np.asarray(recent_levels, dtype=np.float64).mean(axis=0, keepdims=True)
        distances = [float(np.sqrt(r.mahalanobis(centre)[0])) for r in regimes]
        if not regimes or min(distances) > separation:
            regimes.append(Regime.fit(recent_levels))
        else:
            nearest = int(np.argmin(distances))
            regimes[nearest] = Regime.fit(np.concatenate([groups[nearest], recent_levels]))
    if not regimes:
        raise ValueError("no windows to describe a regime")
    regimes.sort(key=lambda r: -r.windows)
    return Regimes(tuple(regimes[:max_regimes]))
