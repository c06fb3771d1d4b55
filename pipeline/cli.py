"""The `driftline` command line: a thin shell that loads the config and calls the library."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import numpy as np
import pandas as pd

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
            # kafka-python narrates every connection at INFO; keep it for DEBUG runs only
            logging.getLogger("kafka").setLevel("DEBUG" if self._config.log_level == "DEBUG" else "WARNING")
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
@click.option("--fresh", is_flag=True, help="Wipe the broker's storage first (every topic and committed offset).")
@pass_app
def kafka_up(app: _AppContext, fresh: bool) -> None:
    """Start the broker in the background on local_kafka.port and print its bootstrap address.

    The broker's storage is kept across restarts (topics, messages, committed offsets) unless --fresh.
    """
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
        kept = not fresh and broker.has_storage()
        broker.start(settings.start_timeout_s, detach=True, fresh=fresh)
    except LocalKafkaError as error:
        raise click.ClickException(str(error)) from None
    broker.state().write(state_file)
    click.echo(
        f"Apache Kafka {broker.version} running at {broker.bootstrap_servers} (pid {broker.state().pid}); "
        f"{'storage kept' if kept else 'fresh storage'} in {broker.work_dir}; log: {broker.log_file}\n"
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


def _device_option(function):
    return click.option("--device", default=None, help="Override model.device: auto, cpu, cuda, cuda:1 ...")(function)


@cli.command()
@click.option(
    "--data",
    "data_paths",
    multiple=True,
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="CSV or Parquet file(s) of normal operation (repeatable; each file is one segment).",
)
@click.option("--channels", default=None, help="Comma-separated channel columns (default: every numeric one).")
@click.option("--rows", type=int, default=None, help="Use only the first N rows of each file.")
@click.option("--promote/--no-promote", default=True, show_default=True, help="Make the new version current.")
@_device_option
@pass_app
def train(
    app: _AppContext,
    data_paths: tuple[Path, ...],
    channels: str | None,
    rows: int | None,
    promote: bool,
    device: str | None,
) -> None:
    """Train a detector on normal data and publish it to the model registry."""
    from dataclasses import replace

    from models.checkpoint import DataFingerprint
    from models.data_io import channel_columns, read_readings
    from models.detector import AnomalyDetector, NotEnoughDataError
    from models.registry import ModelRegistry

    config = app.config
    settings = config.model
    frames: list[pd.DataFrame] = []
    for path in data_paths:  # one segment per file, and per sensor where the file holds a fleet
        frame = read_readings(path)
        groups = [g for _, g in frame.groupby("sensor_id", sort=True)] if "sensor_id" in frame else [frame]
        frames.extend(group.iloc[:rows] for group in groups)
    names = channel_columns(frames[0], channels.split(",") if channels else None)
    period = config.windows.sample_period_s or _learned_period(frames)
    segments = [segment for frame in frames for segment in _clocked_segments(frame, names, config, period)]
    training = replace(config.training, device=device or settings.device)
    try:
        detector = AnomalyDetector.fit(segments, training=training, channels=tuple(names), **settings.fit_options())
    except NotEnoughDataError as error:
        raise click.ClickException(str(error)) from None
    detector.sample_period_s = period
    fingerprint = DataFingerprint.of(
        np.concatenate(segments),
        sources=[str(p) for p in data_paths],
        start=str(min(f.index.min() for f in frames)),
        end=str(max(f.index.max() for f in frames)),
    )
    registry = ModelRegistry(config.registry_dir)
    version = registry.publish(detector, fingerprint=fingerprint, promote=promote, reason="driftline train")
    result, threshold = detector.training, detector.threshold
    assert result is not None
    assert threshold is not None
    click.echo(
        f"trained {version} on {fingerprint.rows:,} readings x {len(names)} channels "
        f"({result.n_train_windows:,} train / {result.n_val_windows:,} validation windows, "
        f"best epoch {result.best_epoch}, val loss {result.best_val_loss:.4f}, "
        f"{result.seconds:.1f}s on {result.device})\n"
        f"threshold {threshold.value:.4f} ({threshold.rule} {threshold.params}); "
        f"sample period {period:g} s ({'windows.sample_period_s' if config.windows.sample_period_s else 'learned'})\n"
        f"registry {config.registry_dir} current={registry.current_version()}"
    )


def _learned_period(frames: list[pd.DataFrame]) -> float | None:
    """The sample period of the frames' time indexes (None without timestamps)."""
    from pipeline.windows import fleet_sample_period

    return fleet_sample_period(_epoch_index(f) for f in frames if isinstance(f.index, pd.DatetimeIndex))


