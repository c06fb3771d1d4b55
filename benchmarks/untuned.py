"""The one detector configuration every detection benchmark uses: the configuration object's defaults.

Nothing here is tuned per data set; see the README's tuning procedure for what was chosen, and on what.

>>> from pipeline.config import load_config
>>> settings = DetectorSettings.from_config(load_config())
>>> settings.window, settings.target_far, settings.relative_channels
(30, 0.01, ('auto',))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from models.detector import AnomalyDetector
from models.threshold import TargetFarRule
from models.training import TrainingConfig
from pipeline.config import DriftlineConfig


@dataclass(frozen=True)
class DetectorSettings:
    """Network shape, training and threshold of the detectors a benchmark fits."""

    window: int
    hidden_size: int
    latent_size: int
    target_far: float
    training: TrainingConfig
    relative_channels: tuple[str, ...] = ()
    calibration_folds: int = 0
    score_steps: int | None = None

    @classmethod
    def from_config(cls, config: DriftlineConfig) -> DetectorSettings:
        model = config.model
        return cls(
            window=model.window,
            hidden_size=model.hidden_size,
            latent_size=model.latent_size,
            target_far=model.target_far,
            training=replace(config.training, progress=False),
            relative_channels=tuple(model.relative_channels),
            calibration_folds=model.calibration_folds,
            score_steps=model.score_steps,
        )

    def fit(
        self, segments: np.ndarray | Sequence[np.ndarray], channels: tuple[str, ...] | None = None
    ) -> AnomalyDetector:
        """A detector on normal ``segments``, its threshold at ``target_far`` per window."""
        return AnomalyDetector.fit(
            segments,
            window=self.window,
            hidden_size=self.hidden_size,
            latent_size=self.latent_size,
            training=self.training,
            rule=TargetFarRule(self.target_far),
            relative_channels=self.relative_channels,
            calibration_folds=self.calibration_folds,
            score_steps=self.score_steps,
            channels=channels,
        )
