"""Analysts' tools on logs the scorer really wrote: DuckDB views, the CLI query, the HTML report."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from matplotlib.image import imread
from test_scoring_loop import CHANNELS, WINDOW, ListSource, make_loop, records

from jobs.retrain import RetrainDecision, record_decision
from models.detector import AnomalyDetector
from models.registry import ModelRegistry
from models.training import TrainingConfig
from pipeline.cli import cli
from pipeline.query import connect, run_query, write_result
from pipeline.report import build_report
from pipeline.sinks import DriftEventSink


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An error log, drift events, a retraining decision and a registry, written by the real parts."""
    root = tmp_path_factory.mktemp("logs")
    detector = AnomalyDetector.fit(
        np.random.default_rng(0).normal(size=(400, 2)),
        window=WINDOW,
        hidden_size=8,
        latent_size=2,
        channels=CHANNELS,
        training=TrainingConfig(epochs=3, progress=False),
    )
    ModelRegistry(root / "registry").publish(detector, promote=True)
    loop = make_loop(detector, root / "error_log", pipelined=True)
    loop.run(ListSource(records(n_per_sensor=120), batch=32), idle_timeout_s=0)
    events = DriftEventSink(root / "error_log")
    events.append(
        [
            {
                "ts": 1_700_000_060.0,
                "scope": "fleet",
                "sensor_id": None,
                "detector": "adwin",
                "model_version": "v1",
                "observations": 150,
                "recent_mean_error": 0.8,
            }
        ]
    )
    events.flush()
    record_decision(
        root / "error_log",
        RetrainDecision(
            at="2023-11-14T22:15:00+00:00",
            trigger="drift: adwin on the fleet",
            outcome="promoted",
            reason="no worse on recent and replay slices",
            current_version="v1",
            candidate_version="v2",
            recent_windows=300,
            replay_windows=300,
            current_recent_error=0.9,
            candidate_recent_error=0.4,
            current_replay_error=0.5,
            candidate_replay_error=0.55,
        ),
    )
    return root


def test_views_read_what_the_scorer_wrote(logs: Path) -> None:
    with connect(logs / "error_log") as connection:
        (windows, sensors, anomalies) = connection.execute(
            "SELECT count(*), count(DISTINCT sensor_id), count(*) FILTER (anomaly) FROM errors"
        ).fetchone()
        assert windows == 3 * (120 - WINDOW + 1)
        assert sensors == 3
        assert 0 <= anomalies <= windows
        assert connection.execute("SELECT count(*) FROM drift_events WHERE scope = 'fleet'").fetchone() == (1,)
        decided = connection.execute("SELECT outcome, epoch(decided_at) FROM retraining").fetchall()
        assert decided == [("promoted", 1_700_000_100.0)]
        # hive partitioning gives the `date` column; the per-channel errors are there too
        columns = {row[0] for row in connection.execute("DESCRIBE errors").fetchall()}
        assert {"date", "error_a", "error_b", "model_version", "window_end"} <= columns


def test_older_parts_without_a_newer_column_read_as_null(logs: Path, tmp_path: Path) -> None:
    log_dir = tmp_path / "error_log"
    shutil.copytree(logs / "error_log", log_dir)
    part = next((log_dir / "errors").glob("date=*/part-*.parquet"))
    old = pq.read_table(part).drop_columns(["drift"])  # as if written before the column existed
    pq.write_table(old, part.with_name("part-old-0-00000000000000000000-00000000000000000000.parquet"))
    frame = run_query(log_dir, "SELECT count(*) AS n, count(drift) AS with_drift FROM errors")
    assert frame["n"].iloc[0] == frame["with_drift"].iloc[0] + old.num_rows


def test_empty_log_folder_gives_empty_views(tmp_path: Path) -> None:
    for table in ("errors", "drift_events", "retraining", "alarms"):
        assert run_query(tmp_path, f"SELECT count(*) AS n FROM {table}")["n"].iloc[0] == 0


def test_query_cli_prints_a_table_and_writes_csv_and_parquet(logs: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    sql = "SELECT sensor_id, count(*) AS windows FROM errors GROUP BY 1 ORDER BY 1"
    result = runner.invoke(cli, ["query", sql, "--log-dir", str(logs / "error_log")])
    assert result.exit_code == 0, result.output
    assert "sensor_id" in result.output
    assert "s0" in result.output
    out = tmp_path / "windows.parquet"
    result = runner.invoke(
        cli, ["query", sql, "--log-dir", str(logs / "error_log"), "--format", "parquet", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert pd.read_parquet(out)["windows"].sum() == 3 * (120 - WINDOW + 1)
    assert write_result(pd.DataFrame({"a": [1]}), "csv") == "a\n1\n"
    bad = runner.invoke(cli, ["query", "SELECT nope FROM errors", "--log-dir", str(logs / "error_log")])
    assert bad.exit_code != 0
    assert "views: errors, drift_events, retraining, alarms" in bad.output


def _not_blank(png: Path) -> bool:
    pixels = imread(png)
    return pixels.ndim == 3 and float(pixels[..., :3].std()) > 0.01


def test_report_renders_every_figure_from_a_small_log(logs: Path, tmp_path: Path) -> None:
    report = build_report(logs / "error_log", logs / "registry", tmp_path / "report")
    names = {p.name for p in report.figures}
    assert {"errors_s0.png", "errors_s1.png", "errors_s2.png", "retraining.png", "training_curves.png"} <= names
    assert all(p.stat().st_size > 5_000 and _not_blank(p) for p in report.figures)
    page = report.html.read_text()
    assert page.count("<img") == len(report.figures)
    assert "no scored windows" not in page


def test_report_cli_filters_by_sensor_and_span(logs: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "--set",
            f"data_dir={tmp_path}",
            "report",
            "--log-dir",
            str(logs / "error_log"),
            "--sensor",
            "s1",
            "--since",
            "60s",
            "--out",
            str(tmp_path / "r"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / "errors_s1.png").is_file()
    assert not (tmp_path / "r" / "errors_s0.png").exists()
    assert "1 sensors" in result.output


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_loads_in_headless_chromium(logs: Path, tmp_path: Path) -> None:
    if CHROMIUM is None:
        if os.environ.get("CI_REQUIRE_CHROMIUM"):
            pytest.fail("chromium is required here (CI_REQUIRE_CHROMIUM) but not installed")
        pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)")
    report = build_report(logs / "error_log", logs / "registry", tmp_path / "report")
    shot = tmp_path / "shot.png"
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files"]
    dom = subprocess.run(
        [*common, "--dump-dom", report.html.as_uri()], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert "driftline report" in dom
    assert dom.count("<img") == len(report.figures)
    subprocess.run(
        [*common, f"--screenshot={shot}", "--window-size=1280,2000", report.html.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert _not_blank(shot)
