"""Docker cannot run on the build machines, so the compose file is checked statically."""

from __future__ import annotations

from pathlib import Path

import click
import yaml

from pipeline.cli import cli

DOCKER = Path(__file__).resolve().parent.parent / "docker"


def _is_driftline_command(argv: list[str]) -> bool:
    """True if ``argv`` (after the image's `driftline` entrypoint) names an existing (sub)command."""
    command: click.Command = cli
    words = [word for word in argv if not word.startswith("-")]
    if not words:
        return False
    for word in words:
        if not isinstance(command, click.Group):
            return True  # remaining words are arguments of a leaf command
        sub = command.commands.get(word)
        if sub is None:
            return False
        command = sub
    return not isinstance(command, click.Group)


def test_compose_has_broker_consumer_and_retrain_job() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert {"kafka", "consumer", "retrain"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")


def test_every_driftline_service_runs_a_real_subcommand() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["driftline"]' in dockerfile
    driftline_services = {name: service for name, service in compose["services"].items() if "build" in service}
    assert driftline_services, "no service is built from docker/Dockerfile"
    for name, service in driftline_services.items():
        assert _is_driftline_command(service["command"]), f"service {name}: {service['command']} is no subcommand"
        assert service["environment"]["DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"


def test_subcommand_check_rejects_unknown_and_group_only() -> None:
    assert _is_driftline_command(["config", "show"])
    assert not _is_driftline_command(["config"])
    assert not _is_driftline_command(["no-such-command"])
