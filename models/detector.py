"""The anomaly detector users fit and query: scaler + LSTM autoencoder + threshold + alarm filter.

Verbs (Alibi Detect style): :meth:`AnomalyDetector.fit` trains on normal readings and calibrates the
threshold on held-out windows; :meth:`~AnomalyDetector.score` returns window errors;
:meth:`~AnomalyDetector.predict` returns a typed :class:`Detection` (retraining lives in
:mod:`jobs.retrain`). Windows are scored causally: the window ending at row ``t`` uses rows ``<= t`` only.

>>> import numpy as np
>>> t = np.arange(600.0)
>>> normal = np.stack([np.sin(t / 10), np.cos(t / 10)], axis=1)
>>> detector = AnomalyDetector.fit(normal, window=20, hidden_size=16, latent_size=4,
...                                training=TrainingConfig(epochs=3, progress=False))
>>> detection = detector.predict(normal[:100])
>>> detection.error.shape, int(detection.window_end_row[0])
((81,), 19)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from models.crossfit import crossfit_errors
from models.defaults import (
    DEFAULT_FULL_STRETCH_READINGS,
    DEFAULT_HIDDEN_SIZE,
    DEFAULT_LATENT_SIZE,
    DEFAULT_SCORE_CHANNEL_SHARE,
    DEFAULT_SCORE_STEPS,
    DEFAULT_WINDOW,
)
from models.lstm_ae import LSTMAEConfig, LSTMAutoencoder
from models.preprocessing import StandardScaler, components_for_variance, finite_windows, window_end_rows
from models.regimes import Regimes, window_levels
from models.scoring import WindowScores, reconstruction_errors
from models.threshold import AlarmFilter, QuantileRule, Threshold, ThresholdRule, short_stretch_margin
from models.training import TrainingResult, resolve_device, train_autoencoder
from models.training_config import TrainingConfig

MIN_TRAIN_WINDOWS = 64
MIN_CALIBRATION_WINDOWS = 20


class NotEnoughDataError(ValueError):
    """Too few normal readings to train and calibrate; the message says how many are needed."""


log = logging.getLogger(__name__)


def _split_windows(
    segments: Sequence[np.ndarray], scaler: StandardScaler, window: int, val_fraction: float, cal_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Finite windows of every segment, split in time: train | early-stopping validation | calibration.

    The three parts of a segment are separated by ``window - 1`` windows, so no reading is shared
    between them: the threshold is calibrated on errors the weights were neither trained nor selected on.
    """
    parts: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
    gap = window - 1
    for segment in segments:
        windows = scaler.scaled_windows(segment, window)
        windows = windows[finite_windows(windows)]
        n = len(windows)
        n_cal, n_val = round(n * cal_fraction), max(1, round(n * val_fraction))
        n_train = n - n_cal - n_val - (2 if n_cal else 1) * gap
        if n_train < 1 or (n_cal < 1 and cal_fraction > 0):
            continue
        parts[0].append(windows[:n_train])
        parts[1].append(windows[n_train + gap : n_train + gap + n_val])
        parts[2].append(windows[n - n_cal :])
    train, val, cal = (np.concatenate(p) if p else np.empty((0, window, scaler.n_channels), np.float32) for p in parts)
    if len(train) < MIN_TRAIN_WINDOWS or (cal_fraction > 0 and len(cal) < MIN_CALIBRATION_WINDOWS):
        share = 1.0 - val_fraction - cal_fraction
        windows_needed = (MIN_TRAIN_WINDOWS + 2 * gap) / share
        if cal_fraction > 0:
            windows_needed = max(MIN_CALIBRATION_WINDOWS / cal_fraction, windows_needed)
        raise NotEnoughDataError(
            f"too little normal data: {sum(len(s) for s in segments):,} readings in {len(segments)} segment(s) give "
            f"{len(train)} training and {len(cal)} calibration windows of {window} readings; driftline needs at "
            f"least {MIN_TRAIN_WINDOWS} and {MIN_CALIBRATION_WINDOWS}, i.e. about {int(windows_needed) + window:,} "
            "consecutive normal readings (or a shorter model.window)"
        )
    return train, val, cal