def _epoch_index(frame: pd.DataFrame) -> np.ndarray:
    """Epoch seconds of a frame's time index; a naive index is taken as UTC (as ``read_readings`` reads it)."""
    from pipeline.time_spans import epoch_seconds

    index = pd.DatetimeIndex(frame.index)
    return epoch_seconds(index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")).to_numpy()


def _clocked_segments(
    frame: pd.DataFrame,
    channels: Sequence[str],
    config: DriftlineConfig,
    period: float | None,
    *,
    with_index: bool = False,
) -> list[Any]:
    """The frame's readings cut and filled by the serving rules (``pipeline.windows.regular_segments``).

    A frame without timestamps is one segment of consecutive rows. With ``with_index`` each segment comes
    with its timestamps: ``(values, DatetimeIndex)``.
    """
    from pipeline.windows import regular_segments

    values = frame[list(channels)].to_numpy(dtype=float)
    if period is None or not isinstance(frame.index, pd.DatetimeIndex):
        return [(values, frame.index)] if with_index else [values]
    sample_period, max_fill = config.windows.clock(period)
    segments = regular_segments(_epoch_index(frame), values, sample_period, max_fill)
    if with_index:
        return [(v, pd.to_datetime(t, unit="s", utc=True)) for t, v in segments]
    return [v for _, v in segments]


@cli.command()
@click.option("--data", "data_path", required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Parquet file of window scores to write.",
)
@click.option("--version", default=None, help="Model version (default: current).")
@_device_option
@pass_app
def score(app: _AppContext, data_path: Path, out_path: Path, version: str | None, device: str | None) -> None:
    """Score every window of a CSV/Parquet file with a registry model; write window scores to Parquet."""
    from models.data_io import read_readings
    from models.registry import ModelRegistry, RegistryError
    from models.training import resolve_device

    registry = ModelRegistry(app.config.registry_dir)
    try:
        loaded = registry.load(version, device=str(resolve_device(device or app.config.model.device)))
    except RegistryError as error:
        raise click.ClickException(str(error)) from None
    detector = loaded.detector
    frame = read_readings(data_path)
    period = app.config.windows.sample_period_s or detector.sample_period_s or _learned_period([frame])
    groups = [g for _, g in frame.groupby("sensor_id", sort=True)] if "sensor_id" in frame else [frame]
    parts = []
    for group in groups:
        for values, stamps in _clocked_segments(group, detector.channels, app.config, period, with_index=True):
            if len(values) < detector.window:
                continue
            part = detector.predict(values).to_frame(stamps, detector.window, detector.channels)
            if "sensor_id" in group:
                part.insert(0, "sensor_id", group["sensor_id"].iloc[0])
            parts.append(part)
    if not parts:
        raise click.ClickException(
            f"no full window of {detector.window} readings in {data_path} at a sample period of {period:g} s"
        )
    scores = pd.concat(parts, ignore_index=True)
    scores["model_version"] = loaded.metadata.get("version", loaded.path.name)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    scores.to_parquet(out_path, index=False)
    click.echo(
        f"scored {len(scores):,} windows with {scores['model_version'].iloc[0]}: "
        f"{int(scores['anomaly'].sum()):,} flagged anomalous -> {out_path}"
    )


@cli.group()
def model() -> None:
    """List, promote and roll back model versions in the registry."""


@model.command("list")
@pass_app
def model_list(app: _AppContext) -> None:
    """Every version, newest last; * marks the current one."""
    from models.registry import ModelRegistry

    infos = ModelRegistry(app.config.registry_dir).list()
    if not infos:
        click.echo(f"no versions in {app.config.registry_dir}; train one with `driftline train`")
        return
    click.echo(f"  {'version':10s} {'created':26s} {'threshold':>10s} {'val loss':>10s}  per-regime thresholds")
    for info in infos:
        threshold = f"{info.threshold:.4f}" if info.threshold is not None else "-"
        val_loss = f"{info.val_loss:.4f}" if info.val_loss is not None else "-"
        regimes = " / ".join(f"{value:.4f}" for value in info.regime_thresholds) or "-"
        marker = "*" if info.is_current else " "
        click.echo(f"{marker} {info.version:10s} {info.created_at:26s} {threshold:>10s} {val_loss:>10s}  {regimes}")


@model.command("promote")
@click.argument("version")
@pass_app
def model_promote(app: _AppContext, version: str) -> None:
    """Make VERSION current (verified first)."""
    from models.registry import ModelRegistry, RegistryError

    try:
        ModelRegistry(app.config.registry_dir).promote(version, reason="driftline model promote")
    except RegistryError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"current model is now {version}")


