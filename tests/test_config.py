"""The config object: layering, validation messages that name the key, secret masking."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import MASK, ConfigError, DriftlineConfig, load_config


def test_defaults_load_without_any_source() -> None:
    assert load_config() == DriftlineConfig()


def test_layers_win_in_order_file_env_cli(tmp_path: Path) -> None:
    path = tmp_path / "driftline.toml"
    path.write_text('log_level = "WARNING"\n[kafka]\ngroup_id = "from-file"\nclient_id = "file-client"\n')
    config = load_config(
        path,
        env={"DRIFTLINE_KAFKA__GROUP_ID": "from-env", "UNRELATED": "ignored"},
        overrides=["kafka.group_id=from-cli"],
    )
    assert config.kafka.group_id == "from-cli"
    assert config.kafka.client_id == "file-client"  # deep merge keeps sibling keys
    assert config.log_level == "WARNING"


def test_env_values_are_typed_and_lists_accept_json_or_commas() -> None:
    config = load_config(env={"DRIFTLINE_KAFKA__MAX_POLL_RECORDS": "500", "DRIFTLINE_KAFKA__TOPICS": '["a", "b"]'})
    assert config.kafka.max_poll_records == 500
    assert config.kafka.topics == ["a", "b"]
    assert load_config(overrides=["kafka.topics=x, y"]).kafka.topics == ["x", "y"]


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"env": {"DRIFTLINE_KAFKA__BOOTSTRAP": "h:1"}}, "kafka.bootstrap: unknown key"),
        ({"env": {"DRIFTLINE_NOPE": "1"}}, "nope: unknown key"),
        ({"overrides": ["kafka.max_poll_records=many"]}, "kafka.max_poll_records"),
        ({"overrides": ["log_level=LOUD"]}, "log_level"),
    ],
)
def test_unknown_keys_and_wrong_types_are_named(kwargs: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_config(**kwargs)


def test_error_names_the_source(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[kafka]\nmax_poll_records = -3\n")
    with pytest.raises(ConfigError, match=r"kafka\.max_poll_records.*from file .*bad\.toml"):
        load_config(path)
    with pytest.raises(ConfigError, match="from env DRIFTLINE_KAFKA__GROUPID"):
        load_config(env={"DRIFTLINE_KAFKA__GROUPID": "x"})


def test_missing_or_broken_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[kafka\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)


def test_malformed_override_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"expected section\.key=value"):
        load_config(overrides=["kafka.group_id"])


def test_secrets_are_masked_and_round_trip_through_toml(tmp_path: Path) -> None:
    config = load_config(
        overrides=["kafka.sasl_mechanism=PLAIN", "kafka.sasl_username=ops", "kafka.sasl_password=hunter2"]
    )
    shown = config.to_toml()
    assert "hunter2" not in shown
    assert MASK in shown
    assert config.kafka.client_options()["sasl_plain_password"] == "hunter2"
    path = tmp_path / "shown.toml"
    path.write_text(shown)
    assert load_config(path).kafka.sasl_username == "ops"
