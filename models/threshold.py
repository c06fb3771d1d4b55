"""Thresholds on reconstruction error, calibrated on errors of normal (validation) windows.

Three rules share one protocol, ``fit(errors) -> Threshold``:

- :class:`QuantileRule`: the ``q`` quantile of normal errors (at most ``1 - q`` of them lie above);
- :class:`MeanStdRule`: ``mean + k * std``;
- :class:`PeaksOverThresholdRule`: extreme-value rule (SPOT, Siffer et al. 2017): a generalized Pareto
  distribution is fitted to the excesses over a high initial quantile and the threshold is set where
  the tail probability is ``risk``.

:class:`AlarmFilter` adds alarm hygiene: raise only when ``k`` of the last ``n`` windows are over.

>>> import numpy as np
>>> errors = np.random.default_rng(0).exponential(1.0, 5000)
>>> round(QuantileRule(0.99).fit(errors).value, 2)
4.72
>>> AlarmFilter(k=2, n=3).apply(np.array([1, 0, 0, 1, 1, 0, 1])).tolist()
[False, False, False, False, True, True, True]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from scipy import stats

from models.grouping import runs_by_key


@dataclass(frozen=True)
class Threshold:
    """A calibrated threshold: its value and the rule (name and parameters) that produced it."""

    value: float
    rule: str
    params: dict[str, Any] = field(default_factory=dict)
    calibration_size: int = 0

    def with_margin(self, margin: float, param: str = "margin") -> Threshold:
        """The same threshold multiplied by a safety ``margin``, recorded in the params as ``param``
        (``"short_stretch_margin"`` for :func:`short_stretch_margin`'s, kept apart from the user's margin,
        which retraining carries)."""
        if margin <= 0:
            raise ValueError(f"threshold margin must be positive, got {margin}")
        if margin == 1.0:
            return self
        return Threshold(self.value * margin, self.rule, {**self.params, param: margin}, self.calibration_size)

    def exceeded(self, errors: np.ndarray) -> np.ndarray:
        return np.asarray(errors) > self.value

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Threshold:
        value = float(values["value"])
        if not np.isfinite(value):
            raise ValueError("threshold value must be finite")
        return cls(value, str(values["rule"]), dict(values.get("params", {})), int(values.get("calibration_size", 0)))


def short_stretch_margin(segment_lengths: Sequence[int], full_readings: int) -> float:
    """How much a threshold calibrated on a short stretch of normal data is widened: ``sqrt(full / n)``, at least 1.

    A stretch of few readings holds little of the normal variation to come (a shift, a load cycle,
    another run), and an upper quantile of its errors promises a false-alarm rate it cannot keep; the
    margin falls as 1 / sqrt(readings), as a standard error does, and vanishes at ``full_readings``
    (0: never widen). ``n`` is the mean of ``segment_lengths``, the training segments' lengths in readings.
    Chosen on tuning data only (README: tuning procedure).

    >>> short_stretch_margin([400], 1000), short_stretch_margin([900, 1100], 1000), short_stretch_margin([5000], 1000)
    (1.5811388300841898, 1.0, 1.0)
    >>> short_stretch_margin([400], 0)
    1.0
    """
    n = float(np.mean(segment_lengths))
    if full_readings <= 0 or n >= full_readings:
        return 1.0
    return float(np.sqrt(full_readings / max(n, 1.0)))


@runtime_checkable
class ThresholdRule(Protocol):
    @property
    def name(self) -> str: ...

    def fit(self, errors: np.ndarray) -> Threshold: ...


def _clean(errors: np.ndarray) -> np.ndarray:
    errors = np.asarray(errors, dtype=np.float64).ravel()
    errors = errors[np.isfinite(errors)]
    if errors.size < 2:
        raise ValueError("need at least two finite calibration errors to fit a threshold")
    return errors


@dataclass(frozen=True)
class QuantileRule:
    q: float = 0.99
    name: str = "quantile"

    def __post_init__(self) -> None:
        if not 0.0 < self.q < 1.0:
            raise ValueError(f"quantile q must be in (0, 1), got {self.q}")

    def fit(self, errors: np.ndarray) -> Threshold:
        errors = _clean(errors)
        # "higher": a sample value, so at most 1 - q of the calibration errors lie above it
        return Threshold(float(np.quantile(errors, self.q, method="higher")), self.name, {"q": self.q}, errors.size)


@dataclass(frozen=True)
class MeanStdRule:
    k: float = 3.0
    name: str = "mean_std"

    def fit(self, errors: np.ndarray) -> Threshold:
        errors = _clean(errors)
        return Threshold(float(errors.mean() + self.k * errors.std()), self.name, {"k": self.k}, errors.size)


def _gpd_level(initial: float, shape: float, scale: float, ratio: float) -> float:
    """The level a generalized Pareto tail over ``initial`` leaves ``ratio`` of its excesses above (0: exponential)."""
    if abs(shape) < 1e-6:
        return float(initial - scale * np.log(ratio))
    return float(initial + scale / shape * (ratio ** (-shape) - 1.0))


@dataclass(frozen=True)
class PeaksOverThresholdRule:
    """SPOT: GPD fitted to excesses over the ``initial_quantile``; threshold at tail probability ``risk``."""

    risk: float = 1e-3
    initial_quantile: float = 0.98
    name: str = "pot"

    def __post_init__(self) -> None:
        if not 0.0 < self.risk < 1.0 - self.initial_quantile:
            raise ValueError("risk must be in (0, 1 - initial_quantile)")

    def fit(self, errors: np.ndarray) -> Threshold:
        errors = _clean(errors)
        initial = float(np.quantile(errors, self.initial_quantile))
        excesses = errors[errors > initial] - initial
        params = {"risk": self.risk, "initial_quantile": self.initial_quantile}
        if excesses.size < 5 or np.ptp(excesses) == 0:
            # Too few peaks to fit a tail: fall back to the initial quantile, and say so in the params.
            return Threshold(initial, self.name, {**params, "fallback": 1.0}, errors.size)
        shape, _, scale = stats.genpareto.fit(excesses, floc=0.0)
        value = float(max(_gpd_level(initial, shape, scale, self.risk * errors.size / excesses.size), initial))
        return Threshold(
            value, self.name, {**params, "gpd_shape": float(shape), "gpd_scale": float(scale)}, errors.size
        )


# Errors are mean squared errors of standard-scaled readings: below this a threshold would alarm on
# float noise (a constant or near-constant stream reconstructs to ~0), so no threshold is set lower.
MIN_THRESHOLD = 1e-3


@dataclass(frozen=True)
class TargetFarRule:
    """The threshold that a ``target_far`` share of normal windows exceed (a per-window false-alarm rate).

    With at least ``min_exceedances`` calibration errors expected above it, the empirical ``1 - target_far``
    quantile; with fewer (a thin tail: small calibration sets, rare targets) the extreme-value rule
    extrapolates instead, fitting a generalized Pareto tail to the top ``min_exceedances`` errors. Never
    below :data:`MIN_THRESHOLD`, so a constant stream still gets a usable threshold.

    >>> rng = np.random.default_rng(1)
    >>> rule = TargetFarRule(0.01)
    >>> big = rule.fit(rng.exponential(1.0, 20_000))
    >>> big.params["method"], round(big.value, 1)  # exp(1): the 99 % quantile is ln(100) = 4.6
    ('quantile', 4.6)
    >>> small = rule.fit(rng.exponential(1.0, 300))
    >>> small.params["method"], 3.5 < small.value < 6.5
    ('pot', True)
    >>> rule.fit(np.zeros(500)).value == MIN_THRESHOLD
    True
    """

    target_far: float = 0.01
    min_exceedances: int = 10
    floor: float = MIN_THRESHOLD
    name: str = "target_far"

    def __post_init__(self) -> None:
        if not 0.0 < self.target_far < 0.5:
            raise ValueError(f"target_far must be in (0, 0.5), got {self.target_far}")

    def fit(self, errors: np.ndarray) -> Threshold:
        errors = _clean(errors)
        n = errors.size
        params: dict[str, Any] = {"target_far": self.target_far}
        if n * self.target_far >= self.min_exceedances or n <= self.min_exceedances * 2:
            value = float(np.quantile(errors, 1.0 - self.target_far, method="higher"))
            params["method"] = "quantile"
        else:
            value, tail = self._tail(errors)
            params |= {"method": "pot", **tail}
        if value < self.floor:
            params["floored_from"] = value
            value = self.floor
        return Threshold(value, self.name, params, n)

    def _tail(self, errors: np.ndarray) -> tuple[float, dict[str, float]]:
        """Extrapolate past the data: a generalized Pareto tail over the top tenth (at least
        ``min_exceedances`` errors, at most 200). A fitted shape below -0.5 (a bounded tail that ~30
        points cannot support) falls back to the exponential tail (shape 0), which does not undershoot."""
        n = errors.size
        peaks = int(min(max(self.min_exceedances, n // 10), 200))
        initial = float(np.sort(errors)[n - peaks - 1])
        excesses = errors[errors > initial] - initial
        ratio = self.target_far * n / max(excesses.size, 1)
        if excesses.size < 5 or np.ptp(excesses) == 0:
            return float(errors.max()), {"fallback": 1.0}
        shape, _, scale = stats.genpareto.fit(excesses, floc=0.0)
        if shape < -0.5 or abs(shape) < 1e-6:
            shape, scale = 0.0, float(excesses.mean())
        value = float(max(_gpd_level(initial, shape, scale, ratio), initial))
        return value, {"gpd_shape": float(shape), "gpd_scale": float(scale)}


@dataclass(frozen=True)
class RecentLevelJudge:
    """Judge each error against the recent *normal* error level, not a fixed value (after DSPOT, Siffer
    et al. 2017): a window exceeds when ``error > ratio * median(last span errors judged normal)``.

    ``ratio`` is calibrated like a threshold, on calibration errors divided by their median, so the
    promise is the same per-window rate; the level follows slow changes of normal operation (only
    windows judged normal move it), while a jump past the ratio stays flagged for as long as it lasts.
    The judgement depends on the stream's history, not on the window alone.

    >>> rng = np.random.default_rng(0)
    >>> calibration = rng.gamma(20, 0.05, 500)  # level 1.0
    >>> judge = RecentLevelJudge.calibrate(calibration, TargetFarRule(0.01))
    >>> later = np.concatenate([rng.gamma(20, 0.06, 600), rng.gamma(20, 0.2, 100)])  # level 1.2, then a fault
    >>> flags = judge.run(later, calibration)
    >>> round(float(flags[200:600].mean()), 2) <= 0.03, bool(flags[600:].mean() > 0.9)
    (True, True)
    """

    ratio: float
    span: int = 256

    @classmethod
    def calibrate(cls, calibration_errors: np.ndarray, rule: ThresholdRule, span: int = 256) -> RecentLevelJudge:
        errors = _clean(calibration_errors)
        level = float(np.median(errors))
        return cls(rule.fit(errors / max(level, MIN_THRESHOLD)).value, span)

    def run(self, errors: np.ndarray, initial: np.ndarray) -> np.ndarray:
        """Exceeded flags of ``errors`` in stream order, the level starting from ``initial`` errors."""
        recent = deque(_clean(initial)[-self.span :].tolist(), maxlen=self.span)
        flags = np.zeros(len(errors), dtype=bool)
        for i, error in enumerate(np.asarray(errors, dtype=np.float64)):
            if not np.isfinite(error):
                continue
            level = max(float(np.median(recent)), MIN_THRESHOLD)
            flags[i] = error > self.ratio * level
            if not flags[i]:
                recent.append(error)
        return flags


RULES: dict[str, type[ThresholdRule]] = {
    "quantile": QuantileRule,
    "mean_std": MeanStdRule,
    "pot": PeaksOverThresholdRule,
    "target_far": TargetFarRule,
}


def make_rule(name: str, **params: float) -> ThresholdRule:
    """Build a rule by name, e.g. ``make_rule("pot", risk=1e-3)``."""
    try:
        return RULES[name](**params)
    except KeyError:
        raise ValueError(f"unknown threshold rule {name!r}; choose one of {sorted(RULES)}") from None


@dataclass(frozen=True)
class AlarmFilter:
    """Raise an alarm at window ``t`` only if at least ``k`` of windows ``t-n+1..t`` exceed (causal)."""

    k: int = 1
    n: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.n:
            raise ValueError(f"need 1 <= k <= n, got k={self.k}, n={self.n}")

    def apply(self, exceeded: np.ndarray) -> np.ndarray:
        hits = np.asarray(exceeded, dtype=np.int64)
        if self.n == 1:
            return hits.astype(bool)
        counts = np.convolve(hits, np.ones(self.n, dtype=np.int64))[: hits.size]
        return counts >= self.k


class StreamingAlarm:
    """:class:`AlarmFilter`'s rule one window at a time, with the last ``n`` outcomes kept per key (sensor).

    The scorer's alarm state: windows of many sensors arrive interleaved; each sensor's alarms are
    exactly what ``AlarmFilter.apply`` gives on that sensor's own sequence. A filter with another ``n``
    keeps each sensor's most recent outcomes; :meth:`reset` forgets them all.

    >>> alarm = StreamingAlarm()
    >>> alarm.update(["a", "b", "a", "a"], np.array([True, True, False, True]), AlarmFilter(2, 3)).tolist()
    [False, False, False, True]
    """

    def __init__(self) -> None:
        self._recent: dict[str, tuple[bool, ...]] = {}  # per key, its last outcomes (oldest first)

    def update(self, keys: Sequence[str], exceeded: np.ndarray, alarm: AlarmFilter) -> np.ndarray:
        """Alarms ``[len(keys)]`` for windows of ``keys`` in arrival order, whose exceedances are ``exceeded``."""
        hits = np.asarray(exceeded, dtype=bool)
        if alarm.n == 1:  # each window alone decides; keep the last outcome per key
            self._recent.update(zip(keys, ((hit,) for hit in hits.tolist()), strict=True))
            return hits.copy()
        out = np.empty(len(keys), dtype=bool)
        names, _, runs = runs_by_key(keys)
        for key, run in zip(names, runs, strict=True):
            before = self._recent.get(key, ())[-(alarm.n - 1) :]
            sequence = np.concatenate([np.array(before, dtype=bool), hits[run]])
            out[run] = alarm.apply(sequence)[len(before) :]  # the one k-of-n rule, over history + this batch
            self._recent[key] = tuple(sequence[-alarm.n :].tolist())
        return out

    def forget(self, keys: Sequence[str]) -> None:
        """Drop the history of ``keys`` (sensors gone idle)."""
        for key in keys:
            self._recent.pop(key, None)

    def reset(self) -> None:
        self._recent.clear()
