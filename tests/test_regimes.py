"""Per-regime thresholds: which regimes retraining keeps, how each is calibrated, and how windows are judged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from models.detector import AnomalyDetector
from models.regimes import Regime, Regimes, fit_regimes, window_levels
from models.threshold import QuantileRule, Threshold
from models.training import TrainingConfig
from pipeline.scorer import WindowScorer
from pipeline.windows import Window, WindowBatch

RNG = np.random.default_rng(3)
OLD = RNG.normal(0.0, 1.0, (800, 3))
NEW = RNG.normal([5.0, -4.0, 0.0], 1.0, (800, 3))


def test_recent_windows_far_from_every_known_regime_become_a_regime_of_their_own() -> None:
    regimes = fit_regimes([], OLD, NEW)
    assert len(regimes) == 2
    old, new = regimes.assign(np.array([[0.0, 0.0, 0.0], [5.0, -4.0, 0.0]]))
    assert old != new
    assert (regimes.assign(OLD) == old).mean() > 0.99
    assert (regimes.assign(NEW) == new).mean() > 0.99


def test_windows_beyond_a_narrow_new_regime_are_judged_by_it_not_by_the_wide_old_one() -> None:
    rng = np.random.default_rng(3)
    old, ramp_start = rng.normal(0, 1, (600, 5)), rng.normal(2.5, 0.1, (300, 5))  # a first stage, minutes in
    regimes = fit_regimes([], old, ramp_start)
    new = int(np.argmin([np.abs(r.centre - 2.5).max() for r in regimes.regimes]))
    ramp_later = np.linspace(2.5, 5.0, 50)[:, None] * np.ones(5)  # the ramp goes on beyond it
    assert (regimes.assign(ramp_later) == new).all()
    inside_old = rng.normal(0, 1, (200, 5))
    assert (regimes.assign(inside_old) == 1 - new).mean() > 0.99  # the discriminant still decides inside


def test_recent_windows_of_a_known_regime_join_it() -> None:
    same_regime = RNG.normal(0.3, 1.0, (400, 3))  # a scheduled run without drift: the centre barely moved
    regimes = fit_regimes([], OLD, same_regime)
    assert len(regimes) == 1
    assert regimes.regimes[0].windows == 1200


def test_a_regime_the_replay_buffer_no_longer_holds_is_dropped() -> None:
    known = fit_regimes([], OLD, NEW).regimes
    third = RNG.normal([-6.0, 6.0, 2.0], 1.0, (800, 3))
    # the buffer now holds only the second regime: the first is forgotten, the recent third one is new
    regimes = fit_regimes(known, NEW, third)
    assert len(regimes) == 2
    centres = sorted(tuple(np.round(r.centre).astype(int)) for r in regimes.regimes)
    assert centres == [(-6, 6, 2), (5, -4, 0)]


def test_each_regime_is_calibrated_on_its_own_windows_and_too_few_fall_back() -> None:
    regimes = fit_regimes([], OLD, NEW)
    levels = np.concatenate([OLD, NEW])
    errors = np.concatenate([RNG.exponential(0.1, len(OLD)), RNG.exponential(1.0, len(NEW))])
    fallback = Threshold(9.9, "quantile")
    calibrated = regimes.calibrate(levels, errors, QuantileRule(0.99), fallback)
    centres = np.array([[0.0, 0.0, 0.0], [5.0, -4.0, 0.0]])
    assigned = regimes.assign(levels)
    for threshold, regime in zip(calibrated.thresholds(centres), regimes.assign(centres), strict=True):
        assert threshold == QuantileRule(0.99).fit(errors[assigned == regime]).value
    assert calibrated.thresholds(centres[1:])[0] > 5 * calibrated.thresholds(centres[:1])[0]
    sparse = regimes.calibrate(levels[:850], errors[:850], QuantileRule(0.99), fallback)  # 50 new windows only
    assert sparse.thresholds(np.array([[5.0, -4.0, 0.0]]))[0] == 9.9
    with pytest.raises(ValueError, match="calibrate"):
        regimes.thresholds(levels)


def test_regimes_retraining_did_not_relearn_keep_their_threshold_scaled_by_the_error_ratio() -> None:
    regimes = fit_regimes([], OLD, NEW)
    levels = np.concatenate([OLD, NEW])
    errors = np.concatenate([RNG.exponential(0.1, len(OLD)), RNG.exponential(1.0, len(NEW))])
    calibrated = regimes.calibrate(levels, errors, QuantileRule(0.99), Threshold(9.9, "quantile"))
    old = int(regimes.assign(np.zeros((1, 3)))[0])
    previous_errors = RNG.exponential(0.1, len(OLD))
    carried = calibrated.carry_over(OLD, np.full(len(OLD), 0.4), previous_errors, 1.5 * previous_errors)
    assert carried.regimes[old].threshold.value == pytest.approx(0.6)  # 0.4 x the median error ratio 1.5
    assert carried.regimes[1 - old] is calibrated.regimes[1 - old]  # no held-out window of it: as calibrated
    relearned = calibrated.carry_over(OLD, np.full(len(OLD), 0.4), previous_errors, errors[: len(OLD)], {old})
    assert all(a is b for a, b in zip(relearned.regimes, calibrated.regimes, strict=True))
    few = calibrated.carry_over(OLD[:50], np.full(50, 0.4), previous_errors[:50], previous_errors[:50])
    assert all(a is b for a, b in zip(few.regimes, calibrated.regimes, strict=True))  # too few to judge by


@pytest.fixture(scope="module")
def two_regime_detector() -> AnomalyDetector:
    t = np.arange(1500.0)
    normal = np.stack([np.sin(t / 8), np.cos(t / 8)], axis=1)
    detector = AnomalyDetector.fit(
        normal, window=10, hidden_size=8, latent_size=2, training=TrainingConfig(epochs=2, progress=False)
    )
    low, high = Threshold(0.01, "quantile", {"q": 0.99}), Threshold(50.0, "quantile", {"q": 0.99})
    # level 0 (the training regime) is judged strictly, level +4 loosely
    detector.regimes = Regimes(
        (
            Regime(np.zeros(2), np.eye(2) * 0.5, low, 1000),
            Regime(np.full(2, 4.0), np.eye(2) * 0.5, high, 1000),
        )
    )
    return detector


def test_windows_are_judged_by_their_regime_in_batch_and_streaming_scoring(two_regime_detector) -> None:
    detector = two_regime_detector
    t = np.arange(60.0)
    wave = np.stack([np.sin(t / 8), np.cos(t / 8)], axis=1)
    shifted = wave + 4.0 * np.asarray(detector.scaler.std)  # the same wave at the second regime's level
    for readings, expected in ((wave, 0.01), (shifted, 50.0)):
        detection = detector.predict(readings)
        assert np.all(detection.threshold == expected)
        assert detection.exceeded.tolist() == (detection.error > expected).tolist()
        windows = [
            Window("s", float(i), float(i + 9), readings[i : i + 10], ("t", 0, i + 9), ("t", 0, i))
            for i in range(len(readings) - 9)
        ]
        scored = WindowScorer(detector, "v1").score(WindowBatch.of(windows))
        assert np.all(scored.threshold == expected)
        np.testing.assert_allclose(scored.error, detection.error, rtol=1e-5)
    levels = window_levels(detector.scaler.scaled_windows(shifted, 10))
    assert np.all(detector.regimes.assign(levels) == 1)


def test_regimes_round_trip_through_a_checkpoint_and_broken_ones_are_refused(two_regime_detector, tmp_path) -> None:
    path = save_checkpoint(two_regime_detector, tmp_path / "ok")
    loaded = load_checkpoint(path).detector
    assert loaded.regimes is not None
    assert [r.threshold for r in loaded.regimes.regimes] == [r.threshold for r in two_regime_detector.regimes.regimes]
    np.testing.assert_array_equal(loaded.regimes.regimes[1].centre, [4.0, 4.0])

    broken = save_checkpoint(two_regime_detector, tmp_path / "broken")
    meta_file = Path(broken) / "checkpoint.json"
    meta = json.loads(meta_file.read_text())
    meta["regimes"][0]["covariance"] = [[1.0, 2.0], [2.0, 1.0]]  # not positive definite
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="positive definite"):
        load_checkpoint(broken)
