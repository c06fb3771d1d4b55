"""A persisted, bounded reservoir of older normal windows, replayed during fine-tuning so the model does
not forget regimes it no longer sees (catastrophic forgetting).

Reservoir sampling (Algorithm R): after ``seen`` windows, each one is in the buffer with probability
``capacity / seen``, whatever the order they came in. Stored as ``.npz`` (plain arrays, loaded with
``allow_pickle=False``) written atomically.

>>> import numpy as np
>>> buffer = ReplayBuffer(capacity=100, window=5, n_channels=2, seed=0)
>>> buffer.add(np.zeros((250, 5, 2)))
>>> len(buffer), buffer.seen
(100, 250)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.atomic import atomic_file


class ReplayBuffer:
    """At most ``capacity`` normal windows ``[window, n_channels]``, a uniform sample of all ever added.

    >>> buffer = ReplayBuffer(capacity=10, window=4, n_channels=1)
    >>> buffer.add(np.arange(80.0).reshape(20, 4, 1))
    >>> buffer.sample(3).shape, buffer.seen
    ((3, 4, 1), 20)
    """

    def __init__(self, capacity: int, window: int, n_channels: int, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError("replay capacity must be >= 1")
        self.capacity = capacity
        self.windows = np.empty((0, window, n_channels), dtype=np.float32)  # [n, window, channels]
        self.seen = 0
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.windows)

    def add(self, windows: np.ndarray) -> None:
        """Offer ``windows`` ``[n, window, channels]`` (raw readings, finite) to the reservoir."""
        windows = np.asarray(windows, dtype=np.float32)
        if windows.ndim != 3 or windows.shape[1:] != self.windows.shape[1:]:
            raise ValueError(f"expected windows of shape [n, {self.windows.shape[1]}, {self.windows.shape[2]}]")
        room = self.capacity - len(self.windows)
        if room > 0:
            self.windows = np.concatenate([self.windows, windows[:room]])
            self.seen += min(room, len(windows))
            windows = windows[room:]
        for window in windows:
            self.seen += 1
            slot = int(self._rng.integers(0, self.seen))
            if slot < self.capacity:
                self.windows[slot] = window

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """Up to ``n`` windows drawn without replacement."""
        if n >= len(self.windows):
            return self.windows.copy()
        index = np.random.default_rng(seed).choice(len(self.windows), size=n, replace=False)
        return self.windows[np.sort(index)]

    def save(self, path: Path) -> None:
        with atomic_file(Path(path)) as handle:
            np.savez(handle, windows=self.windows, seen=np.int64(self.seen), capacity=np.int64(self.capacity))

    @classmethod
    def load(cls, path: Path, window: int, n_channels: int, capacity: int, seed: int = 0) -> ReplayBuffer:
        """Load from ``path``, or start empty if it does not exist; refuses a buffer of another shape."""
        buffer = cls(capacity, window, n_channels, seed)
        if not Path(path).exists():
            return buffer
        with np.load(path, allow_pickle=False) as stored:
            windows = stored["windows"]
            if windows.shape[1:] != (window, n_channels):
                raise ValueError(
                    f"replay buffer {path} holds windows of shape {windows.shape[1:]}, "
                    f"the model needs {(window, n_channels)}; move it away to start a new one"
                )
            buffer.windows = windows[:capacity].astype(np.float32)
            buffer.seen = int(stored["seen"])
        return buffer
