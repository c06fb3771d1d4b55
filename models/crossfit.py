"""Time-blocked cross-fitting: reconstruction errors of normal windows from models that never saw them.

A threshold calibrated on the errors of the windows a model was trained on is too low: the model fits
them better than anything it will score. A single held-out slice at the end of the data is honest but
small and covers one stretch of the run. Cross-fitting uses all of it: each segment's windows are cut
into ``folds`` contiguous blocks in time; for each block a model of the same shape is trained (for the
number of epochs early stopping chose for the served model, with no selection on the block) on the
windows that share no reading with it, and scores the block. The pooled out-of-block errors are what
the threshold is fitted on (cross-conformal calibration, Vovk 2015; time-blocked, as in Bergmeir and
Benitez 2012, because neighbouring windows overlap).

>>> import numpy as np
>>> from models.lstm_ae import LSTMAEConfig
>>> from models.training_config import TrainingConfig
>>> rng = np.random.default_rng(0)
>>> windows = [rng.normal(size=(200, 8, 2)).astype(np.float32)]
>>> errors = crossfit_errors(windows, LSTMAEConfig(2, 8, 8, 1, 2), TrainingConfig(progress=False), epochs=2, folds=4)
>>> errors.shape
(200,)
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from models.lstm_ae import LSTMAEConfig, LSTMAutoencoder
from models.preprocessing import finite_windows
from models.scoring import reconstruction_errors
from models.training import train_autoencoder
from models.training_config import TrainingConfig


def fold_blocks(n_windows: int, folds: int) -> list[tuple[int, int]]:
    """``folds`` contiguous ``[start, stop)`` blocks of window indices covering ``range(n_windows)``.

    >>> fold_blocks(10, 3)
    [(0, 3), (3, 7), (7, 10)]
    """
    edges = np.linspace(0, n_windows, folds + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges) if b > a]


def outside_block(n_windows: int, block: tuple[int, int], window: int) -> np.ndarray:
    """Mask ``[n_windows]`` of windows that share no reading with any window of ``block``.

    Window ``j`` holds rows ``j .. j + window - 1``; the block's windows hold rows
    ``start .. stop + window - 2``.

    >>> outside_block(10, (4, 6), window=2).nonzero()[0].tolist()
    [0, 1, 2, 7, 8, 9]
    """
    start, stop = block
    index = np.arange(n_windows)
    return (index < start - window + 1) | (index > stop + window - 2)


def crossfit_errors(
    segment_windows: Sequence[np.ndarray],
    config: LSTMAEConfig,
    training: TrainingConfig,
    epochs: int,
    folds: int = 5,
) -> np.ndarray:
    """Out-of-block window errors ``[n]`` over every finite window of ``segment_windows``.

    ``segment_windows`` holds each segment's scaled windows ``[n_i, window, channels]`` in time order
    (NaN windows are skipped). Block ``k`` of every segment is held out together, so ``folds`` models
    are trained, each for exactly ``epochs`` epochs.
    """
    if folds < 2:
        raise ValueError("cross-fitting needs at least 2 folds")
    blocks = [fold_blocks(len(w), folds) for w in segment_windows]
    fold_training = replace(training, epochs=max(1, epochs), progress=False)
    errors: list[np.ndarray] = []
    for k in range(folds):
        train_parts, held_out = [], []
        for windows, segment_blocks in zip(segment_windows, blocks, strict=True):
            if k >= len(segment_blocks):
                train_parts.append(windows)
                continue
            start, stop = segment_blocks[k]
            train_parts.append(windows[outside_block(len(windows), (start, stop), config.window)])
            held_out.append(windows[start:stop])
        train = np.concatenate(train_parts)
        train = train[finite_windows(train)]
        block = np.concatenate(held_out) if held_out else train[:0]
        block = block[finite_windows(block)]
        if len(block) == 0 or len(train) == 0:
            continue
        torch.manual_seed(training.seed + 1 + k)
        model = LSTMAutoencoder(config)
        train_autoencoder(model, train, fold_training, select_epoch=False)
        errors.append(reconstruction_errors(model, block).error)
    return np.concatenate(errors) if errors else np.empty(0, dtype=np.float32)
