"""One typed configuration object for every driftline command.

Values are merged from four layers, later layers winning:

1. the defaults declared below,
2. a TOML file (``--config PATH`` or ``DRIFTLINE_CONFIG``),
3. environment variables ``DRIFTLINE_<SECTION>__<KEY>`` (double underscore between levels),
4. command-line overrides ``--set section.key=value``.

Unknown keys and wrong types are rejected with a message that names the key and where it came from.
This module never reads ``os.environ`` itself: the CLI passes the environment in.

>>> config = load_config(env={"DRIFTLINE_KAFKA__GROUP_ID": "plant-7"}, overrides=["log_level=DEBUG"])
>>> config.kafka.group_id, config.log_level
('plant-7', 'DEBUG')
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from models.defaults import (
    DEFAULT_FULL_STRETCH_READINGS,
    DEFAULT_HIDDEN_SIZE,
    DEFAULT_LATENT_SIZE,
    DEFAULT_SCORE_CHANNEL_SHARE,
    DEFAULT_SCORE_STEPS,
    DEFAULT_WINDOW,
)
from models.training_config import TrainingConfig

ENV_PREFIX = "DRIFTLINE_"
ENV_NESTING = "__"
# Environment variables with the prefix that are not config keys: where the config lives, which worker this is.
ENV_RESERVED = frozenset({"DRIFTLINE_CONFIG", "DRIFTLINE_WORKER", "DRIFTLINE_WORKER_CORES"})
MASK = "********"
# keys whose values never appear in messages, even when they are invalid
_SECRET_KEY = re.compile(r"password|secret|token", re.IGNORECASE)


class ConfigError(ValueError):
    """The configuration could not be loaded; the message names each offending key and its source."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class KafkaSettings(_Section):
    """Where the sensor readings live and how the consumer group behaves."""

    bootstrap_servers: str = Field("127.0.0.1:9092", description="Comma-separated host:port list.")
    topics: list[str] = Field(default_factory=lambda: ["sensor-readings"], description="Topics to consume.")
    group_id: str = Field("driftline-scorer", description="Consumer group of the scoring job.")
    client_id: str = "driftline"
    dead_letter_topic: str = Field("driftline-dead-letters", description="Where rejected messages go.")
    events_topic: str = Field("driftline-events", description="Drift events and model-version changes.")
    alerts_topic: str = Field(
        "driftline-alerts", description="Alarm events (open / update / close, schema in pipeline.alarms)."
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    max_poll_records: int = Field(2000, gt=0, description="Upper bound on readings per micro-batch poll.")
    session_timeout_ms: int = Field(30_000, gt=0)
    connect_timeout_s: float = Field(
        60.0, ge=0, description="At start, keep retrying an unreachable broker this long before exiting (code 69)."
    )

    @field_validator("topics", mode="before")
    @classmethod
    def _split_comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [topic.strip() for topic in value.split(",") if topic.strip()]
        return value

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments shared by kafka-python producers, consumers and admin clients."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password.get_secret_value() if self.sasl_password else None
        if self.ssl_cafile:
            options["ssl_cafile"] = str(self.ssl_cafile)
        return options


class LocalKafkaSettings(_Section):
    """The single-node KRaft broker that `driftline kafka up` runs for demos and tests."""

    cache_dir: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "driftline",
        description="Where broker jars are downloaded (outside any clone) and where `kafka up` keeps state.",
    )
    port: int = Field(9092, ge=0, le=65535, description="Client port; 0 picks a free one.")
    heap: str = Field("512m", pattern=r"^\d+[kKmMgG]$", description="JVM heap (-Xmx).")
    start_timeout_s: float = Field(90.0, gt=0)


