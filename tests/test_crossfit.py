"""How a window is scored (its last readings) and calibration by time-blocked cross-fitting."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.checkpoint import META_FILE, load_checkpoint, save_checkpoint
from models.crossfit import crossfit_errors, fold_blocks, outside_block
from models.detector import AnomalyDetector, NotEnoughDataError
from models.lstm_ae import LSTMAEConfig, LSTMAutoencoder
from models.scoring import reconstruction_errors
from models.training import TrainingConfig, train_autoencoder
from pipeline.config import ConfigError, load_config

QUICK = TrainingConfig(epochs=2, progress=False)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 400), folds=st.integers(2, 10), window=st.integers(1, 40), data=st.data())
def test_blocks_cover_every_window_once_and_training_windows_share_no_reading(n, folds, window, data) -> None:
    blocks = fold_blocks(n, folds)
    covered = np.concatenate([np.arange(a, b) for a, b in blocks])
    assert covered.tolist() == list(range(n))
    start, stop = blocks[data.draw(st.integers(0, len(blocks) - 1))]
    held_rows = set(range(start, stop + window - 1))
    for j in np.flatnonzero(outside_block(n, (start, stop), window)):
        assert held_rows.isdisjoint(range(j, j + window)), (j, start, stop)
    # and nothing that shares no reading is left out needlessly
    outside = outside_block(n, (start, stop), window)
    for j in np.flatnonzero(~outside):
        assert not held_rows.isdisjoint(range(j, j + window))


def test_cross_fitted_errors_are_out_of_sample() -> None:
    # Noise windows a roomy network can memorise: in-sample errors are far below unseen ones, and the
    # cross-fitted errors must look like unseen ones (they would not if a block were trained on).
    rng = np.random.default_rng(0)
    windows = rng.normal(size=(240, 4, 3)).astype(np.float32)
    config = LSTMAEConfig(3, 4, hidden_size=64, latent_size=12)
    training = TrainingConfig(epochs=120, batch_size=32, learning_rate=5e-3, progress=False)
    torch.manual_seed(0)
    model = LSTMAutoencoder(config)
    train_autoencoder(model, windows, training, select_epoch=False)
    in_sample = reconstruction_errors(model, windows).error.mean()
    unseen = reconstruction_errors(model, rng.normal(size=(240, 4, 3)).astype(np.float32)).error.mean()
    assert in_sample < 0.8 * unseen, "the network should memorise its training windows"
    cross_fitted = crossfit_errors([windows], config, training, epochs=120, folds=4).mean()
    assert cross_fitted > 0.9 * unseen, (in_sample, cross_fitted, unseen)


def test_fit_with_folds_calibrates_on_every_normal_window() -> None:
    rng = np.random.default_rng(1)
    segments = [rng.normal(size=(300, 2)), rng.normal(size=(200, 2))]
    detector = AnomalyDetector.fit(segments, window=10, hidden_size=8, latent_size=2, training=QUICK,
                                   calibration_folds=3)  # fmt: skip
    assert detector.calibration_errors is not None
    assert len(detector.calibration_errors) == (300 - 9) + (200 - 9)
    sliced = AnomalyDetector.fit(segments, window=10, hidden_size=8, latent_size=2, training=QUICK)
    assert sliced.calibration_errors is not None
    assert len(sliced.calibration_errors) < 120


def test_without_epoch_selection_training_runs_every_epoch_and_keeps_the_last_weights() -> None:
    windows = np.random.default_rng(2).normal(size=(64, 6, 2)).astype(np.float32)
    model = LSTMAutoencoder(LSTMAEConfig(2, 6, hidden_size=8, latent_size=2))
    result = train_autoencoder(model, windows, TrainingConfig(epochs=7, patience=1, progress=False),
                               select_epoch=False)  # fmt: skip
    assert [h["epoch"] for h in result.history] == list(range(1, 8))
    assert result.best_epoch == 7


def test_a_window_is_scored_by_the_residuals_of_its_last_score_steps_readings() -> None:
    torch.manual_seed(0)
    model = LSTMAutoencoder(LSTMAEConfig(3, 12, hidden_size=8, latent_size=2, score_steps=4))
    windows = np.random.default_rng(3).normal(size=(5, 12, 3)).astype(np.float32)
    with torch.no_grad():
        squared = (model(torch.as_tensor(windows)) - torch.as_tensor(windows)).pow(2).numpy()
    scores = reconstruction_errors(model, windows)
    np.testing.assert_allclose(scores.error, squared[:, -4:].mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(scores.channel_error, squared[:, -4:].mean(axis=1), rtol=1e-5)
    with pytest.raises(ValueError, match="score_steps"):
        LSTMAEConfig(3, 12, score_steps=13)


def test_score_steps_travel_in_the_checkpoint_and_older_ones_score_the_whole_window(tmp_path: Path) -> None:
    detector = AnomalyDetector.fit(np.random.default_rng(4).normal(size=(300, 2)), window=6, hidden_size=4,
                                   latent_size=2, training=QUICK, score_steps=3)  # fmt: skip
    path = save_checkpoint(detector, tmp_path / "new")
    assert load_checkpoint(path).detector.model.config.score_steps == 3
    meta = json.loads((path / META_FILE).read_text())
    del meta["model"]["config"]["score_steps"], meta["model"]["config"]["bottleneck"]  # as written before both
    (path / META_FILE).write_text(json.dumps(meta))
    older = load_checkpoint(path).detector.model.config
    assert (older.score_steps, older.bottleneck) == (None, "window")


def test_denoising_training_learns_to_remove_input_noise() -> None:
    # A wide network (latent as large as the window) trained on clean sines restores noisy inputs to
    # about 0.17 of their noise power without input noise and 0.08 with it (seeded, CPU): the bound
    # 0.12 sits between the two, so the test fails if the noise is not applied while training.
    t = np.arange(2000, dtype=np.float32)
    clean = np.stack([np.sin(t / 8), np.cos(t / 13)], axis=1)
    windows = np.lib.stride_tricks.sliding_window_view(clean, (16, 2))[:, 0][::2].copy()  # [n, 16, 2]
    torch.manual_seed(0)
    model = LSTMAutoencoder(LSTMAEConfig(2, 16, hidden_size=64, latent_size=64))
    training = TrainingConfig(epochs=40, batch_size=32, learning_rate=5e-3, input_noise=0.3, progress=False)
    train_autoencoder(model, windows, training)
    noisy = windows + np.random.default_rng(6).normal(0, 0.3, windows.shape).astype(np.float32)
    with torch.no_grad():
        restored = model(torch.as_tensor(noisy)).numpy()
    assert np.mean((restored - windows) ** 2) < 0.12 * np.mean((noisy - windows) ** 2)


def test_too_little_data_for_cross_fitting_is_the_named_error_and_one_fold_is_refused() -> None:
    with pytest.raises(NotEnoughDataError, match="too little normal data"):
        AnomalyDetector.fit(np.zeros((50, 2)), window=10, training=QUICK, calibration_folds=3)
    with pytest.raises(ConfigError, match="calibration_folds"):
        load_config(overrides=["model.calibration_folds=1"])
