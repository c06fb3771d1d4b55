"""Scores a micro-batch of windows on the current model, with streaming k-of-n alarm state per sensor.

>>> import numpy as np
>>> from models.detector import AnomalyDetector
>>> from models.training import TrainingConfig
>>> from pipeline.windows import Window
>>> detector = AnomalyDetector.fit(np.random.default_rng(0).normal(size=(300, 2)), window=5, hidden_size=8,
...                                latent_size=2, training=TrainingConfig(epochs=1, progress=False))
>>> scorer = WindowScorer(detector, "v000001")
>>> window = Window("s1", 0.0, 4.0, np.zeros((5, 2)), ("t", 0, 4), ("t", 0, 0))
>>> scored = scorer.score([window, window])
>>> scored.error.shape, scored.model_version
((2,), 'v000001')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.detector import AnomalyDetector
from models.scoring import reconstruction_errors
from models.threshold import StreamingAlarm
from pipeline.windows import Window


@dataclass(frozen=True)
class ScoredBatch:
    windows: Sequence[Window]
    error: np.ndarray  # [n]
    channel_error: np.ndarray  # [n, channels]
    exceeded: np.ndarray  # [n] bool
    anomaly: np.ndarray  # [n] bool, after the per-sensor k-of-n filter
    threshold: np.ndarray  # [n] the threshold each window was judged against (its regime's)
    model_version: str


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

    @property
    def window(self) -> int:
        return self.detector.window

    @property
    def channels(self) -> tuple[str, ...]:
        return self.detector.channels

    def score(self, windows: Sequence[Window]) -> ScoredBatch:
        detector = self.detector
        assert detector.threshold is not None
        if not windows:
            empty = np.empty(0, dtype=np.float32)
            return ScoredBatch(
                windows,
                empty,
                np.empty((0, len(self.channels)), np.float32),
                empty.astype(bool),
                empty.astype(bool),
                empty,
                self.model_version,
            )
        scaled = detector.scaler.transform_windows(np.stack([w.values for w in windows]))  # [n, window, channels]
        scores = reconstruction_errors(detector.model, scaled, self.batch_size)
        thresholds = detector.window_thresholds(scaled)
        exceeded = scores.error > thresholds
        anomaly = self._alarm.update([w.sensor_id for w in windows], exceeded, detector.alarm)
        return ScoredBatch(
            windows,
            scores.error,
            scores.channel_error,
            exceeded,
            anomaly,
            thresholds,
            self.model_version,
        )
