"""The SKAB miss breakdown: where missed anomaly points lie relative to each labelled segment."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmarks.skab import TRAIN_ROWS, Experiment, ExperimentResult, miss_breakdown


def experiment(name: str, labels: np.ndarray, flags: np.ndarray) -> tuple[Experiment, ExperimentResult]:
    rows = TRAIN_ROWS + len(labels)
    index = pd.date_range("2020-03-09", periods=rows, freq="s")
    anomaly = np.concatenate([np.zeros(TRAIN_ROWS), labels])
    frame = pd.DataFrame({"anomaly": anomaly, "changepoint": 0.0}, index=index)
    return Experiment(name, frame), ExperimentResult(
        name, pd.Series(np.r_[np.zeros(TRAIN_ROWS, bool), flags], index), 0.0
    )


def test_misses_are_split_by_where_they_lie_in_each_segment() -> None:
    labels = np.r_[np.zeros(10), np.ones(20), np.zeros(10)]
    flags = np.zeros(40, bool)
    flags[15:24] = True  # 5 late, then 9 hits...
    flags[20] = False  # ...with one gap
    flags[38] = True  # a false alarm outside the segment counts nowhere here
    caught = experiment("caught", labels, flags)
    missed = experiment("missed", np.r_[np.zeros(5), np.ones(20), np.zeros(5)], np.zeros(30, bool))
    breakdown = miss_breakdown([caught[1], missed[1]], [caught[0], missed[0]])
    assert breakdown.before_first_alarm == pytest.approx(100 * 5 / 40)
    assert breakdown.after_last_alarm == pytest.approx(100 * 6 / 40)
    assert breakdown.inside == pytest.approx(100 * 1 / 40)
    assert breakdown.missed_segments == pytest.approx(100 * 20 / 40)
    assert breakdown.missed_segment_names == ("missed",)
