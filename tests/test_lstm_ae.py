"""Network shapes, training behaviour, scoring and the detector verbs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint, save_checkpoint
from models.detector import AnomalyDetector, ThresholdNotSetError
from models.lstm_ae import LSTMAEConfig, LSTMAutoencoder
from models.preprocessing import StandardScaler
from models.scoring import reconstruction_errors, window_error
from models.threshold import QuantileRule
from models.training import Distillation, TrainingConfig, split_in_time, train_autoencoder

FAST = TrainingConfig(epochs=25, batch_size=32, patience=25, progress=False)


def multichannel_signal(rows: int = 1200, seed: int = 0) -> np.ndarray:
    """Three correlated channels with seasonality and noise, like a pump's flow, pressure, current."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows, dtype=np.float64)
    base = np.sin(2 * np.pi * t / 50)
    return np.stack([10 + 2 * base, 5 + base + 0.5 * np.cos(2 * np.pi * t / 17), 1 + 0.8 * base], axis=1) + rng.normal(
        0, 0.05, (rows, 3)
    )


@pytest.mark.parametrize(("layers", "dropout"), [(1, 0.0), (2, 0.2)])
def test_output_shape_matches_input(layers: int, dropout: float) -> None:
    config = LSTMAEConfig(n_channels=4, window=12, hidden_size=8, num_layers=layers, latent_size=3, dropout=dropout)
    model = LSTMAutoencoder(config)
    assert model(torch.randn(7, 12, 4)).shape == (7, 12, 4)
    assert model.encode(torch.randn(7, 12, 4)).shape == (7, 3)


def test_a_per_step_code_rebuilds_each_step_from_readings_up_to_it() -> None:
    torch.manual_seed(0)
    model = LSTMAutoencoder(LSTMAEConfig(n_channels=4, window=12, hidden_size=8, latent_size=2, bottleneck="step"))
    windows = torch.randn(3, 12, 4)
    later_changed = windows.clone()
    later_changed[:, 8:] += 5.0  # readings 9..12 only
    with torch.no_grad():
        before, after = model(windows), model(later_changed)
    assert model.encode(windows).shape == (3, 12, 2)
    torch.testing.assert_close(before[:, :8], after[:, :8])  # steps 1..8 do not see the future
    assert not torch.allclose(before[:, 8:], after[:, 8:])


def test_a_per_step_code_as_wide_as_the_input_is_refused() -> None:
    with pytest.raises(ValueError, match="identity"):
        LSTMAEConfig(n_channels=3, latent_size=3, bottleneck="step")
    with pytest.raises(ValueError, match="bottleneck"):
        LSTMAEConfig(n_channels=3, latent_size=2, bottleneck="sideways")


def test_the_latent_size_can_follow_the_variance_the_channels_share() -> None:
    rng = np.random.default_rng(0)
    factors = rng.normal(size=(700, 2))
    readings = factors @ rng.normal(size=(2, 6)) + 0.05 * rng.normal(size=(700, 6))  # two directions in six
    detector = AnomalyDetector.fit(
        readings, window=10, hidden_size=8, bottleneck="step", latent_variance_share=0.9,
        training=TrainingConfig(epochs=1, progress=False),
    )  # fmt: skip
    assert (detector.model.config.latent_size, detector.model.config.bottleneck) == (2, "step")


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="window"):
        LSTMAEConfig(n_channels=2, window=0)
    with pytest.raises(ValueError, match="dropout"):
        LSTMAEConfig(n_channels=2, dropout=1.0)


def test_training_lowers_validation_loss_on_a_multichannel_signal() -> None:
    readings = StandardScaler.fit(multichannel_signal()).transform(multichannel_signal())
    windows = np.lib.stride_tricks.sliding_window_view(readings, 25, axis=0).transpose(0, 2, 1)
    model = LSTMAutoencoder(LSTMAEConfig(n_channels=3, window=25, hidden_size=32, latent_size=8))
    result = train_autoencoder(model, windows, FAST)
    first, best = result.history[0]["val_loss"], result.best_val_loss
    assert best < 0.5 * first, f"validation loss only went from {first:.3f} to {best:.3f}"
    assert result.history[result.best_epoch - 1]["val_loss"] == best


def test_training_is_deterministic_for_a_seed() -> None:
    windows = np.random.default_rng(1).normal(size=(80, 10, 2)).astype(np.float32)
    losses = []
    for _ in range(2):
        model = LSTMAutoencoder(LSTMAEConfig(n_channels=2, window=10, hidden_size=8, latent_size=2))
        torch.manual_seed(0)
        losses.append(
            [h["val_loss"] for h in train_autoencoder(model, windows, TrainingConfig(epochs=3, progress=False)).history]
        )
    assert losses[0] == losses[1]


