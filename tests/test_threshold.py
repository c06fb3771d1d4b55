"""Threshold rules and the alarm filter: properties that must hold for any error distribution."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from models.threshold import (
    AlarmFilter,
    MeanStdRule,
    PeaksOverThresholdRule,
    QuantileRule,
    StreamingAlarm,
    Threshold,
    make_rule,
)

errors_strategy = arrays(
    np.float64, st.integers(20, 400), elements=st.floats(0, 1e3, allow_nan=False, allow_infinity=False)
)


@given(errors_strategy, st.floats(0.5, 0.999))
def test_quantile_rule_bounds_false_positive_rate(errors: np.ndarray, q: float) -> None:
    threshold = QuantileRule(q).fit(errors)
    assert errors.min() <= threshold.value <= errors.max()
    assert (errors > threshold.value).mean() <= 1 - q + 1e-9


@given(errors_strategy, st.floats(0.5, 0.9), st.floats(0.9, 0.99))
def test_quantile_threshold_is_monotone_in_q(errors: np.ndarray, low: float, high: float) -> None:
    assert QuantileRule(low).fit(errors).value <= QuantileRule(high).fit(errors).value


@given(errors_strategy, st.floats(0, 5))
def test_mean_std_rule_is_at_least_the_mean(errors: np.ndarray, k: float) -> None:
    assert MeanStdRule(k).fit(errors).value >= errors.mean() - 1e-9


@settings(deadline=None, max_examples=30)
@given(arrays(np.float64, st.integers(200, 2000), elements=st.floats(0, 100, allow_nan=False)))
def test_pot_threshold_is_finite_and_above_its_initial_quantile(errors: np.ndarray) -> None:
    rule = PeaksOverThresholdRule(risk=1e-3, initial_quantile=0.95)
    threshold = rule.fit(errors)
    assert np.isfinite(threshold.value)
    assert threshold.value >= np.quantile(errors, 0.95) - 1e-9


def test_pot_extrapolates_beyond_the_sample_for_heavy_tails() -> None:
    errors = np.random.default_rng(0).pareto(3.0, 20_000)
    threshold = PeaksOverThresholdRule(risk=1e-4, initial_quantile=0.98).fit(errors)
    true_quantile = (1e-4) ** (-1 / 3.0) - 1  # Lomax(3) tail quantile at 1e-4
    assert threshold.value == pytest.approx(true_quantile, rel=0.35)
    assert threshold.params["gpd_shape"] > 0


def test_rules_ignore_non_finite_and_refuse_empty() -> None:
    assert QuantileRule(0.5).fit(np.array([1.0, np.nan, 3.0, np.inf])).value == 3.0  # "higher" sample
    with pytest.raises(ValueError, match="at least two"):
        QuantileRule().fit(np.array([np.nan]))


def test_threshold_round_trips_and_refuses_non_finite() -> None:
    threshold = make_rule("pot", risk=1e-3).fit(np.random.default_rng(1).exponential(size=1000))
    assert Threshold.from_dict(threshold.to_dict()) == threshold
    with pytest.raises(ValueError, match="finite"):
        Threshold.from_dict({"value": float("nan"), "rule": "quantile"})
    with pytest.raises(ValueError, match="unknown threshold rule"):
        make_rule("magic")


@given(st.lists(st.booleans(), min_size=1, max_size=200), st.integers(1, 10), st.integers(0, 9))
def test_alarm_filter_is_causal_and_k_of_n(hits: list[bool], n: int, k_offset: int) -> None:
    k = 1 + k_offset % n
    exceeded = np.array(hits)
    alarms = AlarmFilter(k, n).apply(exceeded)
    for t in range(len(hits)):
        assert alarms[t] == (exceeded[max(0, t - n + 1) : t + 1].sum() >= k)
    # causal: changing the future never changes the past
    if len(hits) > 1:
        changed = exceeded.copy()
        changed[-1] = not changed[-1]
        assert (AlarmFilter(k, n).apply(changed)[:-1] == alarms[:-1]).all()


def test_one_of_one_filter_is_identity() -> None:
    exceeded = np.array([True, False, True])
    assert (AlarmFilter().apply(exceeded) == exceeded).all()


@settings(max_examples=200, deadline=None)
@given(
    stream=st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.booleans()), max_size=60),
    n=st.integers(1, 5),
    k_offset=st.integers(0, 4),
    cut=st.integers(0, 60),
)
def test_streaming_alarm_per_sensor_equals_the_batch_filter_on_that_sensors_windows(stream, n, k_offset, cut) -> None:
    alarm = AlarmFilter(max(1, n - k_offset), n)
    keys = [key for key, _ in stream]
    exceeded = np.array([hit for _, hit in stream], dtype=bool)
    streaming = StreamingAlarm()
    # in two micro-batches, as the scorer sees them
    got = np.concatenate([streaming.update(keys[:cut], exceeded[:cut], alarm),
                          streaming.update(keys[cut:], exceeded[cut:], alarm)])  # fmt: skip
    for key in set(keys):
        mine = np.array([k == key for k in keys])
        np.testing.assert_array_equal(got[mine], alarm.apply(exceeded[mine]))


def test_forgotten_sensors_start_their_k_of_n_afresh() -> None:
    alarm = StreamingAlarm()
    rule = AlarmFilter(2, 2)
    alarm.update(["a", "b"], np.array([True, True]), rule)
    alarm.forget(["a"])
    assert alarm.update(["a", "b"], np.array([True, True]), rule).tolist() == [False, True]