@model.command("rollback")
@pass_app
def model_rollback(app: _AppContext) -> None:
    """Return to the previously current version."""
    from models.registry import ModelRegistry, RegistryError

    try:
        version = ModelRegistry(app.config.registry_dir).rollback(reason="driftline model rollback")
    except RegistryError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"rolled back; current model is now {version}")


@cli.group()
def benchmark() -> None:
    """Benchmarks that print a table (and, with --json, one JSON object as the last line)."""


@benchmark.command("skab")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="SKAB folder (default: benchmarks.skab_dir).",
)
@click.option("--limit", type=int, default=None, help="Only the first N experiment files (quick look).")
@click.option(
    "--params",
    "params_name",
    type=click.Choice(["config", "tuned"]),
    default="config",
    show_default=True,
    help="config: the configuration's model settings (untuned); tuned: the earlier SKAB-specific setting.",
)
@click.option(
    "--judge",
    type=click.Choice(["fixed", "recent_level", "ensemble"]),
    default="fixed",
    show_default=True,
    help="fixed: the calibrated threshold; recent_level: errors judged against their recent normal level; "
    "ensemble: LSTM-AE or PCA Q, each at half of model.target_far (benchmarks/ensemble.py).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the headline figures as JSON on the last line.")
@pass_app
def benchmark_skab(
    app: _AppContext, data_dir: Path | None, limit: int | None, params_name: str, judge: str, as_json: bool
) -> None:
    """SKAB outlier and changepoint detection under the published protocols.

    --params config (default): the configuration object's model settings, the same for every data set and
    never chosen on SKAB's experiment files. --params tuned: the earlier SKAB-specific setting (margin 2,
    thermal channels relative), chosen after looking at SKAB's test files: kept only for comparison.
    """
    from benchmarks.skab import SkabParams, format_report, run_benchmark

    root = data_dir or app.config.benchmarks.skab_dir
    if not root.is_dir():
        raise click.ClickException(
            f"SKAB data not found at {root}; pass --data-dir or set DRIFTLINE_BENCHMARKS__SKAB_DIR"
        )
    from benchmarks.untuned import DetectorSettings

    params = SkabParams.tuned() if params_name == "tuned" else SkabParams(DetectorSettings.from_config(app.config))
    params = replace(params, judge=judge)
    click.echo(f"SKAB with {params_name} parameters: {params}", err=True)
    with tqdm_files(limit or 34) as progress:
        report = run_benchmark(root, params, on_file=lambda result: progress.update(1), limit=limit)
    click.echo(format_report(report))
    if as_json:
        click.echo(json.dumps(report.headline()))