def _channel_indices(selected: Sequence[str | int], channels: Sequence[str] | None, n_channels: int) -> tuple[int, ...]:
    """Indices of ``selected`` channels given by name (looked up in ``channels``) or by index."""
    indices = []
    for channel in selected:
        if isinstance(channel, str):
            if channels is None or channel not in channels:
                raise ValueError(f"relative channel {channel!r} is not one of the channels {list(channels or [])}")
            indices.append(list(channels).index(channel))
        elif 0 <= int(channel) < n_channels:
            indices.append(int(channel))
        else:
            raise ValueError(f"relative channel index {channel} is out of range for {n_channels} channels")
    return tuple(indices)


# A channel whose mean moves by more than this many of its standard deviations between the first and
# the second half of the training data wanders with the run's history (heat-up, slow drifts): with
# relative_channels="auto" it enters the model by its shape within each window, not by its level.
# Chosen on SKAB's anomaly-free file, rows 1-5,000 (see README: tuning procedure), never on test files.
WANDER_LIMIT = 0.5
AUTO = "auto"


def wandering_channels(segments: Sequence[np.ndarray], limit: float = WANDER_LIMIT) -> tuple[int, ...]:
    """Channels whose level wanders within the training data: half-to-half mean shift over ``limit`` std.

    >>> t = np.arange(1000.0)
    >>> rng = np.random.default_rng(0)
    >>> steady, heating = rng.normal(0, 1, 1000), 20 + t / 100 + rng.normal(0, 1, 1000)
    >>> wandering_channels([np.stack([steady, heating], axis=1)])
    (1,)
    """
    pooled = np.concatenate(segments)
    std = np.nanstd(pooled, axis=0)
    std = np.where(std > 0, std, 1.0)
    shifts, weights = [], []
    for segment in segments:
        half = len(segment) // 2
        if half < 2:
            continue
        shifts.append(np.abs(np.nanmean(segment[half:], axis=0) - np.nanmean(segment[:half], axis=0)) / std)
        weights.append(len(segment))
    if not shifts:
        return ()
    shift = np.average(np.stack(shifts), axis=0, weights=weights)
    return tuple(int(i) for i in np.flatnonzero(shift > limit))


class ThresholdNotSetError(RuntimeError):
    """predict() was called on a detector whose threshold has not been calibrated."""


@dataclass(frozen=True)
class Detection:
    """One row per window: where it ends, its error, whether it exceeded, and the filtered alarm."""

    window_end_row: np.ndarray  # [n] row index of each window's last reading
    error: np.ndarray  # [n] NaN for windows rejected for non-finite readings
    channel_error: np.ndarray  # [n, channels]
    exceeded: np.ndarray  # [n] bool
    alarm: np.ndarray  # [n] bool, after the k-of-n filter
    threshold: np.ndarray  # [n] the threshold each window was judged against (its regime's)

    def to_frame(self, timestamps: pd.Index, window: int, channels: Sequence[str]) -> pd.DataFrame:
        """One row per window: start/end time, error, threshold, flags and per-channel errors."""
        start_rows = self.window_end_row - (window - 1)
        frame = pd.DataFrame(
            {
                "window_start": np.asarray(timestamps)[start_rows],
                "window_end": np.asarray(timestamps)[self.window_end_row],
                "error": self.error,
                "threshold": self.threshold,
                "exceeded": self.exceeded,
                "anomaly": self.alarm,
            }
        )
        for i, channel in enumerate(channels):
            frame[f"error_{channel}"] = self.channel_error[:, i]
        return frame

    def row_flags(self, n_rows: int, window_flags: np.ndarray | None = None) -> np.ndarray:
        """Alarms as per-row flags ``[n_rows]``: row ``t`` takes the alarm of the window ending at ``t``.

        ``window_flags`` (one per window) replaces the alarms, e.g. flags from another judge of the errors.
        """
        flags = np.zeros(n_rows, dtype=bool)
        flags[self.window_end_row] = self.alarm if window_flags is None else window_flags
        return flags


