"""LSTM encoder-decoder autoencoder for multivariate sensor windows.

The encoder reads a window ``[batch, window, channels]``; the decoder reconstructs it from a latent
code, and the per-step linear read-out gives the reconstruction. Where the code sits is the
``bottleneck``:

- ``"window"``: the encoder's last hidden state becomes one latent vector for the whole window, which
  the decoder unrolls over every step (the classic sequence autoencoder);
- ``"step"``: every step's hidden state becomes a latent vector of ``latent_size`` and the decoder
  reads the sequence of codes. Step ``t`` is rebuilt from codes of steps ``<= t`` only, so what the
  history does not predict of a reading has to pass through ``latent_size`` numbers: a nonlinear,
  temporal relative of PCA's residual (Q), which sees broken correlations between channels that a
  window-wide code of a few numbers cannot reconstruct in the first place.

A window's reconstruction error depends only on the readings inside it, so scoring the window that
ends at time ``t`` is causal either way.

>>> import torch
>>> model = LSTMAutoencoder(LSTMAEConfig(n_channels=3, window=20, hidden_size=16, latent_size=4))
>>> model(torch.zeros(5, 20, 3)).shape
torch.Size([5, 20, 3])
>>> stepwise = LSTMAutoencoder(LSTMAEConfig(n_channels=3, window=20, latent_size=2, bottleneck="step"))
>>> stepwise.encode(torch.zeros(5, 20, 3)).shape  # one code per step
torch.Size([5, 20, 2])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from models.defaults import DEFAULT_HIDDEN_SIZE, DEFAULT_LATENT_SIZE, DEFAULT_WINDOW

BOTTLENECKS = ("window", "step")


@dataclass(frozen=True)
class LSTMAEConfig:
    """Shape of the network; stored in every checkpoint so that the loader can rebuild it."""

    n_channels: int
    window: int = DEFAULT_WINDOW
    hidden_size: int = DEFAULT_HIDDEN_SIZE
    num_layers: int = 1
    latent_size: int = DEFAULT_LATENT_SIZE
    dropout: float = 0.0
    # readings at the end of each window whose reconstruction error scores it (None: the whole window,
    # as checkpoints written before this field was added)
    score_steps: int | None = None
    # "window": one latent vector per window; "step": one per reading (checkpoints written before this
    # field have "window")
    bottleneck: str = "window"
    # channels whose errors score a window: the mean over its score_channels largest channel errors
    # (None: every channel, as checkpoints written before this field)
    score_channels: int | None = None

    def __post_init__(self) -> None:
        for name in ("n_channels", "window", "hidden_size", "num_layers", "latent_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"LSTMAEConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.score_steps is not None and not 1 <= self.score_steps <= self.window:
            raise ValueError(f"LSTMAEConfig.score_steps must be in [1, window={self.window}], got {self.score_steps}")
        if self.score_channels is not None and not 1 <= self.score_channels <= self.n_channels:
            raise ValueError(
                f"LSTMAEConfig.score_channels must be in [1, n_channels={self.n_channels}], got {self.score_channels}"
            )
        if self.bottleneck not in BOTTLENECKS:
            raise ValueError(f"LSTMAEConfig.bottleneck must be one of {BOTTLENECKS}, got {self.bottleneck!r}")
        if self.bottleneck == "step" and self.latent_size >= self.n_channels:
            raise ValueError(
                f"a per-step code of latent_size={self.latent_size} for {self.n_channels} channels can copy every "
                "reading (identity mapping) and then reconstructs anomalies too: use latent_size < n_channels"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LSTMAEConfig.dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LSTMAEConfig:
        return cls(**values)


class LSTMAutoencoder(nn.Module):
    """Encoder LSTM -> latent vector -> decoder LSTM -> per-step linear read-out."""

    def __init__(self, config: LSTMAEConfig) -> None:
        super().__init__()
        self.config = config
        inner_dropout = config.dropout if config.num_layers > 1 else 0.0
        self.encoder = nn.LSTM(
            config.n_channels, config.hidden_size, config.num_layers, batch_first=True, dropout=inner_dropout
        )
        self.to_latent = nn.Linear(config.hidden_size, config.latent_size)
        self.from_latent = nn.Linear(config.latent_size, config.hidden_size)
        self.decoder = nn.LSTM(
            config.hidden_size, config.hidden_size, config.num_layers, batch_first=True, dropout=inner_dropout
        )
        self.readout = nn.Linear(config.hidden_size, config.n_channels)

    def encode(self, windows: torch.Tensor) -> torch.Tensor:
        """The latent code of ``windows``: ``[batch, latent]`` (window bottleneck) or ``[batch, steps, latent]``."""
        encoded, (hidden, _) = self.encoder(windows)  # encoded: [batch, steps, hidden]; hidden: [layers, batch, hidden]
        latent: torch.Tensor = self.to_latent(encoded if self.config.bottleneck == "step" else hidden[-1])
        return latent

    def decode(self, latent: torch.Tensor, steps: int) -> torch.Tensor:
        seed = self.from_latent(latent)  # [batch, hidden] or [batch, steps, hidden]
        if seed.dim() == 2:
            seed = seed.unsqueeze(1).expand(-1, steps, -1)  # the window's one code at every step
        decoded, _ = self.decoder(seed.contiguous())  # [batch, steps, hidden]
        out: torch.Tensor = self.readout(decoded)  # [batch, steps, channels]
        return out

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``windows`` ``[batch, window, channels]``; same shape out."""
        return self.decode(self.encode(windows), windows.shape[1])
