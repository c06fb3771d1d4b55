"""The alerting rules in docker/prometheus are valid and fire as documented (Prometheus' own promtool)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.metrics import ScoringMetrics

RULES = Path(__file__).resolve().parent.parent / "docker" / "prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None and not os.environ.get("CI"), reason="promtool (Debian's prometheus) not installed"
)


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    assert PROMTOOL is not None, "CI installs Debian's prometheus package (.ci/run)"
    result = subprocess.run([PROMTOOL, "check", "rules", "alerts.yml"], cwd=RULES, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_each_rule_fires_on_its_unit_test_series() -> None:
    assert PROMTOOL is not None
    result = subprocess.run([PROMTOOL, "test", "rules", "alerts_test.yml"], cwd=RULES, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_and_dashboard_only_use_metrics_the_scorer_exports() -> None:
    exported = {m.name for m in ScoringMetrics().registry.collect()}
    counters = {f"{m.name}_total" for m in ScoringMetrics().registry.collect() if m.type == "counter"}
    histograms = {
        f"{m.name}_{suffix}"
        for m in ScoringMetrics().registry.collect()
        if m.type == "histogram"
        for suffix in ("bucket", "sum", "count")
    }
    known = exported | counters | histograms
    dashboard = json.loads((RULES.parent / "grafana" / "driftline.json").read_text())
    assert all(target["expr"] for panel in dashboard["panels"] for target in panel["targets"])
    for path in (RULES / "alerts.yml", RULES.parent / "grafana" / "driftline.json"):
        used = set(re.findall(r"driftline_[a-z_]+", path.read_text()))
        used = {name for name in used if not name.startswith("driftline_scorer")}
        assert used <= known, f"{path.name}: unknown metrics {sorted(used - known)}"
