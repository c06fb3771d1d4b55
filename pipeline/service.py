"""Wires the scoring loop from the config: model from the registry, source, sinks, drift, metrics.

This is the only place that knows about every part; each part knows nothing of the others.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from models.registry import ModelRegistry
from models.training import resolve_device
from pipeline.config import DriftlineConfig
from pipeline.consumer import EventPublisher, LoopSettings, LoopStats, ScoringLoop
from pipeline.drift import DriftMonitor
from pipeline.metrics import ScoringMetrics
from pipeline.model_watch import RegistryWatcher, hot_swap_hook
from pipeline.scorer import WindowScorer
from pipeline.sinks import (
    DeadLetterFile,
    DeadLetterSink,
    DriftEventSink,
    ErrorLogSink,
    KafkaDeadLetters,
    KafkaEventPublisher,
)
from pipeline.sources import FileSource, KafkaSource, Source
from pipeline.windows import WindowAssembler

log = logging.getLogger(__name__)


def build_loop(
    config: DriftlineConfig,
    dead_letters: DeadLetterSink,
    events: EventPublisher | None = None,
    metrics: ScoringMetrics | None = None,
) -> ScoringLoop:
    """A loop serving the registry's current model with the configured windows, sinks and drift."""
    registry = ModelRegistry(config.registry_dir)
    loaded = registry.load(device=str(resolve_device(config.model.device)))
    version = loaded.metadata.get("version", loaded.path.name)
    scorer = WindowScorer(loaded.detector, version, config.scoring.batch_size)
    w = config.windows
    assembler = WindowAssembler(scorer.window, w.stride, w.sample_period_s, w.max_fill_s, w.idle_ttl_s)
    sinks = config.sinks
    error_log = ErrorLogSink(config.error_log_dir, scorer.channels, sinks.roll_rows, sinks.roll_seconds)
    allowed = frozenset(config.scoring.allowed_sensors) if config.scoring.allowed_sensors is not None else None
    settings = LoopSettings(
        poll_timeout_s=config.scoring.poll_timeout_s,
        max_poll_records=config.kafka.max_poll_records,
        max_message_bytes=config.scoring.max_message_bytes,
        allowed_sensors=allowed,
        pipelined=config.scoring.pipelined,
    )
    log.info(
        "serving model %s (%s) on %s, window %d, channels %s",
        version,
        loaded.path,
        next(loaded.detector.model.parameters()).device,
        scorer.window,
        list(scorer.channels),
    )
    watcher = RegistryWatcher(
        registry, version, config.model.watch_interval_s, str(resolve_device(config.model.device))
    )
    return ScoringLoop(
        scorer,
        assembler,
        error_log,
        dead_letters,
        drift=DriftMonitor(
            config.drift.detector, version, fleet=config.drift.fleet, rising_only=config.drift.rising_only
        ),
        drift_events=DriftEventSink(config.error_log_dir),
        events=events,
        metrics=metrics,
        settings=settings,
        before_batch=hot_swap_hook(watcher),
        watcher=watcher,
    )


@contextmanager
def stop_on_signals(loop: ScoringLoop) -> Iterator[None]:
    """SIGTERM/SIGINT ask the loop to stop after its batch (flush, commit, close)."""
    previous = {sig: signal.signal(sig, loop.request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
    if config.metrics.port:
        metrics.serve(config.metrics.port, config.metrics.address)
        log.info("Prometheus metrics on http://%s:%d/metrics", config.metrics.address, config.metrics.port)
    source_spec = config.scoring.source
    if source_spec.startswith("file:"):
        path = Path(source_spec.removeprefix("file:"))
        dead_letters = DeadLetterFile(config.error_log_dir.parent / "dead_letters.jsonl")
        loop = build_loop(config, dead_letters, metrics=metrics)
        source: Source = FileSource(path, loop.scorer.channels)
        with stop_on_signals(loop):
            return loop.run(
                source, max_messages=max_messages, timeout_s=timeout_s, idle_timeout_s=idle_timeout_s or 1.0
            )
    if source_spec != "kafka":
        raise ValueError(f"scoring.source must be 'kafka' or 'file:PATH', got {source_spec!r}")

    from kafka import KafkaProducer

    producer = KafkaProducer(**config.kafka.client_options(), acks="all", linger_ms=20)
    try:
        loop = build_loop(
            config,
            KafkaDeadLetters(producer, config.kafka.dead_letter_topic),
            events=KafkaEventPublisher(producer, config.kafka.events_topic),
            metrics=metrics,
        )
        source = KafkaSource(config.kafka, loop.on_assigned, loop.on_revoked)
        with stop_on_signals(loop):
            return loop.run(source, max_messages=max_messages, timeout_s=timeout_s, idle_timeout_s=idle_timeout_s)
    finally:
        producer.close()