@benchmark.command("throughput")
@click.option("--sensors", type=int, default=20, show_default=True)
@click.option("--rows", type=int, default=5000, show_default=True, help="Readings per sensor.")
@click.option("--partitions", type=int, default=3, show_default=True)
@click.option(
    "--latency-rate",
    type=float,
    default=None,
    help="Readings/s in the latency phase (default: half the end-to-end rate).",
)
@click.option("--rounds", type=click.IntRange(1), default=3, show_default=True, help="Rounds of the three phases.")
@click.option(
    "--workers", type=click.IntRange(1), default=1, show_default=True, help="Scoring processes end to end (one group)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the headline figures as JSON on the last line.")
@pass_app
def benchmark_throughput(
    app: _AppContext,
    sensors: int,
    rows: int,
    partitions: int,
    latency_rate: float | None,
    rounds: int,
    workers: int,
    as_json: bool,
) -> None:
    """Scorer readings/s end to end vs consume-only vs model-only, plus p50/p99 latency, on a real broker.

    Uses KAFKA_BOOTSTRAP_SERVERS-style config (kafka.bootstrap_servers) if a broker answers there,
    else starts the local broker for the run.
    """
    import os

    from benchmarks.throughput import run_throughput
    from pipeline.local_kafka import LocalKafkaBroker, fetch_kafka_jars

    config = app.config
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker = None
    if external:
        bootstrap = external
    else:
        import tempfile

        broker = LocalKafkaBroker(
            fetch_kafka_jars(config.local_kafka.cache_dir), Path(tempfile.mkdtemp()) / "kafka", heap="1g"
        )
        bootstrap = broker.start(config.local_kafka.start_timeout_s)
    try:
        result = run_throughput(
            bootstrap,
            config,
            sensors=sensors,
            rows=rows,
            partitions=partitions,
            latency_rate=latency_rate,
            rounds=rounds,
            workers=workers,
        )
    finally:
        if broker is not None:
            broker.stop()
    click.echo(result.table())
    if as_json:
        click.echo(json.dumps(result.headline()))


@benchmark.command("tep")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Braatz TEP folder (default: benchmarks.tep_dir).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the headline figures as JSON on the last line.")
@pass_app
def benchmark_tep(app: _AppContext, data_dir: Path | None, as_json: bool) -> None:
    """Tennessee Eastman (Braatz): detection per fault, pre-fault alarms, delay and FAR, beside PCA T^2 / Q.

    driftline runs with the configuration's model settings (model.window, hidden_size, latent_size,
    target_far) and training settings: the same for every data set, never tuned on TEP's faults.
    """
    from benchmarks.tep import run_tep
    from benchmarks.untuned import DetectorSettings

    config = app.config
    report = run_tep(data_dir or config.benchmarks.tep_dir, DetectorSettings.from_config(config))
    click.echo(report.table())
    if as_json:
        click.echo(json.dumps(report.headline()))


@benchmark.command("calibration")
@click.option("--json", "as_json", is_flag=True, help="Print the headline figures as JSON on the last line.")
@pass_app
def benchmark_calibration(app: _AppContext, as_json: bool) -> None:
    """Nominal vs observed false-alarm rate on held-out normal data (TEP, SKAB, simulator, 5-minute stream)."""
    from tqdm.auto import tqdm

    from benchmarks.calibration import format_table, headline, normal_sets, timed_run
    from benchmarks.untuned import DetectorSettings

    config = app.config
    sets = normal_sets(config.benchmarks.tep_dir, config.benchmarks.skab_dir)
    with tqdm(total=len(sets), desc="calibration sets", unit="set") as progress:
        results, seconds = timed_run(
            sets=sets, settings=DetectorSettings.from_config(config), on_result=lambda _: progress.update(1)
        )
    click.echo(format_table(results, seconds))
    if as_json:
        click.echo(json.dumps(headline(results)))


