"""Per-channel scaling and window building, the exact preprocessing stored with each model.

Relative channels: a channel listed in ``StandardScaler.relative`` enters the model as its shape
within each window (the window's own mean subtracted after scaling), not as its absolute level. Use it
for slow channels whose level depends on the run's history rather than on the machine's state now,
such as temperatures with thermal inertia: the model then sees how they move, and an offset that
outlasts its cause (a pump still warm after an incident) raises no alarm.

Non-finite policy: a window holding any NaN or +/-inf reading is *rejected* (never imputed into the
model, never trained on); callers get its index and the reason so that it can be dead-lettered.

>>> import numpy as np
>>> scaler = StandardScaler.fit(np.array([[1.0, 10.0], [3.0, 30.0]]))
>>> scaler.transform(np.array([[2.0, 20.0]])).tolist()
[[0.0, 0.0]]
>>> sliding_windows(np.arange(10.0).reshape(5, 2), length=3, stride=2).shape
(2, 3, 2)
>>> relative = StandardScaler((0.0, 0.0), (1.0, 1.0), relative=(1,))
>>> relative.transform_windows(np.array([[[5.0, 20.0], [7.0, 22.0]]]))[0].tolist()
[[5.0, -1.0], [7.0, 1.0]]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# A channel whose training spread is below this is treated as constant: scaled by 1, not by ~0.
MIN_STD = 1e-6


@dataclass(frozen=True)
class StandardScaler:
    """``(x - mean) / std`` per channel, with statistics fitted on training readings only."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    relative: tuple[int, ...] = ()  # channel indices scored relative to their window mean

    def __post_init__(self) -> None:
        if any(not 0 <= i < len(self.mean) for i in self.relative) or len(set(self.relative)) != len(self.relative):
            raise ValueError(f"relative channels {self.relative} must be distinct indices below {len(self.mean)}")

    @classmethod
    def fit(cls, readings: np.ndarray, relative: tuple[int, ...] = ()) -> StandardScaler:
        """Fit on ``readings`` ``[time, channels]``; rows with non-finite values are ignored."""
        if readings.ndim != 2:
            raise ValueError(f"expected [time, channels], got shape {readings.shape}")
        finite_rows = readings[np.isfinite(readings).all(axis=1)]
        if len(finite_rows) < 2:
            raise ValueError("need at least two finite rows to fit a scaler")
        std = finite_rows.std(axis=0)
        std = np.where(std < MIN_STD, 1.0, std)
        return cls(tuple(finite_rows.mean(axis=0).tolist()), tuple(std.tolist()), tuple(relative))

    @property
    def n_channels(self) -> int:
        return len(self.mean)

    def transform(self, readings: np.ndarray) -> np.ndarray:
        """Scale ``readings`` ``[..., channels]``; float32 out."""
        if readings.shape[-1] != self.n_channels:
            raise ValueError(f"scaler was fitted on {self.n_channels} channels, got {readings.shape[-1]}")
        mean = np.asarray(self.mean, dtype=np.float64)
        std = np.asarray(self.std, dtype=np.float64)
        return ((readings - mean) / std).astype(np.float32)

    def transform_windows(self, windows: np.ndarray) -> np.ndarray:
        """Scale ``windows`` ``[n, window, channels]`` and centre the relative channels in each window."""
        scaled = self.transform(windows)
        if self.relative:
            index = list(self.relative)
            scaled[..., index] -= scaled[..., index].mean(axis=-2, keepdims=True)
        return scaled

    def scaled_windows(self, readings: np.ndarray, length: int) -> np.ndarray:
        """Windows of ``readings`` ``[time, channels]`` as the model sees them (a view without relative channels)."""
        if not self.relative:
            return sliding_windows(self.transform(readings), length)
        return self.transform_windows(sliding_windows(readings, length))

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std), "relative": list(self.relative)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> StandardScaler:
        mean, std = tuple(float(v) for v in values["mean"]), tuple(float(v) for v in values["std"])
        if len(mean) != len(std) or any(s <= 0 or not np.isfinite(s) for s in std):
            raise ValueError("scaler needs as many positive finite stds as means")
        return cls(mean, std, tuple(int(i) for i in values.get("relative", ())))


def sliding_windows(readings: np.ndarray, length: int, stride: int = 1) -> np.ndarray:
    """Windows ``[n, length, channels]`` over ``readings`` ``[time, channels]`` (a view, no copy).

    Window ``i`` covers rows ``i*stride .. i*stride + length - 1``.
    """
    if length < 1 or stride < 1:
        raise ValueError("length and stride must be >= 1")
    if len(readings) < length:
        return np.empty((0, length, readings.shape[1]), dtype=readings.dtype)
    view = np.lib.stride_tricks.sliding_window_view(readings, length, axis=0)  # [n, channels, length]
    return view[::stride].transpose(0, 2, 1)


def window_end_rows(n_rows: int, length: int, stride: int = 1) -> np.ndarray:
    """Row index of the last reading of each window made by :func:`sliding_windows`."""
    if n_rows < length:
        return np.empty(0, dtype=np.int64)
    return np.arange(length - 1, n_rows, stride, dtype=np.int64)


def finite_windows(windows: np.ndarray) -> np.ndarray:
    """Boolean mask ``[n]``: True where a window holds only finite readings."""
    return np.asarray(np.isfinite(windows).all(axis=(1, 2)), dtype=bool)


def components_for_variance(normal: np.ndarray, share: float) -> int:
    """The fewest principal components of autoscaled ``normal`` that explain ``share`` of its variance.

    >>> rng = np.random.default_rng(1)
    >>> latent = rng.normal(size=(500, 1))
    >>> components_for_variance(np.hstack([latent, latent, latent]) + 0.01 * rng.normal(size=(500, 3)), 0.9)
    1

    At most ``channels - 1``, leaving at least one residual dimension (PCA's Q, a per-step code that
    cannot copy its input).
    """
    std = normal.std(axis=0, ddof=1)
    scaled = (normal - normal.mean(axis=0)) / np.where(std > 0, std, 1.0)
    eigenvalues = np.sort(np.linalg.eigvalsh(np.cov(scaled, rowvar=False)))[::-1]
    explained = np.cumsum(eigenvalues) / eigenvalues.sum()
    return int(min(np.searchsorted(explained, share) + 1, normal.shape[1] - 1))
