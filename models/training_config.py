"""Training hyperparameters, importable without torch (the config and the CLI's --help stay fast).

>>> TrainingConfig(epochs=5).to_dict()["epochs"]
5
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 60
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 1e-5
    val_fraction: float = 0.2
    patience: int = 10
    grad_clip: float = 1.0
    lr_decay_patience: int = 4
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    progress: bool = True
    # denoising: Gaussian noise of this standard deviation (in scaled units) is added to the inputs while
    # training, the target stays the clean window, so the network cannot learn the identity map
    input_noise: float = 0.0
    # the loss: "window" (every reading of each window) or "scored" (only the last ``score_steps``
    # readings of the network's config, the ones a window's error is computed from)
    loss_steps: Literal["window", "scored"] = "window"

    def __post_init__(self) -> None:
        if self.loss_steps not in ("window", "scored"):
            raise ValueError(f"TrainingConfig.loss_steps must be 'window' or 'scored', got {self.loss_steps!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
