"""The `driftline` command line: a thin shell that loads the config and calls the library."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

from pipeline import __version__
from pipeline.config import ConfigError, DriftlineConfig, load_config


class _AppContext:
    """Holds what the group options said; the config is loaded on first use so `--help` never fails."""

    def __init__(self, config_path: Path | None, overrides: tuple[str, ...]) -> None:
        self.config_path = config_path
        self.overrides = overrides
        self._config: DriftlineConfig | None = None

    @property
    def config(self) -> DriftlineConfig:
        if self._config is None:
            try:
                self._config = load_config(self.config_path, os.environ, self.overrides)
            except ConfigError as error:
                raise click.UsageError(str(error)) from None
            logging.getLogger().setLevel(self._config.log_level)
        return self._config


pass_app = click.make_pass_decorator(_AppContext)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="driftline")
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="DRIFTLINE_CONFIG",
    help="TOML config file (env DRIFTLINE_CONFIG).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override one config key, e.g. --set kafka.group_id=plant-7 (repeatable; wins over file and env).",
)
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, overrides: tuple[str, ...]) -> None:
    """driftline: streaming, drift-aware anomaly monitoring for industrial sensor fleets.

    Config precedence: defaults < --config file < DRIFTLINE_* env vars < --set flags.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = _AppContext(config_path, overrides)


@cli.group()
def config() -> None:
    """Inspect the effective configuration."""


@config.command("show")
@click.option("--format", "fmt", type=click.Choice(["toml", "json"]), default="toml", show_default=True)
@pass_app
def config_show(app: _AppContext, fmt: str) -> None:
    """Print the effective config (secrets masked). TOML output can be used as a --config file."""
    if fmt == "json":
        click.echo(json.dumps(app.config.to_display_dict(), indent=2, default=str))
    else:
        click.echo(app.config.to_toml(), nl=False)


@cli.group()
def kafka() -> None:
    """Run a local single-node Apache Kafka broker (KRaft) for demos, without Docker."""


def _state_file(app: _AppContext) -> Path:
    return app.config.local_kafka.cache_dir / "local-broker" / "state.json"


@kafka.command("fetch")
@pass_app
def kafka_fetch(app: _AppContext) -> None:
    """Download the pinned Kafka broker jars with Maven into the cache (done by `up` when needed)."""
    from pipeline.local_kafka import LocalKafkaError, fetch_kafka_jars

    try:
        click.echo(fetch_kafka_jars(app.config.local_kafka.cache_dir))
    except LocalKafkaError as error:
        raise click.ClickException(str(error)) from None


@kafka.command("up")
@pass_app
def kafka_up(app: _AppContext) -> None:
    """Start the broker in the background on local_kafka.port and print its bootstrap address."""
    from pipeline.local_kafka import (
        BrokerState,
        LocalKafkaBroker,
        LocalKafkaError,
        fetch_kafka_jars,
        process_alive,
    )

    settings = app.config.local_kafka
    state_file = _state_file(app)
    existing = BrokerState.read(state_file)
    if existing and process_alive(existing.pid):
        click.echo(f"already running: {existing.bootstrap_servers} (pid {existing.pid})")
        return
    try:
        libs = fetch_kafka_jars(settings.cache_dir)
        broker = LocalKafkaBroker(libs, state_file.parent / "broker", port=settings.port, heap=settings.heap)
        broker.start(settings.start_timeout_s, detach=True)
    except LocalKafkaError as error:
        raise click.ClickException(str(error)) from None
    broker.state().write(state_file)
    click.echo(
        f"Apache Kafka {broker.version} running at {broker.bootstrap_servers} (pid {broker.state().pid}); "
        f"log: {broker.log_file}\n"
        f"use it with: export DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS={broker.bootstrap_servers}"
    )


@kafka.command("down")
@pass_app
def kafka_down(app: _AppContext) -> None:
    """Stop the broker started by `kafka up` (SIGTERM, clean shutdown)."""
    from pipeline.local_kafka import BrokerState, stop_detached

    state = BrokerState.read(_state_file(app))
    if state is None or not stop_detached(state):
        click.echo("no local broker running")
        return
    _state_file(app).unlink(missing_ok=True)
    click.echo(f"stopped broker at {state.bootstrap_servers}")


@kafka.command("status")
@pass_app
def kafka_status(app: _AppContext) -> None:
    """Say whether the local broker is running, and where."""
    from pipeline.local_kafka import BrokerState, process_alive

    state = BrokerState.read(_state_file(app))
    if state is None or not process_alive(state.pid):
        click.echo("not running")
        sys.exit(1)
    click.echo(f"running: Apache Kafka {state.version} at {state.bootstrap_servers} (pid {state.pid})")


def main() -> None:
    cli(prog_name="driftline")


if __name__ == "__main__":
    main()