class ModelSettings(_Section):
    """Shape of the LSTM autoencoder, its threshold rule and where versions are kept."""

    registry_dir: Path | None = Field(None, description="Model registry; default <data_dir>/registry.")
    window: int = Field(DEFAULT_WINDOW, ge=2, description="Readings per window (at ~1 Hz, seconds).")
    hidden_size: int = Field(DEFAULT_HIDDEN_SIZE, ge=1)
    latent_size: int = Field(DEFAULT_LATENT_SIZE, ge=1)
    bottleneck: Literal["window", "step"] = Field(
        "window",
        description="'window': one latent code per window; 'step': one per reading, each step rebuilt from "
        "codes up to it (see models/lstm_ae.py).",
    )
    latent_variance_share: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="If set, the latent size is the number of principal components of the scaled training data "
        "that explain this share of its variance (instead of latent_size).",
    )
    num_layers: int = Field(1, ge=1)
    score_steps: int = Field(
        DEFAULT_SCORE_STEPS,
        ge=1,
        description="A window is scored by the reconstruction error of its last score_steps readings.",
    )
    score_channel_share: float | None = Field(
        DEFAULT_SCORE_CHANNEL_SHARE,
        gt=0.0,
        le=1.0,
        description="If set, a window's error is the mean over its largest channel errors, this share of the "
        "channels (rounded up); null: over every channel.",
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    threshold_rule: Literal["quantile", "mean_std", "pot", "target_far"] = "target_far"
    threshold_params: dict[str, float] = Field(default_factory=lambda: {"q": 0.99})
    threshold_margin: float = Field(1.0, gt=0.0, description="Multiplier on the calibrated threshold.")
    full_stretch_readings: int = Field(
        DEFAULT_FULL_STRETCH_READINGS,
        ge=0,
        description="Training segments shorter than this many readings (on average) widen the threshold by "
        "sqrt(full_stretch_readings / readings): a short stretch holds little of the normal variation to come. "
        "0: never.",
    )
    target_far: float = Field(
        0.01,
        gt=0.0,
        lt=0.5,
        description="Share of normal windows allowed over the threshold (threshold_rule = 'target_far'); "
        "k-of-n alarms lower the alarm rate below it.",
    )
    calibration_folds: int = Field(
        0,
        ge=0,
        description="Calibrate the threshold on out-of-block errors of this many time-blocked cross-fitting models "
        "(each trained without its block); 0: on one held-out slice at the end of the data (cheaper).",
    )
    alarm_k: int = Field(1, ge=1, description="Alarm when alarm_k of the last alarm_n windows exceed.")
    alarm_n: int = Field(1, ge=1)
    relative_channels: list[str] = Field(
        default_factory=lambda: ["auto"],
        description="Slow channels (temperatures...) the model sees relative to each window's mean, not by level; "
        "'auto': those whose level wanders within the training data.",
    )
    device: str = Field("auto", description="auto (CUDA if present), cpu, cuda, cuda:1 ...")
    watch_interval_s: float = Field(1.0, gt=0, description="How often the scorer checks the registry for a new model.")

    @field_validator("calibration_folds")
    @classmethod
    def _folds_are_none_or_several(cls, folds: int) -> int:
        if folds == 1:
            raise ValueError("calibration_folds must be 0 (one held-out slice) or at least 2 (cross-fitting)")
        return folds

    def rule_spec(self) -> tuple[str, dict[str, float]]:
        """The threshold rule's name and parameters (``target_far`` takes its parameter from this section)."""
        if self.threshold_rule == "target_far":
            return "target_far", {"target_far": self.target_far}
        return self.threshold_rule, dict(self.threshold_params)

    def fit_options(self) -> dict[str, Any]:
        """Keyword arguments of :meth:`models.detector.AnomalyDetector.fit` that this section sets."""
        from models.threshold import AlarmFilter, make_rule

        rule, rule_params = self.rule_spec()
        return {
            "window": self.window,
            "hidden_size": self.hidden_size,
            "latent_size": self.latent_size,
            "bottleneck": self.bottleneck,
            "latent_variance_share": self.latent_variance_share,
            "num_layers": self.num_layers,
            "score_steps": self.score_steps,
            "score_channel_share": self.score_channel_share,
            "dropout": self.dropout,
            "rule": make_rule(rule, **rule_params),
            "threshold_margin": self.threshold_margin,
            "full_stretch_readings": self.full_stretch_readings,
            "calibration_folds": self.calibration_folds,
            "alarm": AlarmFilter(self.alarm_k, self.alarm_n),
            "relative_channels": tuple(self.relative_channels),
        }


class WindowSettings(_Section):
    """How readings become windows (the window length itself comes from the model)."""

    stride: int = Field(1, ge=1, description="Emit a window every `stride` sample periods.")
    sample_period_s: float | None = Field(
        None, gt=0, description="Spacing of readings; default: learned from the training data (in the checkpoint)."
    )
    max_fill_s: float | None = Field(
        None, ge=0, description="Forward-fill gaps up to this; longer gaps restart (default: 5 sample periods)."
    )

    def clock(self, model_period_s: float | None) -> tuple[float, float]:
        """(sample period, max fill) in seconds: this section's values, else the model's period, else 1 s."""
        from pipeline.windows import default_max_fill_s

        period = self.sample_period_s or model_period_s or 1.0
        return period, self.max_fill_s if self.max_fill_s is not None else default_max_fill_s(period)

    idle_ttl_s: float = Field(3600.0, gt=0, description="Forget a sensor silent this long (event time).")


class ScoringSettings(_Section):
    source: str = Field("kafka", description="'kafka' or 'file:PATH' (CSV/Parquet replayed, no broker).")
    batch_size: int = Field(4096, ge=1, description="Windows per model forward pass.")
    poll_timeout_s: float = Field(0.5, gt=0)
    max_message_bytes: int = Field(1_000_000, gt=0, description="Bigger messages are dead-lettered.")
    allowed_sensors: list[str] | None = Field(None, description="Whitelist; others are dead-lettered.")
    pipelined: bool = Field(True, description="Score on a second thread while the next batch is decoded.")
    model_threads: int | None = Field(
        None,
        ge=1,
        description="Micro-batches whose model runs at once, each with cores / model_threads PyTorch threads "
        "(pipelined only). Default: one per core on CPU (at most 4), 1 on CUDA.",
    )
    min_ts: AwareDatetime = Field(
        datetime(2000, 1, 1, tzinfo=UTC), description="Readings stamped earlier are dead-lettered (ts_out_of_range)."
    )
    max_future_skew_s: float = Field(
        3600.0, gt=0, description="Readings stamped further ahead of the wall clock are dead-lettered."
    )
    stop_timeout_s: float = Field(
        10.0, gt=0, description="After SIGTERM/SIGINT, exit within this long whatever the broker does (code 75)."
    )


class DriftSettings(_Section):
    detector: Literal["adwin", "page_hinkley", "kswin"] = "adwin"
    fleet: bool = Field(True, description="Also watch the fleet-wide error stream.")
    rising_only: bool = Field(
        True, description="Report only changes that raise the error (a fall never calls for retraining)."
    )
    min_ratio: float = Field(
        1.0,
        ge=0,
        description="A drift is material (asks for retraining; a fleet drift opens a regime-change notice) only when "
        "its stream's recent mean error is at least this share of the threshold (1: the median sensor errs at its "
        "alarm threshold on average), or while most sensors are alarmed at once; others are logged. 0: all are.",
    )


class SinkSettings(_Section):
    error_log_dir: Path | None = Field(None, description="Parquet error log; default <data_dir>/error_log.")
    roll_rows: int = Field(50_000, ge=1, description="Checkpoint (write parts, then commit) after this many windows...")
    roll_seconds: float = Field(5.0, gt=0, description="...or this many seconds after the last checkpoint.")
    max_write_outage_s: float = Field(
        600.0, gt=0, description="Retry failing durable writes (disk full, broker away) this long, then exit (code 74)."
    )


class AlarmSettings(_Section):
    quiet_s: float = Field(
        60.0, ge=0, description="An alarm closes after this long (event time) without a flagged window."
    )
    top_channels: int = Field(3, ge=1, description="Channels named in an alarm, by their share of the error.")
    regime_policy: Literal["notify", "suppress", "alarm"] = Field(
        "suppress",
        description="While a fleet-wide drift is open (one regime_change notice is sent): 'suppress' keeps "
        "per-sensor alarms off the alerts topic unless the sensor stands out from the fleet, 'notify' sends "
        "them marked suspected_regime_change, 'alarm' ignores the drift. Risk: a plant-wide fault looks the same.",
    )
    standout_factor: float = Field(
        3.0,
        gt=0,
        description="During a regime change a sensor is alarmed when its level (error ratio averaged over ~30 "
        "windows) is this many times the fleet's median level and its threshold.",
    )
    fleet_share: float | None = Field(
        0.5,
        gt=0,
        le=1,
        description="A regime-change notice also opens when an alarm opening would leave more than this share of "
        "the active sensors (and at least three) alarmed at once; null: only fleet-wide drift opens it.",
    )
    near_ratio: float | None = Field(
        0.6,
        gt=0,
        le=1,
        description="For fleet_share, sensors whose latest window's error is at least this share of their threshold "
        "count as alarmed, so the first sensors of a fleet-wide rise are not alarmed one by one; null: off.",
    )
    alertmanager_url: str | None = Field(
        None, description="Also post alarms to this Prometheus Alertmanager (API v2), e.g. http://127.0.0.1:9093."
    )


class MetricsSettings(_Section):
    port: int = Field(9108, ge=0, le=65535, description="Port of /metrics, /healthz and /readyz; 0 turns it off.")
    address: str = Field(
        "127.0.0.1", description="Bind address; no authentication, so 0.0.0.0 only behind a network policy."
    )
    ready_commit_age_s: float = Field(60.0, gt=0, description="/readyz fails when work waits uncommitted this long.")


class RetrainSettings(_Section):
    """The retraining job and its schedule."""

    recent_hours: float = Field(6.0, gt=0, description="Sliding window of recent data read from the topic.")
    epochs: int = Field(10, ge=1, description="Fine-tuning epochs.")
    replay_capacity: int = Field(20_000, ge=1, description="Windows kept in the replay reservoir.")
    replay_fraction: float = Field(1.0, ge=0, description="Replay windows per recent training window (0 = none).")
    tolerance: float = Field(0.05, ge=0, description="Gate: candidate may be this much worse on recent data.")
    replay_tolerance: float = Field(
        0.5, ge=0, description="Forgetting guard: relative rise of error allowed on held-out replay windows."
    )
    distill_weight: float = Field(
        3.0, ge=0, description="Weight of keeping the current model's reconstructions of replayed windows (0 = off)."
    )
    min_windows: int = Field(200, ge=1, description="Skip the run with fewer recent normal windows.")
    interval_minutes: float | None = Field(60.0, gt=0, description="Run every N minutes (None: off).")
    cron: str | None = Field(None, description="Crontab schedule instead of the interval, e.g. '0 */4 * * *'.")
    on_drift: bool = Field(True, description="Also run when drift events arrive on kafka.events_topic.")
    on_drift_scope: Literal["fleet", "any"] = Field(
        "fleet",
        description="Drift that asks for a run: 'fleet' (most sensors at once: a new operating point) or 'any' "
        "(a single sensor's drift too); see jobs/drift_policy.py.",
    )
    first_stage_after_s: float | None = Field(
        120.0,
        gt=0,
        description="This long after a drift asks for a run, a first stage gives the serving model a threshold of "
        "its own for the new operating point (same weights, seconds of CPU; jobs/retrain.py); the fine-tune "
        "follows at the debounce. None: off.",
    )
    first_stage_windows: int = Field(100, ge=2, description="Skip the first stage with fewer windows since the drift.")
    debounce_s: float = Field(60.0, ge=0, description="Drift events within this delay fire one run.")
    debounce_max_s: float = Field(
        300.0, ge=0, description="Later events delay a pending run at most this long after its first event."
    )


class BenchmarkSettings(_Section):
    skab_dir: Path = Field(Path("../shared/data/skab"), description="SKAB v0.9 folder (valve1, valve2, other).")
    tep_dir: Path = Field(Path("../shared/data/tep"), description="Tennessee Eastman (Braatz) folder, d00.dat ...")


class DriftlineConfig(_Section):
    """Everything a driftline process can be told; see README's configuration reference."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    data_dir: Path = Field(Path("runs"), description="Root of error logs, registry and state.")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    local_kafka: LocalKafkaSettings = Field(default_factory=LocalKafkaSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    windows: WindowSettings = Field(default_factory=WindowSettings)
    scoring: ScoringSettings = Field(default_factory=ScoringSettings)
    drift: DriftSettings = Field(default_factory=DriftSettings)
    alarms: AlarmSettings = Field(default_factory=AlarmSettings)
    sinks: SinkSettings = Field(default_factory=SinkSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    retrain: RetrainSettings = Field(default_factory=RetrainSettings)
    benchmarks: BenchmarkSettings = Field(default_factory=BenchmarkSettings)

    @property
    def registry_dir(self) -> Path:
        return self.model.registry_dir or self.data_dir / "registry"

    @property
    def error_log_dir(self) -> Path:
        return self.sinks.error_log_dir or self.data_dir / "error_log"

    def to_display_dict(self) -> dict[str, Any]:
        """The effective config as plain data, secrets replaced by a mask, ``None`` values left out."""
        return _mask_and_drop_none(self.model_dump(mode="python"), self)

    def to_toml(self) -> str:
        """The effective config as TOML that `load_config` accepts again (secrets masked)."""
        return tomli_w.dumps(_stringify_paths(self.to_display_dict()))


def load_config(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Iterable[str] = (),
) -> DriftlineConfig:
    """Merge defaults, the TOML file at ``path``, ``DRIFTLINE_*`` entries of ``env`` and ``--set`` overrides.

    Raises :class:`ConfigError` naming every unknown key or badly typed value and where it came from.
    """
    layers: list[tuple[str, dict[str, Any]]] = []
    if path is not None:
        layers.append((f"file {path}", _read_toml(path)))
    layers.extend(_env_layers(env or {}))
    layers.extend(_override_layers(overrides))

    merged: dict[str, Any] = {}
    origins: dict[tuple[str, ...], str] = {}
    for source, layer in layers:
        _deep_merge(merged, layer, origins, source, ())
    try:
        return DriftlineConfig.model_validate(merged)
    except ValidationError as error:
        raise ConfigError(_describe(error, origins)) from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None


def _parse_scalar(raw: str) -> Any:
    """Env and --set values are strings; JSON lists/objects are decoded, the rest left to pydantic."""
    stripped = raw.strip()
    if stripped[:1] in ("[", "{"):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return raw
    return raw


def _env_layers(env: Mapping[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """One layer per ``DRIFTLINE_*`` variable, so an error can name the variable."""
    layers = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in ENV_RESERVED:
            continue
        keys = [part.lower() for part in name[len(ENV_PREFIX) :].split(ENV_NESTING)]
        layers.append((f"env {name}", _nest(keys, _parse_scalar(env[name]))))
    return layers


def _override_layers(overrides: Iterable[str]) -> list[tuple[str, dict[str, Any]]]:
    layers = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. kafka.group_id=plant-7")
        shown = f"{key.strip()}={MASK}" if _SECRET_KEY.search(key) else item
        layers.append((f"--set {shown}", _nest(key.strip().split("."), _parse_scalar(raw))))
    return layers


def _nest(keys: list[str], value: Any) -> dict[str, Any]:
    """``["kafka", "group_id"], "x"`` -> ``{"kafka": {"group_id": "x"}}``."""
    tree: dict[str, Any] = {keys[-1]: value}
    for key in reversed(keys[:-1]):
        tree = {key: tree}
    return tree


def _deep_merge(
    target: dict[str, Any],
    layer: Mapping[str, Any],
    origins: dict[tuple[str, ...], str],
    source: str,
    prefix: tuple[str, ...],
) -> None:
    for key, value in layer.items():
        path = (*prefix, key)
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _deep_merge(target[key], value, origins, source, path)
        else:
            target[key] = dict(value) if isinstance(value, Mapping) else value
            origins[path] = source


def _describe(error: ValidationError, origins: Mapping[tuple[str, ...], str]) -> str:
    lines = ["invalid configuration:"]
    for item in error.errors():
        loc = tuple(str(part) for part in item["loc"])
        source = next((origins[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in origins), "defaults")
        key = ".".join(loc) or "<root>"
        unknown = item["type"] in ("extra_forbidden", "unexpected_keyword_argument")
        reason = "unknown key" if unknown else item["msg"]
        shown = MASK if _SECRET_KEY.search(key) else repr(item.get("input"))
        lines.append(f"  {key}: {reason} (input {shown}, from {source})")
    return "\n".join(lines)


def _mask_and_drop_none(values: dict[str, Any], model: BaseModel) -> dict[str, Any]:
    shown: dict[str, Any] = {}
    for key, value in values.items():
        attribute = getattr(model, key)
        if value is None:
            continue
        if isinstance(attribute, SecretStr):
            shown[key] = MASK
        elif isinstance(attribute, BaseModel):
            shown[key] = _mask_and_drop_none(value, attribute)
        else:
            shown[key] = value
    return shown


def _stringify_paths(values: Any) -> Any:
    if isinstance(values, dict):
        return {key: _stringify_paths(value) for key, value in values.items()}
    if isinstance(values, list):
        return [_stringify_paths(value) for value in values]
    return str(values) if isinstance(values, Path) else values