@benchmark.command("faults")
@click.option("--sensors", type=int, default=12, show_default=True)
@click.option("--rows", type=int, default=2500, show_default=True, help="Good readings per sensor.")
@click.option("--bad", "bad_messages", type=int, default=21_000, show_default=True, help="Hostile messages.")
@click.option("--kills", type=int, default=5, show_default=True, help="kill -9 of the scorer at random moments.")
@click.option("--rate", type=float, default=500.0, show_default=True, help="Messages produced per second.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the headline figures as JSON on the last line.")
@pass_app
def benchmark_faults(
    app: _AppContext, sensors: int, rows: int, bad_messages: int, kills: int, rate: float, seed: int, as_json: bool
) -> None:
    """Hostile messages, kill -9, a broker restart, a full disk and a bad registry pointer, on a real broker.

    Starts a broker of its own (it is restarted mid-run); needs Java 17. The full-disk phase mounts a
    small tmpfs and is skipped (and said so) where this process may not mount.
    """
    from benchmarks.faults import FaultPlan, run_fault_benchmark

    plan = FaultPlan(
        sensors=sensors, readings_per_sensor=rows, bad_messages=bad_messages, kills=kills, rate=rate, seed=seed
    )
    report = run_fault_benchmark(
        plan, app.config.local_kafka.cache_dir, progress=lambda line: click.echo(line, err=True)
    )
    click.echo(report.table())
    if as_json:
        click.echo(json.dumps(report.headline()))


@cli.command()
@click.option("--trigger", default="manual", show_default=True, help="Recorded with the decision.")
@pass_app
def retrain(app: _AppContext, trigger: str) -> None:
    """Fine-tune the current model on recent normal data + replay; gate; publish and promote if better."""
    from jobs.scheduler import run_exclusive
    from models.registry import RegistryError

    try:
        decision = run_exclusive(app.config, trigger)
    except RegistryError as error:
        raise click.ClickException(str(error)) from None
    if decision is None:
        raise click.ClickException("retraining did not complete (another run holds the lock, or it failed: see log)")
    click.echo(f"{decision.outcome}: {decision.reason}")
    click.echo(
        f"  recent windows {decision.recent_windows:,}, replay windows {decision.replay_windows:,}; "
        f"current {decision.current_version} -> {decision.candidate_version or '(unchanged)'}"
    )
    if decision.candidate_recent_error is not None:
        click.echo(
            f"  held-out recent error: current {decision.current_recent_error:.5f}, "
            f"candidate {decision.candidate_recent_error:.5f}"
        )
    if decision.candidate_replay_error is not None:
        click.echo(
            f"  held-out replay error: current {decision.current_replay_error:.5f}, "
            f"candidate {decision.candidate_replay_error:.5f}"
        )


@cli.command()
@pass_app
def scheduler(app: _AppContext) -> None:
    """Run retraining on retrain.interval_minutes / retrain.cron, and on drift events; one run at a time."""
    import signal
    import threading

    from jobs.scheduler import run_scheduler

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run_scheduler(app.config, stop)


@benchmark.command("drift")
@click.option(
    "--policy",
    "policies",
    multiple=True,
    type=click.Choice(["never", "recent", "recent+replay"]),
    help="Policies to compare (default: all three).",
)
@click.option(
    "--scenario",
    "scenarios",
    multiple=True,
    type=click.Choice(["abrupt", "gradual"]),
    help="Drift scenarios (default: both).",
)
@click.option(
    "--seeds",
    default="21",
    show_default=True,
    help="Comma-separated fleet seeds; figures are reported per seed and as mean (min..max).",
)
@click.option(
    "--first-stage/--no-first-stage",
    default=True,
    show_default=True,
    help="Run the product's first stage (retrain.first_stage_after_s) before each retraining run.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the headline figures as JSON on the last line.")
