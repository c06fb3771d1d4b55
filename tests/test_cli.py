"""The `driftline` command as a user runs it."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from pipeline import __version__
from pipeline.cli import cli


def test_console_script_is_installed_and_prints_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "driftline" in result.stdout
    assert "config" in result.stdout


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_config_show_masks_secrets_and_applies_env() -> None:
    result = CliRunner().invoke(
        cli,
        ["--set", "kafka.sasl_password=s3cret", "config", "show"],
        env={"DRIFTLINE_KAFKA__GROUP_ID": "plant-7"},
    )
    assert result.exit_code == 0, result.output
    assert 'group_id = "plant-7"' in result.output
    assert "s3cret" not in result.output


def test_bad_config_is_a_usage_error_naming_the_key() -> None:
    result = CliRunner().invoke(cli, ["config", "show"], env={"DRIFTLINE_KAFKA__GRUOP_ID": "x"})
    assert result.exit_code == 2
    assert "kafka.gruop_id: unknown key" in result.output


def test_report_without_its_extra_says_how_to_install_it(monkeypatch, tmp_path) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec

    def without_matplotlib(name: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None if name == "matplotlib" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", without_matplotlib)
    for command in (["report"], ["demo"]):
        result = CliRunner().invoke(cli, ["--set", f"data_dir={tmp_path}", *command])
        assert result.exit_code == 1, result.output
        assert "pip install 'driftline[report]'" in result.output
