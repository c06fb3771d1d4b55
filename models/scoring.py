"""Batched reconstruction-error scoring with per-channel contributions.

The per-channel error of a window is the mean squared reconstruction error over its last
``score_steps`` steps (the model config's; all steps when unset), so an operator can see which channel
drives an anomaly. The window's error is the mean of those channel errors: over every channel, or with
the config's ``score_channels`` over that many largest (:func:`window_error`), so that a fault on a few
channels is not averaged away by the quiet rest.

Why the last steps and not the whole window: a mean over ``window x channels`` squared residuals has
a very narrow spread, so any change of normal operation's noise level after training (another run,
another shift) moves most normal windows past a threshold set at 1 %. Averaging fewer residuals keeps
a wider null distribution whose upper quantile moves less, and it weighs the newest readings, the
ones the window's alarm is about. See the README's tuning procedure for how 5 was chosen.

>>> import numpy as np
>>> from models.lstm_ae import LSTMAEConfig, LSTMAutoencoder
>>> model = LSTMAutoencoder(LSTMAEConfig(n_channels=3, window=8, hidden_size=8, latent_size=2))
>>> scores = reconstruction_errors(model, np.zeros((10, 8, 3), dtype=np.float32), batch_size=4)
>>> scores.error.shape, scores.channel_error.shape
((10,), (10, 3))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.lstm_ae import LSTMAutoencoder


@dataclass(frozen=True)
class WindowScores:
    """Reconstruction error per window ``[n]`` and per window and channel ``[n, channels]``."""

    error: np.ndarray
    channel_error: np.ndarray

    def __len__(self) -> int:
        return int(self.error.shape[0])


def reconstruction_errors(
    model: LSTMAutoencoder, windows: np.ndarray, batch_size: int = 1024, device: torch.device | str | None = None
) -> WindowScores:
    """Score scaled, finite ``windows`` ``[n, window, channels]`` in micro-batches of ``batch_size``."""
    if device is None:
        device = next(model.parameters()).device
    model.eval()
    channels = windows.shape[-1] if windows.ndim == 3 else 0
    if len(windows) == 0:
        return WindowScores(np.empty(0, dtype=np.float32), np.empty((0, channels), dtype=np.float32))
    steps = model.config.score_steps or windows.shape[1]
    parts: list[np.ndarray] = []
    with torch.inference_mode():
        for start in range(0, len(windows), batch_size):
            batch = torch.as_tensor(
                np.ascontiguousarray(windows[start : start + batch_size]), dtype=torch.float32, device=device
            )  # [batch, window, channels]
            squared = (model(batch) - batch).pow(2)  # [batch, window, channels]
            parts.append(squared[:, -steps:].mean(dim=1).float().cpu().numpy())  # [batch, channels]
    channel_error = np.concatenate(parts)
    return WindowScores(window_error(channel_error, model.config.score_channels), channel_error)


def window_error(channel_error: np.ndarray, score_channels: int | None = None) -> np.ndarray:
    """Each window's error ``[n]`` from its per-channel errors ``[n, channels]``: their mean, or with
    ``score_channels`` the mean of that many largest.

    >>> window_error(np.array([[1.0, 2.0, 6.0]])).tolist(), window_error(np.array([[1.0, 2.0, 6.0]]), 2).tolist()
    ([3.0], [4.0])
    """
    channels = channel_error.shape[1]
    if score_channels is None or score_channels >= channels:
        return np.asarray(channel_error.mean(axis=1))
    largest = np.partition(channel_error, channels - score_channels, axis=1)[:, channels - score_channels :]
    return np.asarray(largest.mean(axis=1))
