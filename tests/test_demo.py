"""The README's first command: the whole product on a simulated fleet, checked against the ground truth.

Tolerances (the fleet is seeded, but the stream is paced in wall time, so retraining lands at slightly
different points from run to run): at least 80 % of the injected anomaly episodes caught; no window
lost or duplicated; the injected drift detected fleet-wide within 3 minutes of event time; a model
retrained on the new regime hot-swapped in and serving; under 5 % of normal windows alarmed before
the drift; the report written with its figures.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.config import load_config
from pipeline.demo import run_demo


def test_demo_summary_matches_the_injected_ground_truth(tmp_path: Path) -> None:
    config = load_config(overrides=[f"data_dir={tmp_path}"])
    summary = run_demo(config, tmp_path / "demo", progress=False)  # its duration is no test's business
    assert summary.readings == 4 * (6000 - 900 + config.model.window - 1)
    assert summary.lost_windows == 0
    assert summary.duplicate_windows == 0
    assert summary.episodes_caught >= 0.8 * summary.episodes_injected
    assert summary.drift_detected_at is not None
    assert pd.Timedelta(0) <= summary.drift_detected_at - summary.drift_at <= pd.Timedelta(minutes=3)
    assert len(summary.versions) >= 2
    assert summary.far_after_swap is not None, "no model retrained on the new regime served"
    assert summary.far_before_drift is not None
    assert summary.far_before_drift < 0.05
    assert summary.report.is_file()
    assert len(list(summary.report.parent.glob("*.png"))) >= 5
    assert "\n".join(summary.lines()).count("retraining") >= 1