def test_distillation_keeps_the_reconstructions_of_old_windows_while_fine_tuning_on_new_ones() -> None:
    scaler = StandardScaler.fit(multichannel_signal())
    old = np.lib.stride_tricks.sliding_window_view(scaler.transform(multichannel_signal()), 25, axis=0)
    old = np.ascontiguousarray(old.transpose(0, 2, 1), dtype=np.float32)
    new = old[:, :, ::-1] * 1.5 + 2.0  # another operating point: channels swapped, scaled, offset
    model = LSTMAutoencoder(LSTMAEConfig(n_channels=3, window=25, hidden_size=16, latent_size=4))
    train_autoencoder(model, old, FAST)
    before = reconstruction_errors(model, old).error.mean()
    errors = {}
    for name, distillation in {"plain": None, "distilled": Distillation(old[::4], weight=3.0)}.items():
        tuned = copy.deepcopy(model)
        train_autoencoder(tuned, new, TrainingConfig(epochs=5, progress=False), distillation=distillation)
        errors[name] = reconstruction_errors(tuned, old).error.mean()
    assert errors["distilled"] < 0.5 * errors["plain"], errors
    assert errors["distilled"] < 3 * before, (errors, before)


@pytest.mark.parametrize("loss_steps", ["window", "scored"])
def test_the_loss_covers_the_scored_readings_when_asked(loss_steps: str) -> None:
    windows = np.random.default_rng(2).normal(size=(90, 10, 2)).astype(np.float32)
    train, val = windows[:60], windows[70:]
    model = LSTMAutoencoder(LSTMAEConfig(n_channels=2, window=10, hidden_size=8, latent_size=2, score_steps=3))
    result = train_autoencoder(model, train, TrainingConfig(epochs=3, loss_steps=loss_steps, progress=False), val)
    with torch.no_grad():
        squared = (model(torch.as_tensor(val)) - torch.as_tensor(val)).pow(2)
    whole, last = float(squared.mean()), float(squared[:, -3:].mean())
    # early stopping judged the restored weights by exactly the readings the loss covered
    assert result.best_val_loss == pytest.approx(last if loss_steps == "scored" else whole, rel=1e-5)
    assert abs(whole - last) > 1e-3  # the two losses differ, so the check above tells them apart
    with pytest.raises(ValueError, match="loss_steps"):
        TrainingConfig(loss_steps="last")


def test_time_split_keeps_validation_after_training_without_overlap() -> None:
    windows = np.arange(100 * 5 * 1, dtype=np.float32).reshape(100, 5, 1)
    train, val = split_in_time(windows, 0.2)
    assert len(val) == 20
    assert train[-1, -1, 0] < val[0, 0, 0]  # last training reading comes before the first validation one


def test_training_refuses_non_finite_windows() -> None:
    windows = np.zeros((50, 5, 1), dtype=np.float32)
    windows[3, 2, 0] = np.nan
    model = LSTMAutoencoder(LSTMAEConfig(n_channels=1, window=5, hidden_size=4, latent_size=2))
    with pytest.raises(ValueError, match="NaN"):
        train_autoencoder(model, windows, FAST)


def test_channel_errors_average_to_window_error() -> None:
    model = LSTMAutoencoder(LSTMAEConfig(n_channels=3, window=8, hidden_size=8, latent_size=2))
    scores = reconstruction_errors(model, np.random.default_rng(0).normal(size=(9, 8, 3)).astype(np.float32), 4)
    np.testing.assert_allclose(scores.channel_error.mean(axis=1), scores.error, rtol=1e-5)


def test_detector_flags_an_injected_fault_and_names_its_channel() -> None:
    normal = multichannel_signal(1500)
    detector = AnomalyDetector.fit(
        normal, window=25, hidden_size=32, latent_size=8, training=FAST, rule=QuantileRule(0.995)
    )
    test = multichannel_signal(600, seed=1)
    test[300:360, 1] += 3.0  # pressure channel jumps for a minute
    detection = detector.predict(test)
    flags = detection.row_flags(len(test))
    assert flags[305:360].mean() > 0.8, "the fault should be flagged for most of its duration"
    assert flags[:280].mean() < 0.05, "normal operation should rarely alarm"
    worst = int(np.nanargmax(detection.error))
    assert int(np.argmax(detection.channel_error[worst])) == 1


