"""The one-command demo: the whole product on a simulated fleet, with no external service unless asked.

1. simulate a fleet with labelled anomalies and an abrupt drift to a new operating point;
2. train the initial model on each sensor's normal prefix, publish it, seed the replay buffer;
3. stream the rest through the real scoring loop (an in-memory paced source, or a Kafka topic when
   ``--kafka`` is given) at a fixed pace, writing the Parquet error log;
4. River notices the drift; the fleet-wide drift event asks the real scheduler for a retraining run
   (``retrain.debounce_s`` after the last drift event while the error keeps rising, at most
   ``retrain.debounce_max_s`` after the first, so post-drift data exists); the job fine-tunes on recent normal
   windows plus the replay buffer, gates the candidate and promotes it; the running loop hot-swaps it;
5. print a summary checked against the injected ground truth and write the HTML report.

The demo's own settings (pace, retraining window, debounce) are chosen so that every step happens in a
couple of minutes on two CPU cores; everything else comes from the user's configuration.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from jobs.drift_policy import DriftRetrainPolicy
from jobs.replay import ReplayBuffer
from jobs.retrain import RetrainDecision, normal_windows, retrain_once
from jobs.scheduler import DRIFT_JOB, build_scheduler, request_drift_run
from models.detector import AnomalyDetector
from models.grouping import anomaly_episodes
from models.registry import ModelRegistry
from models.training import TrainingConfig
from pipeline.alarm_summary import alarms_after_drift, learned_after_drift
from pipeline.config import DriftlineConfig
from pipeline.consumer import LoopHooks, ScoringLoop
from pipeline.messages import encode_readings
from pipeline.producer import batch_messages
from pipeline.query import connect
from pipeline.report import build_report
from pipeline.service import build_loop
from pipeline.simulator import DriftSpec, FleetSpec, simulate_fleet
from pipeline.sinks import DeadLetterFile, KafkaDeadLetters, KafkaEventPublisher
from pipeline.sources import KafkaSource, PacedSource, Record, Source
from pipeline.time_spans import epoch_seconds
from pipeline.windows import fleet_sample_period

log = logging.getLogger(__name__)


def default_spec(seed: int = 7) -> FleetSpec:
    """4 sensors x 6,000 s, anomalies after a 900 s normal prefix, abrupt drift at 2,400 s; ends now."""
    rows = 6000
    start = pd.Timestamp.now(tz="UTC").floor("s") - pd.Timedelta(seconds=rows)
    return FleetSpec(
        sensors=4,
        rows=rows,
        normal_prefix_rows=900,
        anomalies_per_sensor=5,
        drift=DriftSpec(at_row=2400, kind="abrupt"),
        start=start.isoformat().replace("+00:00", "Z"),
        seed=seed,
    )


@dataclass(frozen=True)
class DemoSummary:
    source: str
    sensors: int
    readings: int
    windows_scored: int
    lost_windows: int
    duplicate_windows: int
    episodes_injected: int
    episodes_caught: int
    median_delay_s: float | None
    far_before_drift: float | None  # share of normal windows alarmed, old regime
    far_after_swap: float | None  # share of normal windows alarmed, new regime, models trained on it
    drift_at: pd.Timestamp
    drift_detected_at: pd.Timestamp | None
    false_fleet_drifts: int  # fleet-wide detections before the injected drift
    versions: list[tuple[str, pd.Timestamp, int]]  # version, first window end, windows scored
    retraining: list[str]
    alarm_episodes_after_drift: int  # alarms sent between the drift and the first post-drift model
    alarm_minutes_after_drift: float  # plant minutes of open (sent) alarms over the same span
    post_drift_recall: float | None  # injected anomalies after the drift with an alarm sent for them
    suppressed_after_drift: int  # alarms kept off the alerts (regime change) over the same span
    false_alarm_episodes_after_drift: int  # of the alarms sent then, those on no injected anomaly
    false_alarm_minutes_after_drift: float
    span_minutes: float  # plant minutes from the drift to the first post-drift model's first window
    report: Path
    error_log: Path

    def lines(self) -> list[str]:
        def pct(value: float | None) -> str:
            return "n/a" if value is None else f"{100 * value:.2f} %"

        delay = f"{self.median_delay_s:.0f} s" if self.median_delay_s is not None else "n/a"
        detected = (
            f"{self.drift_detected_at:%H:%M:%S} (+{(self.drift_detected_at - self.drift_at).total_seconds():.0f} s)"
            if self.drift_detected_at is not None
            else "not detected"
        )
        return [
            f"source                 {self.source}",
            f"readings streamed      {self.readings:,} from {self.sensors} sensors",
            f"windows scored         {self.windows_scored:,} (lost {self.lost_windows}, "
            f"duplicated {self.duplicate_windows})",
            f"anomalies caught       {self.episodes_caught} of {self.episodes_injected} injected "
            f"(median delay {delay})",
            f"false-alarm rate       {pct(self.far_before_drift)} of normal windows before the drift, "
            f"{pct(self.far_after_swap)} after it with models retrained on the new regime",
            f"drift                  injected at {self.drift_at:%H:%M:%S}, detected at {detected}; "
            f"{self.false_fleet_drifts} fleet-wide false alarm(s) before it",
            f"alarms after the drift {self.alarm_episodes_after_drift} sent, {self.alarm_minutes_after_drift:.1f} "
            f"alarm-minutes until the first retrained model {self.span_minutes:.1f} min later "
            f"({self.false_alarm_episodes_after_drift} / "
            f"{self.false_alarm_minutes_after_drift:.1f} on no injected anomaly; {self.suppressed_after_drift} "
            f"suppressed as regime change); recall of injected anomalies after the drift {pct(self.post_drift_recall)}",
            "model versions         "
            + ", ".join(f"{v} from {t:%H:%M:%S} ({n:,} windows)" for v, t, n in self.versions),
            *(f"retraining             {line}" for line in self.retraining or ["no run"]),
            f"error log              {self.error_log}",
            f"report                 {self.report}",
        ]


def demo_config(config: DriftlineConfig, out_dir: Path, topic: str | None = None) -> DriftlineConfig:
    """The user's config with everything the demo writes under ``out_dir`` and demo-sized retraining."""
    updates: dict[str, Any] = {
        "data_dir": out_dir,
        "model": config.model.model_copy(update={"registry_dir": out_dir / "registry", "watch_interval_s": 0.2}),
        "sinks": config.sinks.model_copy(update={"error_log_dir": out_dir / "error_log", "roll_seconds": 0.5}),
        "metrics": config.metrics.model_copy(update={"port": 0}),
        "retrain": config.retrain.model_copy(
            update={
                "recent_hours": 600 / 3600,  # 10 min of simulated time
                "min_windows": 100,
                "interval_minutes": None,
                "cron": None,
                "on_drift": True,
                "debounce_s": 8.0,  # wall seconds: ~600 s of post-drift stream at the demo's pace
                "debounce_max_s": 16.0,
                "first_stage_after_s": 2.0,  # wall seconds: ~150 s of post-drift stream
                "epochs": min(config.retrain.epochs, 8),
            }
        ),
    }
    if topic is not None:
        updates["kafka"] = config.kafka.model_copy(update={"topics": [topic]})
    return config.model_copy(update=updates)