def benchmark_drift(
    policies: tuple[str, ...], scenarios: tuple[str, ...], seeds: str, first_stage: bool, as_json: bool
) -> None:
    """Drift scenario: detection delay, FAR/F1 before and after the hot-swap, forgetting, swap pause."""
    from tqdm.auto import tqdm

    from benchmarks.drift import POLICIES, SCENARIOS, format_results, headline, run_benchmark

    chosen = tuple(s for s in SCENARIOS if not scenarios or s.name in scenarios)
    policies = policies or POLICIES
    try:
        seed_list = tuple(int(seed) for seed in seeds.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {seeds!r}", param_hint="--seeds") from None
    with tqdm(total=len(seed_list) * len(chosen) * len(policies), desc="drift scenarios", unit="run") as progress:
        results = run_benchmark(
            policies, chosen, on_result=lambda _: progress.update(1), seeds=seed_list, first_stage=first_stage
        )
    click.echo(format_results(results))
    if as_json:
        click.echo(json.dumps(headline(results)))


def tqdm_files(total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="SKAB files", unit="file")


@cli.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output folder (default: <data_dir>/demo).",
)
@click.option("--epochs", type=int, default=None, help="Initial training epochs (default: training.epochs).")
@click.option("--rate", type=float, default=300.0, show_default=True, help="Stream pace, readings per second.")
@click.option("--seed", type=int, default=7, show_default=True, help="Seed of the simulated fleet.")
@click.option("--kafka", "use_kafka", is_flag=True, help="Stream through kafka.bootstrap_servers instead of memory.")
@pass_app
def demo(app: _AppContext, out_dir: Path | None, epochs: int | None, rate: float, seed: int, use_kafka: bool) -> None:
    """The whole product on a simulated fleet: train, stream, detect drift, retrain, hot-swap, report.

    No external service is needed; with --kafka the stream goes through a real broker
    (kafka.bootstrap_servers; `driftline kafka up` starts one locally).
    """
    import shutil
    from dataclasses import replace

    require_extra("matplotlib", "report", "the demo's report")
    from pipeline.demo import default_spec, run_demo

    config = app.config
    out_dir = out_dir or config.data_dir / "demo"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    _log_to_file(out_dir / "demo.log")  # the terminal keeps the progress bars and warnings
    training = replace(config.training, epochs=epochs or config.training.epochs, device=config.model.device)
    where = f"Kafka at {config.kafka.bootstrap_servers}" if use_kafka else "no broker"
    click.echo(
        f"driftline demo ({where}): simulate a fleet with anomalies and a drift, train, stream through the "
        f"scorer, retrain on drift, hot-swap -> {out_dir}"
    )
    started = time.perf_counter()
    summary = run_demo(config, out_dir, spec=default_spec(seed), training=training, rate=rate, kafka=use_kafka)
    click.echo(
        "\n".join(["", f"summary ({time.perf_counter() - started:.0f} s)", *("  " + line for line in summary.lines())])
    )


@cli.command()
@click.option("--source", default=None, help="Override scoring.source: 'kafka' or 'file:PATH'.")
@click.option("--max-messages", type=int, default=None, help="Stop after this many messages (tests, demos).")
@click.option("--timeout", "timeout_s", type=float, default=None, help="Stop after this many seconds.")
@click.option(
    "--idle-timeout",
    "idle_timeout_s",
    type=float,
    default=None,
    help="Stop when nothing arrived for this many seconds.",
)
@click.option(
    "--workers",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Scoring processes in one consumer group, each pinned to its share of the cores (see pipeline.workers).",
)
@_device_option
@pass_app
def serve(
    app: _AppContext,
    source: str | None,
    max_messages: int | None,
    timeout_s: float | None,
    idle_timeout_s: float | None,
    workers: int,
    device: str | None,
) -> None:
    """Run the streaming scorer: consume readings, score windows, write the Parquet error log."""
    from models.registry import RegistryError
    from pipeline.durability import EXIT_BROKER_UNAVAILABLE, EXIT_WRITE_OUTAGE, WriteOutageError
    from pipeline.service import BrokerUnavailableError
    from pipeline.service import serve as run_service
    from pipeline.workers import pin_from_env, run_workers, worker_command

    config = app.config
    if workers > 1:
        if (source or config.scoring.source) != "kafka":
            raise click.UsageError("--workers needs the Kafka source (a file has one partition)")
        sys.exit(run_workers(worker_command(sys.argv[1:]), workers, config.metrics.port))
    pin_from_env()
    if source is not None or device is not None:
        config = config.model_copy(
            update={
                "scoring": config.scoring.model_copy(update={"source": source or config.scoring.source}),
                "model": config.model.model_copy(update={"device": device or config.model.device}),
            }
        )
    try:
        stats = run_service(config, max_messages=max_messages, timeout_s=timeout_s, idle_timeout_s=idle_timeout_s)
    except RegistryError as error:
        raise click.ClickException(str(error)) from None
    except BrokerUnavailableError as error:
        click.echo(f"Error: {error}", err=True)
        sys.exit(EXIT_BROKER_UNAVAILABLE)
    except WriteOutageError as error:
        click.echo(f"Error: {error}", err=True)
        sys.exit(EXIT_WRITE_OUTAGE)
    click.echo(
        f"stopped: {stats.messages:,} messages, {stats.readings:,} readings, {stats.windows:,} windows scored, "
        f"{stats.anomalies:,} anomalous, {stats.dead_letters:,} dead letters, {stats.drift_events:,} drift events, "
        f"{stats.commits:,} commits, {stats.gap_restarts:,} gap restarts, "
        f"{stats.readings_without_window:,} readings never in a full window; error log {config.error_log_dir}"
    )
    if stats.clock_warning:
        click.echo(f"warning: {stats.clock_warning}", err=True)


