"""Wires the scoring loop from the config: model from the registry, source, sinks, drift, metrics.

This is the only place that knows about every part; each part knows nothing of the others.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from kafka.errors import KafkaError, NoBrokersAvailable

from models.registry import ModelRegistry
from models.training import resolve_device
from pipeline.alarms import AlarmTracker
from pipeline.checkpointer import CheckpointSettings
from pipeline.config import DriftlineConfig
from pipeline.consumer import EventPublisher, LoopSettings, LoopStats, ScoringLoop
from pipeline.drift import DriftMonitor
from pipeline.durability import EXIT_STOP_TIMEOUT, RetryPolicy
from pipeline.health import HealthServer
from pipeline.metrics import ScoringMetrics
from pipeline.model_watch import RegistryWatcher, hot_swap_hook
from pipeline.scorer import WindowScorer
from pipeline.sinks import (
    AlarmEventSink,
    DeadLetterFile,
    DeadLetterSink,
    DriftEventSink,
    ErrorLogSink,
    FanOut,
    KafkaDeadLetters,
    KafkaEventPublisher,
)
from pipeline.sources import FileSource, KafkaSource, Source
from pipeline.windows import WindowAssembler

log = logging.getLogger(__name__)


def default_model_threads(device: str) -> int:
    """Model threads when ``scoring.model_threads`` is unset: one per core on CPU (at most 4), 1 on a GPU."""
    if device != "cpu":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, 4))


def _with_alertmanager(config: DriftlineConfig, alerts: EventPublisher | None) -> EventPublisher | None:
    """``alerts``, plus Alertmanager when ``alarms.alertmanager_url`` is set."""
    url = config.alarms.alertmanager_url
    if url is None:
        return alerts
    from pipeline.alertmanager import AlertmanagerPublisher

    log.info("alarms also go to Alertmanager at %s", url)
    return FanOut(alerts, AlertmanagerPublisher(url))


def build_loop(
    config: DriftlineConfig,
    dead_letters: DeadLetterSink,
    events: EventPublisher | None = None,
    metrics: ScoringMetrics | None = None,
    alerts: EventPublisher | None = None,
) -> ScoringLoop:
    """A loop serving the registry's current model with the configured windows, sinks and drift."""
    registry = ModelRegistry(config.registry_dir)
    loaded = registry.load_for_serving(device=str(resolve_device(config.model.device)))
    version = loaded.metadata.get("version", loaded.path.name)
    scorer = WindowScorer(loaded.detector, version, config.scoring.batch_size)
    w = config.windows
    model_period = loaded.detector.sample_period_s
    period, max_fill = w.clock(model_period)
    if model_period is None and w.sample_period_s is None:
        log.warning(
            "model %s stores no sample period (trained before driftline learned it): windows assume one reading "
            "every %g s; set windows.sample_period_s if the stream is sampled otherwise",
            version,
            period,
        )
    elif w.sample_period_s is not None and model_period is not None and abs(period / model_period - 1) > 0.01:
        log.warning(
            "windows.sample_period_s = %g s overrides the %g s the model %s was trained at",
            period,
            model_period,
            version,
        )
    assembler = WindowAssembler(scorer.window, w.stride, period, max_fill, w.idle_ttl_s)
    sinks = config.sinks
    error_log = ErrorLogSink(config.error_log_dir, scorer.channels)
    model_threads = config.scoring.model_threads or default_model_threads(str(resolve_device(config.model.device)))
    allowed = frozenset(config.scoring.allowed_sensors) if config.scoring.allowed_sensors is not None else None
    settings = LoopSettings(
        poll_timeout_s=config.scoring.poll_timeout_s,
        max_poll_records=config.kafka.max_poll_records,
        max_message_bytes=config.scoring.max_message_bytes,
        allowed_sensors=allowed,
        pipelined=config.scoring.pipelined,
        model_threads=model_threads,
        max_inflight_batches=model_threads + 1,
        min_ts=config.scoring.min_ts.timestamp(),
        max_future_skew_s=config.scoring.max_future_skew_s,
        write_retry=RetryPolicy(give_up_after_s=config.sinks.max_write_outage_s),
        ready_commit_age_s=config.metrics.ready_commit_age_s,
        checkpoint=CheckpointSettings(every_rows=sinks.roll_rows, every_s=sinks.roll_seconds),
    )
    log.info(
        "serving model %s (%s) on %s, window %d, channels %s",
        version,
        loaded.path,
        next(loaded.detector.model.parameters()).device,
        scorer.window,
        list(scorer.channels),
    )
    metrics = metrics or ScoringMetrics()
    refused = metrics.models_refused
    watcher = RegistryWatcher(
        registry,
        version,
        config.model.watch_interval_s,
        str(resolve_device(config.model.device)),
        on_refused=lambda code: refused.labels(reason=code).inc(),
    )
    return ScoringLoop(
        scorer,
        assembler,
        error_log,
        dead_letters,
        drift=DriftMonitor(
            config.drift.detector,
            version,
            fleet=config.drift.fleet,
            rising_only=config.drift.rising_only,
            min_ratio=config.drift.min_ratio,
        ),
        drift_events=DriftEventSink(config.error_log_dir),
        events=events,
        metrics=metrics,
        settings=settings,
        before_batch=hot_swap_hook(watcher),
        watcher=watcher,
        alarms=AlarmTracker(
            config.alarms.quiet_s,
            scorer.channels,
            config.alarms.top_channels,
            config.alarms.regime_policy,
            config.alarms.standout_factor,
            config.alarms.fleet_share,
            config.alarms.near_ratio,
        ),
        alerts=_with_alertmanager(config, alerts),
        alarm_log=AlarmEventSink(config.error_log_dir),
    )


