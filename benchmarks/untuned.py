"""The one detector configuration every detection benchmark uses: the configuration object's defaults.

Nothing here is tuned per data set; see the README's tuning procedure for what was chosen, and on what.
A benchmark's detector is fitted exactly as ``driftline train`` fits one: with the arguments of
:meth:`pipeline.config.ModelSettings.fit_options` (network, score, threshold rule, margin, k-of-n,
relative channels, calibration) and the ``[training]`` section.

>>> from pipeline.config import load_config
>>> settings = DetectorSettings.from_config(load_config())
>>> settings.window, settings.target_far, settings.model.relative_channels
(30, 0.01, ['auto'])
>>> settings.with_overrides(score_steps=10, input_noise=0.1).model.score_steps
10
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from models.detector import AnomalyDetector
from models.training import TrainingConfig
from pipeline.config import DriftlineConfig, ModelSettings


@dataclass(frozen=True)
class DetectorSettings:
    """The ``[model]`` section and the training settings of the detectors a benchmark fits."""

    model: ModelSettings
    training: TrainingConfig

    @classmethod
    def from_config(cls, config: DriftlineConfig) -> DetectorSettings:
        return cls(config.model, replace(config.training, progress=False))

    @property
    def window(self) -> int:
        return self.model.window

    @property
    def target_far(self) -> float:
        """The nominal per-window false-alarm rate the benchmarks compare with (``model.target_far``)."""
        return self.model.target_far

    def with_overrides(self, **overrides: Any) -> DetectorSettings:
        """These settings with fields replaced: ``TrainingConfig`` fields in training, the rest in the model
        section (validated as the configuration validates them)."""
        training_fields = {f.name for f in fields(self.training)}
        training = {k: v for k, v in overrides.items() if k in training_fields}
        model = {k: v for k, v in overrides.items() if k not in training_fields}
        merged = ModelSettings.model_validate({**self.model.model_dump(), **model})
        return DetectorSettings(merged, replace(self.training, **training))

    def fit(
        self, segments: np.ndarray | Sequence[np.ndarray], channels: tuple[str, ...] | None = None
    ) -> AnomalyDetector:
        """A detector on normal ``segments``, fitted as ``driftline train`` fits one."""
        return AnomalyDetector.fit(segments, **self.model.fit_options(), training=self.training, channels=channels)
