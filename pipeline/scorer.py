"""Scores a micro-batch of windows on the current model, with streaming k-of-n alarm state per sensor.

Scoring is two stages, so the loop can account for each: :meth:`WindowScorer.reconstruct` (scale the
windows, run the autoencoder) and :meth:`WindowScorer.judge` (thresholds and the k-of-n filter);
:meth:`WindowScorer.score` does both.

>>> import numpy as np
>>> from models.detector import AnomalyDetector
>>> from models.training import TrainingConfig
>>> from pipeline.windows import Window, WindowBatch
>>> detector = AnomalyDetector.fit(np.random.default_rng(0).normal(size=(300, 2)), window=5, hidden_size=8,
...                                latent_size=2, training=TrainingConfig(epochs=1, progress=False))
>>> scorer = WindowScorer(detector, "v000001")
>>> window = Window("s1", 0.0, 4.0, np.zeros((5, 2)), ("t", 0, 4), ("t", 0, 0))
>>> scored = scorer.score(WindowBatch.of([window, window]))
>>> scored.error.shape, scored.model_version
((2,), 'v000001')
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from models.detector import AnomalyDetector
from models.scoring import WindowScores, reconstruction_errors
from models.threshold import StreamingAlarm
from pipeline.windows import WindowBatch


def share_cores(model_threads: int) -> None:
    """Initialise a model thread: its share of the cores for PyTorch's intra-op work (no oversubscription).

    ``model_threads`` threads each running the model on their own micro-batch use the cores with less
    synchronisation than one batch at a time on a pool of every core.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(max(1, cores // model_threads))


@dataclass(frozen=True)
class ScoredBatch:
    """A judged micro-batch: per window its error, per-channel errors, exceedance, alarm and threshold."""

    windows: WindowBatch
    error: np.ndarray  # [n]
    channel_error: np.ndarray  # [n, channels]
    exceeded: np.ndarray  # [n] bool
    anomaly: np.ndarray  # [n] bool, after the per-sensor k-of-n filter
    threshold: np.ndarray  # [n] the threshold each window was judged against (its regime's)
    model_version: str


@dataclass(frozen=True)
class Reconstruction:
    """What :meth:`WindowScorer.reconstruct` gives :meth:`WindowScorer.judge`: the model it used, its input
    and its errors (so a swap between the two stages cannot mix two models)."""

    windows: WindowBatch
    detector: AnomalyDetector
    model_version: str
    scaled: np.ndarray  # [n, window, channels]
    scores: WindowScores


class WindowScorer:
    """Holds the serving model; :meth:`swap` replaces it between micro-batches."""

    def __init__(self, detector: AnomalyDetector, model_version: str, batch_size: int = 4096) -> None:
        self.batch_size = batch_size
        self._alarm = StreamingAlarm()  # per-sensor k-of-n state
        self.swap(detector, model_version)

    def swap(self, detector: AnomalyDetector, model_version: str) -> None:
        if detector.threshold is None:
            raise ValueError(f"model {model_version} has no calibrated threshold; it cannot serve")
        self.detector = detector
        self.model_version = model_version
        self._alarm.reset()  # alarm history belongs to the old model's threshold

    def forget(self, sensor_ids: list[str]) -> None:
        """Drop the k-of-n history of sensors gone idle."""
        self._alarm.forget(sensor_ids)

    @property
    def window(self) -> int:
        return self.detector.window

    @property
    def channels(self) -> tuple[str, ...]:
        return self.detector.channels

    def reconstruct(
        self, windows: WindowBatch, detector: AnomalyDetector | None = None, model_version: str | None = None
    ) -> Reconstruction:
        """Scale ``windows`` and run the model on them (the compute-heavy stage; safe on several threads).

        ``detector`` and ``model_version`` default to the serving model; the loop passes the model that
        was serving when the batch was handed over, so a batch never straddles a swap.
        """
        if detector is None or model_version is None:
            detector, model_version = self.detector, self.model_version
        channels = len(detector.channels)
        if not len(windows):
            empty = np.empty(0, dtype=np.float32)
            scores = WindowScores(empty, np.empty((0, channels), np.float32))
            return Reconstruction(
                windows, detector, self.model_version, np.empty((0, detector.window, channels)), scores
            )
        scaled = detector.scaler.transform_windows(windows.values)  # [n, window, channels]
        scores = reconstruction_errors(detector.model, scaled, self.batch_size)
        return Reconstruction(windows, detector, model_version, scaled, scores)

    def judge(self, reconstruction: Reconstruction) -> ScoredBatch:
        """Thresholds and the per-sensor k-of-n filter for what :meth:`reconstruct` gave."""
        detector, scores = reconstruction.detector, reconstruction.scores
        if not len(reconstruction.windows):
            thresholds = np.empty(0, dtype=np.float32)
            exceeded = anomaly = np.empty(0, dtype=bool)
        else:
            thresholds = detector.window_thresholds(reconstruction.scaled)
            exceeded = scores.error > thresholds
            anomaly = self._alarm.update(reconstruction.windows.sensor_id, exceeded, detector.alarm)
        return ScoredBatch(
            reconstruction.windows,
            scores.error,
            scores.channel_error,
            exceeded,
            anomaly,
            thresholds,
            reconstruction.model_version,
        )

    def score(self, windows: WindowBatch) -> ScoredBatch:
        """Both stages: the scored batch."""
        return self.judge(self.reconstruct(windows))