def _exit_after_stop_timeout(timeout_s: float) -> None:
    message = (
        f"driftline: did not stop within scoring.stop_timeout_s = {timeout_s:g} s of the signal (broker or disk "
        f"unreachable?); exiting with code {EXIT_STOP_TIMEOUT} without committing more: the next start resumes "
        "from the last commit\n"
    )
    os.write(sys.stderr.fileno(), message.encode())
    os._exit(EXIT_STOP_TIMEOUT)


@contextmanager
def stop_on_signals(loop: ScoringLoop, stop_timeout_s: float = 10.0) -> Iterator[None]:
    """SIGTERM/SIGINT ask the loop to stop after its batch (flush, commit, close), within ``stop_timeout_s``.

    If the final flush and commit cannot finish in time (a broker that went away blocks them), the
    process exits with :data:`pipeline.durability.EXIT_STOP_TIMEOUT`; nothing is committed that is not
    durable, so the next start resumes from the last commit.
    """
    deadline: list[threading.Timer] = []

    def on_signal(signum: int, frame: object) -> None:
        loop.request_stop()
        if not deadline:
            log.info("signal %d: finishing the batch, flushing and committing (at most %g s)", signum, stop_timeout_s)
            timer = threading.Timer(stop_timeout_s, _exit_after_stop_timeout, args=(stop_timeout_s,))
            timer.daemon = True
            timer.start()
            deadline.append(timer)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for timer in deadline:
            timer.cancel()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class BrokerUnavailableError(RuntimeError):
    """No Kafka broker answered within ``kafka.connect_timeout_s``; `serve` exits with code 69."""


T = TypeVar("T")


def connect_with_retry(connect: Callable[[], T], bootstrap: str, timeout_s: float, what: str) -> T:
    """Call ``connect`` until a broker answers or ``timeout_s`` passed, saying what to check meanwhile."""
    started = time.monotonic()
    delay = 1.0
    while True:
        try:
            return connect()
        except (NoBrokersAvailable, KafkaError) as error:
            waited = time.monotonic() - started
            if waited >= timeout_s:
                raise BrokerUnavailableError(
                    f"no Kafka broker answered at {bootstrap} for {waited:.0f} s ({type(error).__name__}); check "
                    "kafka.bootstrap_servers, the network, or start a local one with `driftline kafka up`"
                ) from None
            log.warning(
                "%s: no Kafka broker answers at %s (%s); retrying for up to %.0f s more",
                what,
                bootstrap,
                type(error).__name__,
                timeout_s - waited,
            )
            time.sleep(min(delay, max(timeout_s - waited, 0.1)))
            delay = min(delay * 2, 10.0)


def _serve_http(config: DriftlineConfig, loop: ScoringLoop) -> HealthServer | None:
    if not config.metrics.port:
        return None
    server = HealthServer(loop.metrics.exposition, loop.liveness, loop.readiness)
    server.start(config.metrics.address, config.metrics.port)
    log.info(
        "Prometheus metrics and probes on http://%s:%d/ (metrics, healthz, readyz)",
        config.metrics.address,
        server.port,
    )
    return server


def serve(
    config: DriftlineConfig,
    *,
    max_messages: int | None = None,
    timeout_s: float | None = None,
    idle_timeout_s: float | None = None,
    metrics: ScoringMetrics | None = None,
) -> LoopStats:
    """Run the scorer on ``config.scoring.source`` until stopped or a bound is reached."""
    metrics = metrics or ScoringMetrics()
    source_spec = config.scoring.source
    stop_timeout_s = config.scoring.stop_timeout_s
    if source_spec.startswith("file:"):
        path = Path(source_spec.removeprefix("file:"))
        dead_letters = DeadLetterFile(config.error_log_dir.parent / "dead_letters.jsonl")
        loop = build_loop(config, dead_letters, metrics=metrics)
        source: Source = FileSource(path, loop.scorer.channels)
        server = _serve_http(config, loop)
        try:
            with stop_on_signals(loop, stop_timeout_s):
                return loop.run(
                    source, max_messages=max_messages, timeout_s=timeout_s, idle_timeout_s=idle_timeout_s or 1.0
                )
        finally:
            if server is not None:
                server.stop()
    if source_spec != "kafka":
        raise ValueError(f"scoring.source must be 'kafka' or 'file:PATH', got {source_spec!r}")

    from pipeline.kafka_clients import make_producer

    kafka = config.kafka
    producer = connect_with_retry(
        lambda: make_producer(kafka),
        kafka.bootstrap_servers,
        kafka.connect_timeout_s,
        "dead-letter producer",
    )
    server = None
    try:
        loop = build_loop(
            config,
            KafkaDeadLetters(producer, kafka.dead_letter_topic),
            events=KafkaEventPublisher(producer, kafka.events_topic),
            metrics=metrics,
            alerts=KafkaEventPublisher(producer, kafka.alerts_topic, key="sensor_id"),
        )
        source = connect_with_retry(
            lambda: KafkaSource(kafka, loop.on_assigned, loop.on_revoked),
            kafka.bootstrap_servers,
            kafka.connect_timeout_s,
            "consumer",
        )
        server = _serve_http(config, loop)
        with stop_on_signals(loop, stop_timeout_s):
            return loop.run(source, max_messages=max_messages, timeout_s=timeout_s, idle_timeout_s=idle_timeout_s)
    finally:
        if server is not None:
            server.stop()
        producer.close(timeout=min(stop_timeout_s, 5.0))