class _DriftToScheduler:
    """An event publisher for the loop: drift events the retraining policy wants ask the scheduler for a run
    (as ``driftline scheduler`` does from the events topic)."""

    def __init__(self, on_drift: Any, policy: DriftRetrainPolicy, also: KafkaEventPublisher | None = None) -> None:
        self.on_drift = on_drift
        self.policy = policy
        self.also = also
        self.fleet_drifts: list[float] = []  # event times of fleet-wide detections

    def publish(self, event: dict[str, Any]) -> None:
        if self.also is not None:
            self.also.publish(event)
        if event.get("type") == "drift" and event.get("scope") == "fleet":
            self.fleet_drifts.append(float(event["ts"]))
        if self.policy.wants_run(event):
            where = event.get("sensor_id") or "the fleet"
            reason = f"{event.get('detector')} on {where} at {pd.Timestamp(event['ts'], unit='s'):%H:%M:%S}"
            self.on_drift(reason, float(event["ts"]))

    def flush(self) -> None:
        if self.also is not None:
            self.also.flush()


def run_demo(
    config: DriftlineConfig,
    out_dir: Path,
    *,
    spec: FleetSpec | None = None,
    training: TrainingConfig | None = None,
    rate: float = 300.0,
    kafka: bool = False,
    progress: bool = True,
) -> DemoSummary:
    """Simulate, train, stream through the scorer, retrain on drift, hot-swap, summarise, report."""
    spec = spec or default_spec()
    training = training or config.training
    out_dir.mkdir(parents=True, exist_ok=True)
    fleet = simulate_fleet(spec)
    fleet.to_parquet(out_dir / "fleet.parquet", index=False)
    channels = list(spec.channels)
    topic = None
    if kafka:
        from pipeline.producer import create_topic

        topic = create_topic(config.kafka.bootstrap_servers, "driftline-demo", partitions=2)
    cfg = demo_config(config, out_dir, topic)
    window = cfg.model.window

    # 2. the initial model, trained on each sensor's normal prefix; its windows seed the replay buffer
    prefix = fleet[fleet.groupby("sensor_id").cumcount() < spec.normal_prefix_rows]
    segments = [g[channels].to_numpy() for _, g in prefix.groupby("sensor_id")]
    detector = AnomalyDetector.fit(segments, training=training, channels=tuple(channels), **cfg.model.fit_options())
    stamps = epoch_seconds(pd.to_datetime(prefix["timestamp"], utc=True))
    detector.sample_period_s = fleet_sample_period(group.to_numpy() for _, group in stamps.groupby(prefix["sensor_id"]))
    registry = ModelRegistry(cfg.registry_dir)
    registry.publish(detector, promote=True, reason="demo: initial model")
    replay = ReplayBuffer(cfg.retrain.replay_capacity, window, len(channels))
    replay.add(normal_windows(_with_ts(prefix), channels, window)[0])
    replay.save(cfg.data_dir / "replay" / "buffer.npz")

    # 3. the stream: everything after the prefix, with one window of context before it
    stream = fleet[fleet.groupby("sensor_id").cumcount() >= spec.normal_prefix_rows - window + 1]
    stream = stream.sort_values(["timestamp", "sensor_id"], kind="stable")
    timed = _with_ts(fleet)
    loop_box: dict[str, ScoringLoop] = {}
    decisions: list[tuple[float, RetrainDecision]] = []  # (newest event time it trained on, decision)
    busy = threading.Event()

    def job(config: DriftlineConfig, *, trigger: str, **stage: Any) -> RetrainDecision:
        busy.set()
        try:
            now_s = loop_box["loop"].latest_event_ts
            since = stage.get("since_s") or now_s - config.retrain.recent_hours * 3600
            recent = None if kafka else timed[(timed["ts"] > since) & (timed["ts"] <= now_s)]
            decision = retrain_once(config, trigger=trigger, readings=recent, now_s=now_s, **stage)
            decisions.append((now_s, decision))
            return decision
        finally:
            busy.clear()

    scheduler = build_scheduler(cfg, job)
    scheduler.start()
    producer = None
    try:
        if kafka:
            from pipeline.kafka_clients import make_producer

            producer = make_producer(cfg.kafka)
            publisher = _DriftToScheduler(
                lambda reason, ts: request_drift_run(scheduler, cfg, reason, job, event_ts=ts),
                DriftRetrainPolicy.from_settings(cfg.retrain),
                also=KafkaEventPublisher(producer, cfg.kafka.events_topic),
            )
            loop = build_loop(cfg, KafkaDeadLetters(producer, cfg.kafka.dead_letter_topic), events=publisher)
            source: Source = KafkaSource(cfg.kafka, loop.on_assigned, loop.on_revoked)
            feeder = threading.Thread(
                target=_produce_paced, args=(producer, topic, stream, channels, rate), daemon=True
            )
            feeder.start()
            source_name = f"Kafka topic {topic} at {cfg.kafka.bootstrap_servers}"
        else:
            publisher = _DriftToScheduler(
                lambda reason, ts: request_drift_run(scheduler, cfg, reason, job, event_ts=ts),
                DriftRetrainPolicy.from_settings(cfg.retrain),
            )
            loop = build_loop(cfg, DeadLetterFile(out_dir / "dead_letters.jsonl"), events=publisher)
            records = [
                Record("demo", 0, offset, key, encode_readings(readings))
                for offset, (key, readings) in enumerate(batch_messages(stream, channels))
            ]
            source = PacedSource(records, rate)
            source_name = f"embedded (in-memory stream at {rate:,.0f} readings/s, no broker)"
        loop_box["loop"] = loop
        _stream(loop, source, len(stream), scheduler, busy, progress)
    finally:
        scheduler.shutdown(wait=True)
        if producer is not None:
            producer.close()

    report = build_report(cfg.error_log_dir, cfg.registry_dir, out_dir / "report")
    return _summarise(
        fleet,
        stream,
        spec,
        cfg,
        source_name,
        publisher.fleet_drifts,
        decisions,
        report.html,
    )


