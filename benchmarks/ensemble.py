"""The LSTM-AE beside a cheap statistical detector (PCA Q), as one ensemble with one false-alarm budget.

A window alarms when the LSTM-AE's error passes its threshold at ``target_far / 2`` (recalibrated on
the same held-out errors) or the PCA Q statistic of the window's last reading passes its
Jackson-Mudholkar limit at ``1 - target_far / 2``: a Bonferroni split, so the ensemble promises the
same per-window rate as either alone. PCA is fitted on the same normal data as the detector, with the
fewest components that explain 90 % of its variance (the cumulative-percent-variance rule, the
usual default when nothing else is known about a plant). Measured by ``benchmark tep``, ``benchmark
calibration`` and ``benchmark skab --judge ensemble``; nothing here is tuned.

>>> rng = np.random.default_rng(0)
>>> normal = rng.normal(size=(600, 3))
>>> from benchmarks.untuned import DetectorSettings
>>> from models.training import TrainingConfig
>>> from pipeline.config import ModelSettings
>>> model = ModelSettings(window=8, hidden_size=8, latent_size=2, relative_channels=[])
>>> settings = DetectorSettings(model, TrainingConfig(epochs=2, progress=False))
>>> ensemble = Ensemble.fit(settings.fit(normal), normal, 0.01)
>>> flags = ensemble.window_flags(normal, ensemble.detector.predict(normal))
>>> flags.shape, bool(flags.mean() < 0.2)
((593,), True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from benchmarks.tep import PcaMonitor
from models.detector import AnomalyDetector, Detection
from models.preprocessing import components_for_variance
from models.threshold import TargetFarRule

VARIANCE_SHARE = 0.9


@dataclass(frozen=True)
class Ensemble:
    detector: AnomalyDetector
    pca: PcaMonitor
    lstm_threshold: float

    @classmethod
    def fit(cls, detector: AnomalyDetector, normal: np.ndarray | Sequence[np.ndarray], target_far: float) -> Ensemble:
        """Split ``target_far`` between a fitted ``detector`` and a PCA Q monitor fitted on ``normal``."""
        pooled = normal if isinstance(normal, np.ndarray) else np.concatenate(list(normal))
        if detector.calibration_errors is None:
            raise ValueError("the detector keeps no calibration errors (fit it in this process)")
        threshold = TargetFarRule(target_far / 2).fit(detector.calibration_errors).value
        pca = PcaMonitor.fit(pooled, components_for_variance(pooled, VARIANCE_SHARE), confidence=1.0 - target_far / 2)
        return cls(detector, pca, threshold)

    def window_flags(self, readings: np.ndarray, detection: Detection) -> np.ndarray:
        """Per window of ``readings``, given the detector's ``detection`` of them: either alarms."""
        lstm = np.nan_to_num(detection.error, nan=-np.inf) > self.lstm_threshold
        q = self.pca.statistics(readings)[1][detection.window_end_row] > self.pca.q_limit
        return np.asarray(lstm | q)