@cli.command()
@click.option("--sensors", type=int, default=4, show_default=True)
@click.option("--rows", type=int, default=3600, show_default=True, help="Readings per sensor (1 per second).")
@click.option("--anomalies", "anomalies_per_sensor", type=int, default=2, show_default=True)
@click.option("--normal-prefix", type=int, default=900, show_default=True, help="Rows kept free of anomalies.")
@click.option("--drift-at", type=int, default=None, help="Row where the fleet moves to a new operating point.")
@click.option("--drift-kind", type=click.Choice(["abrupt", "gradual"]), default="abrupt", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--replay",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Replay a CSV/Parquet file (e.g. SKAB) instead of simulating.",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write readings to this CSV/Parquet file instead of Kafka.",
)
@click.option("--topic", default=None, help="Kafka topic (default: first of kafka.topics).")
@click.option("--rate", type=float, default=None, help="Readings per second (default: as fast as possible).")
@click.option("--per-message", type=int, default=1, show_default=True, help="Readings per message (batched form).")
@pass_app
def simulate(
    app: _AppContext,
    sensors: int,
    rows: int,
    anomalies_per_sensor: int,
    normal_prefix: int,
    drift_at: int | None,
    drift_kind: str,
    seed: int,
    replay: Path | None,
    out_path: Path | None,
    topic: str | None,
    rate: float | None,
    per_message: int,
) -> None:
    """Produce a simulated fleet (or replay a file) to a Kafka topic or a file."""
    from models.data_io import channel_columns, read_readings
    from pipeline.simulator import DriftSpec, FleetSpec, simulate_fleet

    if replay is not None:
        frame = read_readings(replay)
        frame = frame.reset_index(names="timestamp") if "timestamp" not in frame.columns else frame
        channels = channel_columns(frame)
    else:
        drift = DriftSpec(drift_at, drift_kind) if drift_at is not None else None  # type: ignore[arg-type]
        spec = FleetSpec(
            sensors=sensors,
            rows=rows,
            anomalies_per_sensor=anomalies_per_sensor,
            normal_prefix_rows=normal_prefix,
            drift=drift,
            seed=seed,
        )
        frame = simulate_fleet(spec)
        channels = list(spec.channels)
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        if out_path.suffix.lower() in (".parquet", ".pq"):
            frame.to_parquet(out_path, index=False)
        else:
            frame.to_csv(out_path, index=False)
        click.echo(
            f"wrote {len(frame):,} readings of {frame['sensor_id'].nunique() if 'sensor_id' in frame else 1} "
            f"sensor(s) to {out_path}"
        )
        return
    from pipeline.kafka_clients import make_producer
    from pipeline.producer import produce

    config = app.config
    topic = topic or config.kafka.topics[0]
    producer = make_producer(config.kafka)
    try:
        sent = produce(producer, topic, frame, channels, rate=rate, readings_per_message=per_message)
    finally:
        producer.close()
    click.echo(f"produced {sent:,} readings to {topic} at {config.kafka.bootstrap_servers}")