def test_non_finite_readings_reject_only_their_windows() -> None:
    detector = AnomalyDetector.fit(
        multichannel_signal(600),
        window=10,
        hidden_size=8,
        latent_size=2,
        training=TrainingConfig(epochs=2, progress=False),
    )
    readings = multichannel_signal(100, seed=2)
    readings[50, 0] = np.inf
    ends, scores = detector.score(readings)
    rejected = ends[np.isnan(scores.error)]
    assert rejected.tolist() == list(range(50, 60))


def test_predict_before_threshold_is_a_named_error() -> None:
    detector = AnomalyDetector.fit(
        multichannel_signal(400),
        window=10,
        hidden_size=8,
        latent_size=2,
        training=TrainingConfig(epochs=1, progress=False),
    )
    detector.threshold = None
    with pytest.raises(ThresholdNotSetError):
        detector.predict(multichannel_signal(50))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CPU/GPU parity needs a CUDA device")
def test_cpu_and_gpu_scores_agree() -> None:
    model = LSTMAutoencoder(LSTMAEConfig(n_channels=3, window=16, hidden_size=16, latent_size=4))
    windows = np.random.default_rng(0).normal(size=(64, 16, 3)).astype(np.float32)
    cpu = reconstruction_errors(model.cpu(), windows)
    gpu = reconstruction_errors(model.cuda(), windows)
    np.testing.assert_allclose(cpu.error, gpu.error, rtol=1e-3, atol=1e-5)


def test_fit_is_reproducible_for_a_seed() -> None:
    readings = multichannel_signal(400)
    fits = [
        AnomalyDetector.fit(
            readings, window=10, hidden_size=8, latent_size=2, training=TrainingConfig(epochs=2, progress=False, seed=7)
        )
        for _ in range(2)
    ]
    assert fits[0].threshold == fits[1].threshold


def test_a_relative_channel_ignores_a_lasting_level_but_not_its_movement() -> None:
    normal = multichannel_signal(1500)
    options = dict(window=25, hidden_size=32, latent_size=8, training=FAST, rule=QuantileRule(0.995))
    channels = ("flow", "pressure", "temperature")
    absolute = AnomalyDetector.fit(normal, channels=channels, **options)
    relative = AnomalyDetector.fit(normal, channels=channels, relative_channels=("temperature",), **options)
    warm = multichannel_signal(600, seed=1)
    warm[300:, 2] += 3.0  # still warm long after its cause is gone
    assert absolute.predict(warm).row_flags(600)[340:].mean() > 0.8
    assert relative.predict(warm).row_flags(600)[340:].mean() < 0.05, "a level alone is not an anomaly"
    shaking = multichannel_signal(600, seed=1)
    shaking[300:360, 2] += 3.0 * np.sign(np.sin(np.arange(60)))  # the channel itself misbehaves
    assert relative.predict(shaking).row_flags(600)[305:360].mean() > 0.8


def test_relative_channels_must_name_known_channels() -> None:
    with pytest.raises(ValueError, match="'temp' is not one of the channels"):
        AnomalyDetector.fit(multichannel_signal(300), window=10, channels=("a", "b", "c"), relative_channels=("temp",))
    with pytest.raises(ValueError, match="distinct indices"):
        StandardScaler((0.0, 0.0), (1.0, 1.0), relative=(2,))


def test_a_window_can_be_scored_by_its_largest_channel_errors(tmp_path) -> None:
    """With score_channel_share the error is the mean of the largest channel errors: a fault on one of
    several channels counts fully instead of being averaged with the quiet ones; saved and loaded with it."""
    channel_error = np.array([[1.0, 2.0, 6.0, 3.0], [4.0, 4.0, 4.0, 4.0]])
    assert window_error(channel_error).tolist() == [3.0, 4.0]
    assert window_error(channel_error, 2).tolist() == [4.5, 4.0]
    assert window_error(channel_error, 4).tolist() == [3.0, 4.0]
    with pytest.raises(ValueError, match="score_channels"):
        LSTMAEConfig(n_channels=3, score_channels=4)

    normal = multichannel_signal(600)
    detector = AnomalyDetector.fit(normal, window=20, hidden_size=8, latent_size=2, training=FAST,
                                   score_channel_share=0.5)  # fmt: skip
    assert detector.model.config.score_channels == 2  # half of 3 channels, rounded up
    faulty = normal[:200].copy()
    faulty[150:, 1] += 3.0
    scores = detector.score(faulty)[1]
    largest_two = np.sort(scores.channel_error, axis=1)[:, 1:].mean(axis=1)
    np.testing.assert_allclose(scores.error, largest_two, rtol=1e-6)
    restored = load_checkpoint(save_checkpoint(detector, tmp_path / "ckpt")).detector
    assert restored.model.config.score_channels == 2
    np.testing.assert_allclose(restored.score(faulty)[1].error, scores.error, rtol=1e-6)
