"""Rows of a batch grouped by key (a sensor id), without a Python object per row; runs of flags.

>>> names, codes, runs = runs_by_key(["b", "a", "b"])
>>> names, codes.tolist(), [run.tolist() for run in runs]
(['b', 'a'], [0, 1, 0], [[0, 2], [1]])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def runs_by_key(keys: Sequence[str]) -> tuple[list[str], np.ndarray, list[np.ndarray]]:
    """The distinct keys in the order they first appear, each row's index into them, and per key the
    indices of its rows in arrival order (one array per key, in the order of the first list)."""
    names = list(dict.fromkeys(keys))  # first-appearance order, in C
    index = {key: i for i, key in enumerate(names)}
    codes = np.fromiter(map(index.__getitem__, keys), dtype=np.int64, count=len(keys))  # no Python frame per row
    if len(names) <= 1:
        return names, codes, [np.arange(len(keys))] if names else []
    order = np.argsort(codes, kind="stable")
    return names, codes, np.split(order, np.flatnonzero(np.diff(codes[order])) + 1)


def anomaly_episodes(labels: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) row intervals where ``labels`` is 1.

    >>> anomaly_episodes(np.array([0, 1, 1, 0, 1]))
    [(1, 3), (4, 5)]
    """
    padded = np.concatenate([[0], np.asarray(labels, dtype=np.int8), [0]])
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]