@cli.command()
@click.argument("sql")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "csv", "json", "parquet"]),
    default="table",
    show_default=True,
)
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write here.")
@click.option(
    "--log-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Error-log folder (default: sinks.error_log_dir).",
)
@pass_app
def query(app: _AppContext, sql: str, output_format: str, out_path: Path | None, log_dir: Path | None) -> None:
    """Run SQL (DuckDB) over the logs; views: errors, drift_events, retraining, alarms.

    \b
    driftline query "SELECT sensor_id, count(*) FILTER (anomaly) AS anomalies FROM errors GROUP BY 1"
    driftline query "SELECT * FROM drift_events ORDER BY ts" --format csv --out drift.csv
    """
    import duckdb

    from pipeline.query import run_query, write_result

    try:
        frame = run_query(log_dir or app.config.error_log_dir, sql)
        text = write_result(frame, output_format, out_path)  # type: ignore[arg-type]
    except (duckdb.Error, ValueError) as error:
        raise click.ClickException(
            f"{error}\n(views: errors, drift_events, retraining, alarms; see docs/schemas.md)"
        ) from None
    if text is not None:
        click.echo(text.rstrip("\n"))
    else:
        click.echo(f"wrote {len(frame):,} rows to {out_path}", err=True)


@cli.command()
@click.option(
    "--since", default=None, help="ISO time (2026-01-01T06:00Z) or a span back from the newest window: 6h, 2d, 30m."
)
@click.option("--until", default=None, help="ISO time; default: the newest window.")
@click.option("--sensor", "sensors", multiple=True, help="Only these sensors (repeatable).")
@click.option("--top", type=int, default=10, show_default=True, help="Alarm episodes to break down by channel.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Default <data_dir>/report.",
)
@click.option(
    "--log-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Default sinks.error_log_dir."
)
@pass_app
def report(
    app: _AppContext,
    since: str | None,
    until: str | None,
    sensors: tuple[str, ...],
    top: int,
    out_dir: Path | None,
    log_dir: Path | None,
) -> None:
    """Write an HTML report (and PNGs) of errors, anomalies, drift, model versions and retraining."""
    require_extra("matplotlib", "report", "driftline report")
    from pipeline.report import build_report
    from pipeline.time_spans import resolve_span

    config = app.config
    log_dir = log_dir or config.error_log_dir
    try:
        start, end = resolve_span(log_dir, since, until)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--since/--until") from None
    out_dir = out_dir or config.data_dir / "report"
    result = build_report(
        log_dir, config.registry_dir, out_dir, since=start, until=end, sensors=list(sensors) or None, top=top
    )
    figures, sensors_shown = len(result.figures), len(result.sensors)
    click.echo(f"report: {result.html} ({figures} figures, {result.windows:,} windows, {sensors_shown} sensors)")


def require_extra(module: str, extra: str, what: str) -> None:
    """Stop with an instruction when ``module`` (from the optional extra ``extra``) is not installed.

    >>> require_extra("json", "report", "a test")  # installed: nothing happens
    """
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise click.ClickException(
            f"{what} needs {module}, which serving does not: pip install 'driftline[{extra}]' "
            "(scripts/bootstrap installs it)"
        )


def _log_to_file(path: Path) -> None:
    """INFO and up go to ``path``; the console handlers keep only warnings and errors."""
    root = logging.getLogger()
    for handler in root.handlers:
        handler.setLevel(logging.WARNING)
    to_file = logging.FileHandler(path)
    to_file.setLevel(logging.INFO)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(to_file)


def main() -> None:
    cli(prog_name="driftline")


if __name__ == "__main__":
    main()