def _with_ts(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(ts=epoch_seconds(frame["timestamp"]))


def _produce_paced(producer: Any, topic: str, stream: pd.DataFrame, channels: list[str], rate: float) -> None:
    """Send the stream at ``rate`` readings/s, each message stamped with its reading's event time."""
    started = time.perf_counter()
    for sent, (key, readings) in enumerate(batch_messages(stream, channels), start=1):
        producer.send(topic, key=key, value=encode_readings(readings), timestamp_ms=int(readings[-1]["ts"] * 1000))
        ahead = sent / rate - (time.perf_counter() - started)
        if ahead > 0:
            time.sleep(ahead)
    producer.flush()


def _stream(
    loop: ScoringLoop, source: Source, total: int, scheduler: Any, busy: threading.Event, progress: bool
) -> None:
    """Run the loop until the stream is consumed and no retraining is pending or running."""
    bar = tqdm(total=total, desc="streaming", unit="reading", disable=not progress)
    quiet_since: list[float] = []

    def show_progress_and_stop_when_settled(loop: ScoringLoop) -> None:  # after the loop's own hot-swap hook
        bar.update(min(loop.stats.messages, total) - bar.n)
        bar.set_postfix(
            model=loop.scorer.model_version,
            anomalies=loop.stats.anomalies,
            drift=loop.stats.drift_events,
            refresh=False,
        )
        settled = loop.stats.messages >= total and not busy.is_set() and scheduler.get_job(DRIFT_JOB) is None
        if not settled:
            quiet_since.clear()
        elif not quiet_since:
            quiet_since.append(time.monotonic())
        elif time.monotonic() - quiet_since[0] > 2.0:  # the swap of a just-promoted model lands first
            loop.request_stop()

    try:
        loop.run(source, hooks=LoopHooks(before_batch=show_progress_and_stop_when_settled))
    finally:
        bar.close()


def _summarise(
    fleet: pd.DataFrame,
    stream: pd.DataFrame,
    spec: FleetSpec,
    cfg: DriftlineConfig,
    source_name: str,
    fleet_drifts: list[float],
    decisions: list[tuple[float, RetrainDecision]],
    report: Path,
) -> DemoSummary:
    window = cfg.model.window
    with connect(cfg.error_log_dir) as connection:
        log_frame = connection.execute(
            "SELECT sensor_id, window_end, anomaly, model_version FROM errors ORDER BY window_end"
        ).df()
    log_frame["window_end"] = log_frame["window_end"].dt.tz_convert("UTC").astype("datetime64[ns, UTC]")
    keys = set(zip(log_frame["sensor_id"], log_frame["window_end"], strict=True))
    expected = sum(max(0, len(g) - window + 1) for _, g in stream.groupby("sensor_id"))
    assert spec.drift is not None
    drift_at = pd.Timestamp(spec.start) + pd.Timedelta(seconds=spec.drift.at_row)
    drift_at_s = epoch_seconds(drift_at)
    detected_ts = next((ts for ts in fleet_drifts if ts >= drift_at_s), None)

    caught, delays, injected, far_pre, far_post = 0, [], 0, [0, 0], [0, 0]
    # models that learned the new regime: promoted by runs whose recent data lies mostly after the drift
    recent_s = cfg.retrain.recent_hours * 3600
    post_drift_models = {
        d.candidate_version
        for end, d in decisions
        if d.candidate_version and learned_after_drift(end, recent_s, drift_at_s)
    }
    for sensor, readings in fleet.groupby("sensor_id"):
        rows = log_frame[log_frame["sensor_id"] == sensor].set_index("window_end")
        labels = readings.set_index("timestamp")["anomaly"].to_numpy()
        times = readings["timestamp"].to_numpy()
        flagged_times = rows.index[rows["anomaly"].to_numpy()]
        for start, stop in anomaly_episodes(labels):
            injected += 1
            end = times[min(stop + window, len(times)) - 1]
            hits = flagged_times[(flagged_times >= times[start]) & (flagged_times <= end)]
            if len(hits):
                caught += 1
                delays.append((hits[0] - times[start]).total_seconds())
        dirty = pd.Series(np.convolve(labels, np.ones(window, dtype=int))[: len(labels)] > 0, index=times)
        normal = ~dirty.reindex(rows.index).fillna(True).to_numpy(dtype=bool)
        old = np.asarray(rows.index < drift_at)
        new_model = rows["model_version"].isin(post_drift_models).to_numpy()
        for bucket, mask in ((far_pre, normal & old), (far_post, normal & ~old & new_model)):
            bucket[0] += int(rows["anomaly"].to_numpy()[mask].sum())
            bucket[1] += int(mask.sum())

    versions = log_frame.groupby("model_version", sort=False)["window_end"].agg(["min", "count"]).itertuples(name=None)
    return DemoSummary(
        source=source_name,
        sensors=spec.sensors,
        readings=len(stream),
        windows_scored=len(log_frame),
        lost_windows=max(0, expected - len(keys)),
        duplicate_windows=len(log_frame) - len(keys),
        episodes_injected=injected,
        episodes_caught=caught,
        median_delay_s=float(np.median(delays)) if delays else None,
        far_before_drift=far_pre[0] / far_pre[1] if far_pre[1] else None,
        far_after_swap=far_post[0] / far_post[1] if far_post[1] else None,
        drift_at=drift_at,
        drift_detected_at=pd.Timestamp(detected_ts, unit="s", tz="UTC") if detected_ts is not None else None,
        false_fleet_drifts=sum(ts < drift_at_s for ts in fleet_drifts),
        versions=[(v, t, int(n)) for v, t, n in versions],
        retraining=[
            f"{d.trigger}: {d.outcome} {d.candidate_version or ''} ({d.reason}, {d.seconds:.0f} s)".replace("  ", " ")
            for _, d in decisions
        ],
        report=report,
        error_log=cfg.error_log_dir,
        **alarms_after_drift(cfg.error_log_dir / "alarms", fleet, log_frame, drift_at, post_drift_models, window),
    )