class AnomalyDetector:
    """A fitted detector; persist with :func:`models.checkpoint.save_checkpoint`."""

    def __init__(
        self,
        model: LSTMAutoencoder,
        scaler: StandardScaler,
        threshold: Threshold | None = None,
        alarm: AlarmFilter = AlarmFilter(),
        channels: tuple[str, ...] | None = None,
        training: TrainingResult | None = None,
        regimes: Regimes | None = None,
    ) -> None:
        if scaler.n_channels != model.config.n_channels:
            raise ValueError("scaler and model disagree on the number of channels")
        self.model = model
        self.scaler = scaler
        self.threshold = threshold  # one threshold over every regime: the fallback, and what a listing shows
        self.regimes = regimes  # per-regime thresholds (set by retraining after a regime change) or None
        self.alarm = alarm
        self.channels = channels or tuple(f"ch{i}" for i in range(scaler.n_channels))
        self.training = training
        # seconds between readings of the training data (None: unknown, e.g. an older checkpoint)
        self.sample_period_s: float | None = None
        self.calibration_errors: np.ndarray | None = None  # errors the threshold was fitted on (after fit)

    @property
    def window(self) -> int:
        return self.model.config.window

    @classmethod
    def fit(
        cls,
        readings: np.ndarray | Sequence[np.ndarray],
        *,
        window: int = DEFAULT_WINDOW,
        hidden_size: int = DEFAULT_HIDDEN_SIZE,
        num_layers: int = 1,
        latent_size: int = DEFAULT_LATENT_SIZE,
        bottleneck: str = "window",
        latent_variance_share: float | None = None,
        dropout: float = 0.0,
        score_steps: int | None = DEFAULT_SCORE_STEPS,
        score_channel_share: float | None = DEFAULT_SCORE_CHANNEL_SHARE,
        training: TrainingConfig = TrainingConfig(),
        rule: ThresholdRule = QuantileRule(0.99),
        threshold_margin: float = 1.0,
        full_stretch_readings: int = DEFAULT_FULL_STRETCH_READINGS,
        calibration_fraction: float = 0.2,
        calibration_folds: int = 0,
        alarm: AlarmFilter = AlarmFilter(),
        channels: tuple[str, ...] | None = None,
        relative_channels: Sequence[str | int] | str = (),
    ) -> AnomalyDetector:
        """Train on normal ``readings`` ``[time, channels]``; calibrate ``rule`` on held-out windows.

        ``readings`` may also be a list of segments (one per sensor or per file): windows never cross
        a segment boundary. Each segment is split in time into training, early-stopping validation and
        (its last ``calibration_fraction``) calibration windows: ``rule`` is fitted on errors of windows
        the weights were neither trained nor selected on (:class:`models.threshold.TargetFarRule` states
        it as a per-window false-alarm rate). Too little data raises :class:`NotEnoughDataError`.

        The calibrated threshold is multiplied by ``threshold_margin`` (>1 trades misses for fewer
        false alarms when normal operation outside the training period varies more than inside it),
        and, when the segments are shorter than ``full_stretch_readings`` readings on average, by
        :func:`models.threshold.short_stretch_margin` (a short stretch holds little of the normal
        variation to come; 0: never).
        ``relative_channels`` (names from ``channels`` or indices) enter the model relative to each
        window's mean (see :mod:`models.preprocessing`): for slow channels such as temperatures.
        ``"auto"`` picks them from the data: :func:`wandering_channels`. A window is scored by the
        reconstruction error of its last ``score_steps`` readings (None: all; see :mod:`models.scoring`),
        averaged over its largest channel errors, ``score_channel_share`` of the channels rounded up
        (None: every channel).
        ``bottleneck`` is the network's (``"window"`` or ``"step"``, see :mod:`models.lstm_ae`); with
        ``latent_variance_share`` the latent size is instead the number of principal components of the
        scaled training readings that explain that share of their variance
        (:func:`models.preprocessing.components_for_variance`), so the code grows with how many
        independent directions the channels really have. With ``calibration_folds`` > 1 the
        threshold is fitted on out-of-block errors of that many time-blocked cross-fitting models
        over all the normal windows (:mod:`models.crossfit`) instead of one held-out slice.
        """
        segments = [readings] if isinstance(readings, np.ndarray) else list(readings)
        if relative_channels == AUTO or (not isinstance(relative_channels, str) and AUTO in relative_channels):
            relative = wandering_channels(segments)
            names = [channels[i] if channels else str(i) for i in relative]
            log.info("channels whose level wanders in the training data enter relative to each window: %s", names)
        else:
            relative = _channel_indices(relative_channels, channels, segments[0].shape[1])
        scaler = StandardScaler.fit(np.concatenate(segments), relative)
        cal_fraction = 0.0 if calibration_folds else calibration_fraction
        train, val, cal = _split_windows(segments, scaler, window, training.val_fraction, cal_fraction)
        steps = None if score_steps is None else min(score_steps, window)
        n_channels = segments[0].shape[1]
        if latent_variance_share is not None:
            pooled = np.concatenate([scaler.transform(segment) for segment in segments])
            finite = pooled[np.isfinite(pooled).all(axis=1)]
            latent_size = max(1, components_for_variance(finite, latent_variance_share))
            log.info("latent size %d: components for %.0f%% of the variance", latent_size, 100 * latent_variance_share)
        if bottleneck == "step" and n_channels < 2:
            raise ValueError("a per-step bottleneck needs at least 2 channels (model.bottleneck = 'window' for one)")
        score_channels = None if score_channel_share is None else max(1, math.ceil(score_channel_share * n_channels))
        config = LSTMAEConfig(
            n_channels, window, hidden_size, num_layers, latent_size, dropout, steps, bottleneck, score_channels
        )
        torch.manual_seed(training.seed)  # the initial weights too, not only the batch order
        model = LSTMAutoencoder(config)
        result = train_autoencoder(model, train, training, val_windows=val)
        detector = cls(model, scaler, alarm=alarm, channels=channels, training=result)
        if calibration_folds:
            segment_windows = [scaler.scaled_windows(segment, window) for segment in segments]
            epochs = result.best_epoch
            calibration_errors = crossfit_errors(segment_windows, config, training, epochs, calibration_folds)
        else:
            calibration_errors = reconstruction_errors(model, cal).error
        lengths = [len(segment) for segment in segments]
        short = short_stretch_margin(lengths, full_stretch_readings)
        threshold = rule.fit(calibration_errors).with_margin(threshold_margin)
        detector.threshold = threshold.with_margin(short, param="short_stretch_margin")
        if short > 1.0:
            log.warning(
                "only %d normal readings per segment: the threshold is widened %.2fx for the variation a short "
                "stretch does not hold (none from %d readings on; model.full_stretch_readings)",
                np.mean(lengths),
                short,
                full_stretch_readings,
            )
        detector.calibration_errors = calibration_errors  # kept in memory (benchmarks), not in checkpoints
        return detector

    def to(self, device: str | torch.device) -> AnomalyDetector:
        self.model.to(resolve_device(str(device)))
        return self

    def score(self, readings: np.ndarray, batch_size: int = 1024) -> tuple[np.ndarray, WindowScores]:
        """Window end rows ``[n]`` and scores of every window of ``readings``; NaN where rejected."""
        windows = self.scaler.scaled_windows(readings, self.window)
        return window_end_rows(len(readings), self.window), self._score_windows(windows, batch_size)

    def _score_windows(self, windows: np.ndarray, batch_size: int) -> WindowScores:
        ok = finite_windows(windows)
        scored = reconstruction_errors(self.model, windows[ok], batch_size)
        error = np.full(len(windows), np.nan, dtype=np.float32)
        channel_error = np.full((len(windows), self.scaler.n_channels), np.nan, dtype=np.float32)
        error[ok], channel_error[ok] = scored.error, scored.channel_error
        return WindowScores(error, channel_error)

    def window_thresholds(self, scaled_windows: np.ndarray) -> np.ndarray:
        """The threshold each of ``scaled_windows`` ``[n, window, channels]`` is judged against ``[n]``.

        With :attr:`regimes`, the threshold of each window's likeliest regime; else the one threshold.
        """
        if self.threshold is None:
            raise ThresholdNotSetError("no threshold yet: fit() the detector or load a checkpoint")
        if self.regimes is None:
            return np.full(len(scaled_windows), self.threshold.value, dtype=np.float64)
        return self.regimes.thresholds(window_levels(scaled_windows))

    def predict(self, readings: np.ndarray, batch_size: int = 1024) -> Detection:
        windows = self.scaler.scaled_windows(readings, self.window)  # once, for the scores and the regimes
        thresholds = self.window_thresholds(windows)
        scores = self._score_windows(windows, batch_size)
        ends = window_end_rows(len(readings), self.window)
        exceeded = np.nan_to_num(scores.error, nan=-np.inf) > thresholds
        return Detection(ends, scores.error, scores.channel_error, exceeded, self.alarm.apply(exceeded), thresholds)
