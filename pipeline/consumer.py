"""The scoring loop: poll a batch, decode, window, score, detect drift, buffer, make durable, commit.

Delivery guarantees, with a Kafka consumer group and manual commits:

- **Nothing accepted is lost.** Offsets are committed only after the error-log parts, drift events and
  dead letters that the batch produced are durable (fsynced files, flushed producer).
- **Nothing is scored twice.** On assignment the loop removes the parts written past the committed
  offset (see :class:`pipeline.sinks.ErrorLogSink`) and scores only windows whose last reading lies at
  or after the committed offset.
- **No reading goes unscored after a restart or rebalance** (once its sensor had a full window): every
  commit carries, in its metadata, ``rewind_offset``, the oldest offset still held in an open window of
  that partition. The next owner seeks there, replays the readings to rebuild the windows without
  emitting them, and resumes scoring exactly at the committed offset. This was chosen over persisted
  window state because it needs no shared disk between consumers and the broker already holds the
  readings; its cost is re-reading at most one window per sensor (bounded by the idle TTL).

**Stages** (``LoopSettings.pipelined``, on by default). The consumer thread polls, decodes the batch
column-wise (:class:`pipeline.messages.BatchDecoder`) and appends it to the per-sensor window rings
(:meth:`pipeline.windows.WindowAssembler.add_batch`); ``model_threads`` threads run the model on
several micro-batches at once (PyTorch releases the GIL); one scorer thread then judges each batch
(thresholds, k-of-n), updates drift and alarms and buffers the error-log rows, in submission order.
A batch handed over after :meth:`ScoringLoop.swap_model` is scored on the new model.
Kafka's consumer is not thread-safe, so every poll, seek and commit stays on the consumer thread:
a checkpoint snapshots the offsets there, the scorer thread seals everything buffered before it in
order (and adds the open alarms to the commit metadata), one writer thread writes and fsyncs what
was sealed (so judging and alarm delivery never wait for a Parquet part), and the consumer thread
commits that snapshot once the writer is done. A model swap is queued the same way, so it lands
exactly between two micro-batches. Revocation and shutdown wait for the scorer to drain before committing. With
``pipelined=False`` everything runs on the calling thread. Each stage's thread CPU is counted
(:mod:`pipeline.stage_clock`).

Signals only ask the loop to stop (:meth:`ScoringLoop.request_stop`); it finishes the batch, flushes,
commits and closes. ``run(max_messages=..., timeout_s=..., idle_timeout_s=...)`` bounds it for tests.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from kafka.errors import KafkaError

from models.detector import AnomalyDetector
from pipeline.alarms import AlarmTracker
from pipeline.checkpointer import Checkpointer, CheckpointSettings, CommitOffsets
from pipeline.drift import DriftMonitor
from pipeline.durability import RetryPolicy
from pipeline.messages import BatchDecoder, message_bytes
from pipeline.metrics import ScoringMetrics
from pipeline.scorer import Reconstruction, ScoredBatch, WindowScorer, share_cores
from pipeline.sinks import (
    AlarmEventSink,
    DeadLetter,
    DeadLetterSink,
    DriftEventSink,
    DurableSink,
    ErrorLogSink,
    ScoredWindows,
)
from pipeline.sources import Assignment, Record, Source, TopicPartitionKey
from pipeline.stage_clock import StageClock
from pipeline.windows import WindowAssembler, WindowBatch

log = logging.getLogger(__name__)

REGIME_CAUSES = {"fleet_drift": "fleet-wide drift", "fleet_alarms": "most sensors alarmed at once"}


class EventPublisher(Protocol):
    """Events sent as they happen (drift and model swaps to the events topic, alarms to the alerts topic);
    ``flush`` returns once every event published so far is delivered (each checkpoint calls it)."""

    def publish(self, event: dict[str, Any]) -> None: ...

    def flush(self) -> None: ...


@dataclass(frozen=True)
class LoopHooks:
    """Named points where a caller (the demo, a benchmark) observes or steers a run of the loop.

    ``before_batch`` runs on the loop's thread before every poll (after the hot-swap check);
    ``on_durable`` gets the error-log parts just made durable (fsynced) and the wall-clock time then,
    on the thread that wrote them.
    """

    before_batch: Callable[[ScoringLoop], None] | None = None
    on_durable: Callable[[list[Path], float], None] | None = None


@dataclass
class LoopStats:
    """What one :meth:`ScoringLoop.run` did: counts of messages, readings, windows, anomalies, commits."""

    messages: int = 0
    readings: int = 0
    windows: int = 0
    anomalies: int = 0
    dead_letters: int = 0
    drift_events: int = 0
    commits: int = 0
    batches: int = 0
    model_swaps: int = 0
    swap_pause_ms: float | None = None  # longest gap between two scored batches across a model swap
    gap_restarts: int = 0
    readings_without_window: int = 0
    clock_warning: str | None = None  # set at the end when most readings never reached a full window


@dataclass(frozen=True)
class LoopSettings:
    """The loop's knobs; :func:`pipeline.service.build_loop` fills them from the configuration."""

    poll_timeout_s: float = 0.5
    max_poll_records: int = 2000
    max_message_bytes: int = 1_000_000
    allowed_sensors: frozenset[str] | None = None
    lag_every_s: float = 5.0
    pipelined: bool = True  # decode/window on the consumer thread, score/write on a scorer thread
    max_inflight_batches: int = 2  # batches queued for the scorer before the consumer waits (at least model_threads)
    model_threads: int = 1  # batches whose model runs at once (pipelined only): each on its own core
    min_ts: float = 946_684_800.0  # 2000-01-01: older readings are dead-lettered (ts_out_of_range)
    max_future_skew_s: float = 3600.0  # readings further ahead of the wall clock are dead-lettered
    write_retry: RetryPolicy = RetryPolicy()  # disk full, I/O or broker errors on durable writes
    liveness_s: float = 120.0  # /healthz fails when the loop has not iterated for this long
    ready_commit_age_s: float = 60.0  # /readyz fails when work waits uncommitted for longer than this
    checkpoint: CheckpointSettings = CheckpointSettings()  # how often to make durable and commit


class ScoringLoop:
    """Poll -> decode -> window -> score -> judge -> drift and alarms -> durable sinks -> commit.

    Build it with :func:`pipeline.service.build_loop` (what ``serve``, the demo and the benchmarks use)
    or by hand, as here, from a scorer, a window assembler and sinks; :meth:`run` consumes a
    :class:`pipeline.sources.Source` until it is idle, stopped or a bound is reached.

    >>> import tempfile
    >>> from pipeline.messages import encode_readings
    >>> from pipeline.sinks import DeadLetterFile
    >>> from pipeline.sources import PacedSource
    >>> from models.training_config import TrainingConfig
    >>> rng = np.random.default_rng(0)
    >>> detector = AnomalyDetector.fit(rng.normal(size=(300, 2)), window=5, hidden_size=4, latent_size=1,
    ...                                channels=("a", "b"), training=TrainingConfig(epochs=1, progress=False))
    >>> root = Path(tempfile.mkdtemp())
    >>> loop = ScoringLoop(WindowScorer(detector, "v1"), WindowAssembler(5), ErrorLogSink(root, ("a", "b")),
    ...                    DeadLetterFile(root / "dead.jsonl"))
    >>> messages = [encode_readings([{"sensor_id": "s1", "ts": 1.7e9 + t, "values": {"a": 0.0, "b": 1.0}}])
    ...             for t in range(20)] + [b"not json"]
    >>> source = PacedSource([Record("t", 0, i, b"s1", m) for i, m in enumerate(messages)], rate=1e6)
    >>> stats = loop.run(source, idle_timeout_s=0)
    >>> stats.messages, stats.windows, stats.dead_letters, stats.commits
    (21, 16, 1, 1)
    """

    def __init__(
        self,
        scorer: WindowScorer,
        assembler: WindowAssembler,
        error_log: ErrorLogSink,
        dead_letters: DeadLetterSink,
        drift: DriftMonitor | None = None,
        drift_events: DriftEventSink | None = None,
        events: EventPublisher | None = None,
        metrics: ScoringMetrics | None = None,
        settings: LoopSettings = LoopSettings(),
        before_batch: Callable[[ScoringLoop], None] | None = None,
        watcher: Any = None,
        alarms: AlarmTracker | None = None,
        alerts: EventPublisher | None = None,
        alarm_log: AlarmEventSink | None = None,
    ) -> None:
        self.scorer = scorer
        self.assembler = assembler
        self.error_log = error_log
        self.dead_letters = dead_letters
        self.drift = drift
        self.drift_events = drift_events
        self.events = events
        self.alarms = alarms  # alarm episodes (pipeline.alarms), their events to alerts and alarm_log
        self.alerts = alerts
        self.alarm_log = alarm_log
        self.metrics = metrics or ScoringMetrics()
        self.settings = settings
        self.before_batch = before_batch
        self.watcher = watcher  # started and stopped by run(), if given (see pipeline.model_watch)
        self.stats = LoopStats()
        self.stage_clock = StageClock(on_measure=lambda stage, s: self.metrics.stage_cpu.labels(stage=stage).inc(s))
        self._decoder: BatchDecoder | None = None
        self._hooks = LoopHooks()  # those of the current run
        self._late_seen = self._restarts_seen = 0  # assembler counts already passed to the metrics
        self.source: Source | None = None
        self.checkpointer = Checkpointer(settings.checkpoint)  # partition positions and checkpoint cadence
        self._stop = False
        self._latest_ts = 0.0
        self._event_clock = EventClock()
        self._period_checked = False
        self._last_activity = time.monotonic()
        # the scorer stage (None: score on the calling thread) and what was handed to it
        self._worker: ThreadPoolExecutor | None = None
        self._model_pool: ThreadPoolExecutor | None = None  # runs the model on batches, several at once
        self._writer: ThreadPoolExecutor | None = None  # writes sealed checkpoints durably, in order
        self._serving = (scorer.detector, scorer.model_version)  # what the next submitted batch is scored on
        self._inflight: deque[Future[Any]] = deque()
        self._checkpoints: deque[Future[CommitOffsets]] = deque()
        self._last_scored: tuple[float, str] | None = None  # (perf_counter, model version) of the last batch
        self._failed = False  # after a failure nothing more is committed: the next start redoes the rest
        self._scorer_failed = False  # set on the scorer thread: nothing after a failed batch runs there
        self._running = False
        self._last_iteration = time.monotonic()
        self._last_commit: float | None = None
        self.metrics.set_model_version(scorer.model_version)

    # -- control ---------------------------------------------------------------------------
    def request_stop(self, *_: object) -> None:
        """Ask the loop to finish its batch, flush, commit and return (safe from a signal handler)."""
        self._stop = True

    @property
    def latest_event_ts(self) -> float:
        """Newest reading timestamp seen so far (event time, epoch seconds)."""
        return self._latest_ts

    def liveness(self) -> dict[str, Any]:
        """What ``/healthz`` reports: the loop runs, has not failed and iterated within ``liveness_s``."""
        age = time.monotonic() - self._last_iteration
        ok = self._running and not self._failed and age < self.settings.liveness_s
        return {"ok": ok, "running": self._running, "failed": self._failed, "last_iteration_age_s": round(age, 3)}

    def readiness(self) -> dict[str, Any]:
        """What ``/readyz`` reports: assigned partitions, a live model watcher, commits keeping up."""
        now = time.monotonic()
        commit_age = None if self._last_commit is None else now - self._last_commit
        waiting = bool(self.checkpointer.uncheckpointed or self._checkpoints)
        since = self._last_commit if self._last_commit is not None else self._last_activity
        checks = {
            "alive": self.liveness()["ok"],
            "assigned": bool(self.checkpointer.partitions),
            "watcher_alive": self.watcher is None or bool(getattr(self.watcher, "alive", True)),
            "committing": not waiting or now - since < self.settings.ready_commit_age_s,
        }
        return {
            "ok": all(checks.values()),
            **checks,
            "last_commit_age_s": None if commit_age is None else round(commit_age, 3),
            "partitions": self.checkpointer.partitions,
        }

    def _check_period(self) -> None:
        """Once enough intervals are seen: warn if the stream's spacing disagrees with the windows' period."""
        if self._period_checked:
            return
        observed = self.assembler.observed_period(min_intervals=200)
        if observed is None:
            return
        self._period_checked = True
        period = self.assembler.sample_period_s
        if not 0.8 <= observed / period <= 1.25:
            log.warning(
                "readings arrive every %g s (median interval per sensor) but windows are built for one every %g s "
                "(the model's sample period or windows.sample_period_s); gaps over windows.max_fill_s = %g s "
                "restart windows. Set windows.sample_period_s or retrain on this stream",
                observed,
                period,
                self.assembler.max_fill_s,
            )

    def clock_report(self) -> str | None:
        """A warning for the end-of-run summary when most readings never reached a full window, else None."""
        without = self.assembler.readings_without_window()
        readings = self.assembler.stats.accepted
        if readings == 0 or without / readings <= 0.5:
            return None
        observed = self.assembler.observed_period()
        interval = f"{observed:g}" if observed is not None else "unknown"
        return (
            f"{without:,} of {readings:,} readings never reached a full window of {self.assembler.length}: "
            f"{self.assembler.stats.gap_restarts:,} gap restarts; the stream's median interval is "
            f"{interval} s, windows expect {self.assembler.sample_period_s:g} s "
            f"and restart after gaps over {self.assembler.max_fill_s:g} s. Likely cause: a sample period that does "
            "not match the stream (set windows.sample_period_s, or retrain on this stream), or sensors that "
            "send fewer readings than one window"
        )

    def _ts_range(self) -> tuple[float, float]:
        """Timestamps accepted now: from ``min_ts`` to the wall clock plus ``max_future_skew_s``."""
        return self.settings.min_ts, time.time() + self.settings.max_future_skew_s

    def swap_model(self, detector: AnomalyDetector, version: str) -> None:
        """Replace the serving model between micro-batches; drift detectors start afresh.

        With the scorer thread running, the swap is queued behind the batches already handed to it, and
        every batch handed over after this call is scored on the new model.
        """
        self._serving = (detector, version)
        self._submit(self._swap_now, detector, version)

    def _swap_now(self, detector: AnomalyDetector, version: str) -> None:
        self.scorer.swap(detector, version)
        if self.alarms is not None:  # an open regime-change notice closes once the fleet is quiet under it
            self.alarms.model_swapped()
        if self.drift is not None:
            self.drift.reset(version)
        self.metrics.set_model_version(version)
        self.stats.model_swaps += 1
        if self.events is not None:
            self.events.publish({"type": "model_swap", "model_version": version, "at": time.time()})

    # -- rebalance callbacks (called inside poll, on the loop's thread) -----------------------
    def on_assigned(self, assignments: list[Assignment]) -> None:
        self._last_activity = time.monotonic()  # waiting for a (slow) group join is not idleness
        self._wait_for_scorer()  # nothing still being buffered may race the removal of uncommitted parts
        for a in assignments:
            tp = (a.topic, a.partition)
            removed = self.error_log.discard_uncommitted(a.topic, a.partition, a.committed)
            if removed:
                log.info(
                    "%s-%d: removed %d uncommitted error-log part(s) past offset %d; they will be redone",
                    a.topic,
                    a.partition,
                    len(removed),
                    a.committed,
                )
            if self.alarms is not None:
                restored = self.alarms.restore(a.topic, a.partition, a.metadata.get("alarms"))
                if restored:
                    log.info("%s-%d: %d open alarm(s) taken over from the last commit", a.topic, a.partition, restored)
                if self.alarms.restore_notice(a.metadata.get("regime")):
                    log.info("%s-%d: the open regime-change notice taken over from the last commit", *tp)
            rewind = a.metadata.get("rewind_offset")
            replay = isinstance(rewind, int) and 0 <= rewind < a.committed and self.source is not None
            self.checkpointer.assign(tp, a.committed, rewind if replay else None)
            if replay and self.source is not None and isinstance(rewind, int):
                self.source.seek(a.topic, a.partition, rewind)
                log.info(
                    "%s-%d: assigned at offset %d; rebuilding windows from offset %d",
                    a.topic,
                    a.partition,
                    a.committed,
                    rewind,
                )
            else:
                log.info("%s-%d: assigned at offset %d", a.topic, a.partition, a.committed)

    def on_revoked(self, partitions: list[TopicPartitionKey]) -> None:
        log.info("partitions revoked: %s; flushing and committing", partitions)
        self.checkpoint()
        self.assembler.drop_partitions(partitions)
        if self.alarms is not None:
            self.alarms.drop_partitions(partitions)  # committed with the offsets: the next owner continues them
        for tp in partitions:
            self.checkpointer.revoke(tp)

    # -- the loop ----------------------------------------------------------------------------
    def run(
        self,
        source: Source,
        *,
        max_messages: int | None = None,
        timeout_s: float | None = None,
        idle_timeout_s: float | None = None,
        hooks: LoopHooks = LoopHooks(),
    ) -> LoopStats:
        """Consume until asked to stop or a bound is reached; always ends with a flush and commit.

        ``idle_timeout_s`` counts from the latest record or partition assignment, so a consumer still
        waiting to join its group (e.g. while a killed member's session expires) is not idle.
        """
        self.source = source
        self._hooks = hooks
        started = last_lag = self._last_activity = time.monotonic()
        if self.settings.pipelined:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="driftline-scorer")
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="driftline-writer")
            self._model_pool = ThreadPoolExecutor(
                max_workers=self.settings.model_threads,
                thread_name_prefix="driftline-model",
                initializer=share_cores,
                initargs=(self.settings.model_threads,),
            )
        if self.watcher is not None:
            self.watcher.start()
        self._running = True
        try:
            while not self._stop:
                self._last_iteration = time.monotonic()
                if self._failed:
                    raise RuntimeError("the scorer failed (see the error above); stopping without committing")
                if self.before_batch is not None:
                    self.before_batch(self)
                if hooks.before_batch is not None:
                    hooks.before_batch(self)
                with self.stage_clock.measure("poll"):
                    records = source.poll(self.settings.poll_timeout_s, self.settings.max_poll_records)
                now = time.monotonic()
                if records:
                    self.process(records)
                    self._last_activity = now
                self._harvest()
                if self.checkpointer.due(idle=not records, now=now):
                    self._request_checkpoint()
                self._commit_completed()
                if now - last_lag >= self.settings.lag_every_s:
                    self._update_lag()
                    last_lag = now
                if max_messages is not None and self.stats.messages >= max_messages:
                    break
                if timeout_s is not None and now - started >= timeout_s:
                    break
                if idle_timeout_s is not None and not records and now - self._last_activity >= idle_timeout_s:
                    break
        except BaseException:
            self._failed = True
            self._commit_sealed_before_failure()
            log.error("scoring loop failed; committing nothing more (the next start resumes from the last commit)")
            raise
        finally:
            self._running = False
            if self.watcher is not None:
                self.watcher.stop()
            try:
                if not self._failed:
                    self.checkpoint()
            finally:
                if self._worker is not None:
                    self._worker.shutdown(wait=True)
                    self._worker = None
                if self._writer is not None:
                    self._writer.shutdown(wait=True)
                    self._writer = None
                if self._model_pool is not None:
                    self._model_pool.shutdown(wait=True)
                    self._model_pool = None
                source.close()
        self.stats.gap_restarts = self.assembler.stats.gap_restarts
        self.stats.readings_without_window = self.assembler.readings_without_window()
        self.stats.clock_warning = self.clock_report()
        if self.stats.clock_warning:
            log.warning("%s", self.stats.clock_warning)
        return self.stats

    def process(self, records: list[Record]) -> None:
        """Decode and window one polled batch, then score it (on the scorer thread when pipelined)."""
        started = time.perf_counter()
        windows = self._assemble(records)
        self.checkpointer.note(windows=len(windows))
        detector, version = self._serving
        if self._model_pool is None:
            self._score_and_buffer(self._reconstruct(windows, detector, version), started)
            return
        reconstruction = self._model_pool.submit(self._reconstruct, windows, detector, version)
        self._submit(self._score_and_buffer, reconstruction, started)

    def _reconstruct(self, windows: WindowBatch, detector: AnomalyDetector, version: str) -> Reconstruction:
        """Model stage (a model thread when pipelined): batches run here side by side."""
        with self.stage_clock.measure("model"):
            return self.scorer.reconstruct(windows, detector, version)

    def _batch_decoder(self) -> BatchDecoder:
        """The decoder for the serving model's channels (a swap to other channels gets a new one)."""
        channels = self.scorer.channels
        if self._decoder is None or self._decoder.channels != channels:
            self._decoder = BatchDecoder(
                channels, max_bytes=self.settings.max_message_bytes, allowed_sensors=self.settings.allowed_sensors
            )
        return self._decoder

    def _assemble(self, records: list[Record]) -> WindowBatch:
        """Decode the batch column-wise, dead-letter what is refused, and window what is accepted."""
        clock = self.stage_clock
        with clock.measure("decode"):
            decoded = self._batch_decoder().decode([(record.value, record.key) for record in records], self._ts_range())
            checkpointer = self.checkpointer
            topics = [record.topic for record in records]
            partitions = np.fromiter((record.partition for record in records), dtype=np.int64, count=len(records))
            offsets = np.fromiter((record.offset for record in records), dtype=np.int64, count=len(records))
            floors = np.fromiter(
                (checkpointer.floor((record.topic, record.partition)) for record in records),
                dtype=np.int64,
                count=len(records),
            )
            live = offsets >= floors
            for index, rejection in decoded.rejections:
                if live[index]:
                    self._dead_letter(records[index], rejection.code, rejection.reason)
            if len(decoded):
                self._latest_ts = max(self._latest_ts, float(decoded.ts.max()))
                self._event_clock.observe_many(decoded.ts)
            read_to = {(record.topic, record.partition): record.offset + 1 for record in records}  # the last wins
            for tp, next_offset in read_to.items():
                checkpointer.read(tp, next_offset)
            live_messages = int(live.sum())
            live_readings = int(live[decoded.message].sum())
        with clock.measure("windows"):
            source = decoded.message
            windows = self.assembler.add_batch(
                decoded.sensor_id,
                decoded.ts,
                decoded.values,
                [topics[i] for i in source],
                partitions[source],
                offsets[source],
            )
            if not live.all() and len(windows):  # replaying up to the committed offsets: emit only past them
                pairs = zip(windows.topic, windows.partition, strict=True)
                floor = [checkpointer.floor((topic, int(p))) for topic, p in pairs]
                windows = windows.select(windows.end_offset >= np.array(floor, dtype=np.int64))
        late_before = self._late_seen
        self.checkpointer.note(messages=len(records))
        self.stats.messages += live_messages
        self.stats.readings += live_readings
        self.metrics.messages_in.inc(live_messages)
        self.metrics.readings_in.inc(live_readings)
        stats = self.assembler.stats
        self._late_seen = stats.late + stats.duplicates
        if self._late_seen > late_before:
            self.metrics.late_readings.inc(self._late_seen - late_before)
        if stats.gap_restarts > self._restarts_seen:
            self.metrics.gap_restarts.inc(stats.gap_restarts - self._restarts_seen)
            self._restarts_seen = stats.gap_restarts
        self._check_period()
        evicted = self.assembler.evict_idle(self._event_clock.now())
        if evicted:
            self._submit(self._forget, evicted, self._event_clock.now())  # in order, after their last batches
            self.metrics.evicted_sensors.inc(len(evicted))
            log.info(
                "forgot %d sensor(s) idle for over %.0f s of event time, e.g. %s",
                len(evicted),
                self.assembler.idle_ttl_s,
                evicted[:3],
            )
        return windows

    def _forget(self, sensor_ids: list[str], at: float) -> None:
        """Scorer stage: sensors evicted from the windows leave the k-of-n and drift state, and their
        open alarms close."""
        self.scorer.forget(sensor_ids)
        if self.drift is not None:
            self.drift.forget(sensor_ids)
        if self.alarms is not None:
            self._send_alarms(self.alarms.close(sensor_ids, at))

    def _raise_alarms(self, scored: ScoredBatch) -> None:
        if self.alarms is None or not len(scored.windows):
            return
        w = scored.windows
        self._send_alarms(
            self.alarms.update(
                w.sensor_id,
                w.end_ts,
                scored.anomaly,
                scored.error,
                scored.threshold,
                scored.channel_error,
                scored.model_version,
                w.topic,
                w.partition,
                w.end_offset,
            )
        )

    def _send_alarms(self, events: list[dict[str, Any]]) -> None:
        """Alarm events go out at once (the alerts topic) and into the alarms table (durable at the checkpoint);
        alarms suppressed during a regime change go only into the table."""
        for event in events:
            if self.alerts is not None and not event.get("suppressed"):
                self.alerts.publish(event)
            if event["type"] == "regime_change":
                self.metrics.alarm_events.labels(event=f"regime_{event['event']}").inc()
                log.warning(
                    "regime change %s (%s, policy %s): %d alarm(s) covered%s",
                    event["event"],
                    REGIME_CAUSES.get(event.get("cause", "fleet_drift"), "fleet-wide drift"),
                    event["policy"],
                    event["alarms_covered"],
                    f", closed by {event['closed_by']}" if event.get("closed_by") else "",
                )
                continue
            self.metrics.alarm_events.labels(event=event["event"]).inc()
            log.info(
                "alarm %s %s: sensor %s, %s%s",
                event["event"],
                event["alarm_id"],
                event["sensor_id"],
                event["severity"],
                " (suppressed: regime change)" if event["suppressed"] else "",
            )
        alarms = [e for e in events if e["type"] == "alarm"]
        if alarms and self.alarm_log is not None:
            self.alarm_log.append(alarms)
        if self.alarms is not None:
            self.metrics.open_alarms.set(len(self.alarms))

    def _score_and_buffer(self, reconstruction: Reconstruction | Future[Reconstruction], started: float) -> ScoredBatch:
        """Scorer stage, in submission order: judge, update drift, buffer the rows (not yet durable)."""
        if isinstance(reconstruction, Future):
            reconstruction = reconstruction.result()
        windows = reconstruction.windows
        clock = self.stage_clock
        with clock.measure("judge"):
            scored = self.scorer.judge(reconstruction)
        with clock.measure("drift"):
            drift_flags = self._update_drift(scored)
        with clock.measure("alarms"):
            self._raise_alarms(scored)
        with clock.measure("sink"):
            self.error_log.append(_to_columns(scored, drift_flags))
        n_anomalies = int(scored.anomaly.sum())
        self.stats.windows += len(windows)
        self.stats.anomalies += n_anomalies
        self.stats.batches += 1
        self.metrics.windows_scored.inc(len(windows))
        self.metrics.anomalies.inc(n_anomalies)
        done = time.perf_counter()
        self.metrics.batch_latency.observe(done - started)
        if len(windows):
            if self._last_scored is not None and self._last_scored[1] != scored.model_version:
                pause_ms = (done - self._last_scored[0]) * 1000
                self.stats.swap_pause_ms = max(self.stats.swap_pause_ms or 0.0, pause_ms)
                self.metrics.swap_pause.set(pause_ms / 1000)
            self._last_scored = (done, scored.model_version)
        return scored

    # -- the scorer stage ----------------------------------------------------------------------
    def _submit(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._worker is None:
            fn(*args)
            return
        while len(self._inflight) >= self.settings.max_inflight_batches:
            self._result(self._inflight.popleft())  # back-pressure
        self._inflight.append(self._worker.submit(self._on_scorer, fn, *args))

    def _on_scorer(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` on the scorer thread, unless work before it failed there: after a failure nothing
        more is scored or sealed, so no checkpoint sealed later can cover the failed batch."""
        if self._scorer_failed:
            raise RuntimeError("an earlier batch failed on the scorer; nothing after it is scored or sealed")
        try:
            return fn(*args)
        except BaseException:
            self._scorer_failed = True
            raise

    def _result(self, future: Future[Any]) -> Any:
        """The scorer's result; its failure is re-raised here and stops all further commits."""
        try:
            return future.result()
        except BaseException:
            self._failed = True
            raise

    def _harvest(self) -> None:
        """Collect finished scorer work; a failure there is raised on the consumer thread."""
        while self._inflight and self._inflight[0].done():
            self._result(self._inflight.popleft())

    def _wait_for_scorer(self) -> None:
        """Wait until the scorer has finished every batch and swap handed to it."""
        while self._inflight:
            self._result(self._inflight.popleft())

    def _drain(self) -> None:
        """Wait for every batch and checkpoint handed to the scorer (their snapshots are superseded)."""
        self._wait_for_scorer()
        while self._checkpoints:
            self._result(self._checkpoints.popleft())

    # -- durability and commits ------------------------------------------------------------------
    def _dead_letter(self, record: Record, code: str, reason: str) -> None:
        log.warning("dead letter %s-%d@%d [%s]: %s", record.topic, record.partition, record.offset, code, reason)
        self.dead_letters.send(
            DeadLetter(
                reason,
                record.topic,
                record.partition,
                record.offset,
                record.key,
                message_bytes(record.value),
                code=code,
            )
        )
        self.stats.dead_letters += 1
        self.metrics.dead_letters.labels(reason=code).inc()  # a closed set: REJECTION_CODES

    def _update_drift(self, scored: ScoredBatch) -> np.ndarray:
        flags = np.zeros(len(scored.windows), dtype=bool)
        if self.drift is None or not len(scored.windows):
            return flags
        windows = scored.windows
        for i, found in self.drift.update_many(windows.sensor_id, windows.end_ts, scored.error):
            threshold = scored.threshold[i] if found.scope == "sensor" else np.median(scored.threshold)
            fleet_alarmed = self.alarms is not None and self.alarms.fleet_alarmed
            event = self.drift.is_material(found, float(threshold), fleet_alarmed)
            flags[i] = flags[i] or event.scope == "sensor"
            if event.scope == "fleet" and event.material and self.alarms is not None:  # most likely a new regime
                self._send_alarms(self.alarms.fleet_drift(event.ts, event.model_version))
            self.stats.drift_events += 1
            self.metrics.drift_events.labels(scope=event.scope).inc()
            log.info("drift detected: %s", event)
            if self.drift_events is not None:
                self.drift_events.append([event.to_dict()])
            if self.events is not None:
                self.events.publish({"type": "drift", **event.to_dict()})
        return flags

    def _commit_offsets(self) -> CommitOffsets:
        """What to commit for everything processed so far (see :meth:`Checkpointer.offsets`)."""
        return self.checkpointer.offsets(self.assembler.rewind_offsets())

    def _durably(self, write: Callable[[], Any], sink: str) -> Any:
        """Run ``write`` under the retry policy: a failing disk or broker is waited out, never skipped."""

        def count(error: BaseException) -> None:
            self.metrics.write_failures.labels(sink=sink).inc()

        return self.settings.write_retry.run(write, sink, on_failure=count)

    def _seal(self, offsets: CommitOffsets) -> Sealed:
        """Scorer stage, in order after the batches before the checkpoint: take what they buffered."""
        if self.alarms is not None:  # open alarms travel with the commit: the next owner keeps their ids
            for tp, carried in self.alarms.snapshot().items():
                if tp in offsets:
                    offsets[tp][1]["alarms"] = carried
            notice = self.alarms.notice_snapshot()  # the fleet's notice, in every partition's commit
            if notice is not None:
                for _, metadata in offsets.values():
                    metadata["regime"] = notice
        return Sealed(offsets, [(sink, sink.seal()) for sink in self.durable_sinks])

    @property
    def durable_sinks(self) -> list[DurableSink]:
        """The sinks each checkpoint seals and writes before it commits (error log, drift events, alarms)."""
        sinks: list[DurableSink | None] = [self.error_log, self.drift_events, self.alarm_log]
        return [sink for sink in sinks if sink is not None]

    def _write_sealed(self, sealed: Sealed | Future[Sealed]) -> CommitOffsets:
        """Writer stage: write what was sealed durably (retrying through faults) and flush the publishers.

        On its own thread when pipelined, so the scorer goes on judging (and alarming) while Parquet
        parts are written and fsynced; one writer keeps the checkpoints in order.
        """
        taken = sealed.result() if isinstance(sealed, Future) else sealed
        with self.stage_clock.measure("durable"):
            for sink, rows in taken.rows:
                written = self._durably(partial(sink.write, rows), sink.name)
                if sink is self.error_log and written and self._hooks.on_durable is not None:
                    self._hooks.on_durable(written, time.time())
            for name, publisher in (("events", self.events), ("alerts", self.alerts)):
                if publisher is not None:
                    self._durably(publisher.flush, name)
        return taken.offsets

    def _make_durable(self, offsets: CommitOffsets) -> CommitOffsets:
        """Seal and write on the calling thread (nothing else in flight): the offsets, now committable."""
        return self._write_sealed(self._seal(offsets))

    def _request_checkpoint(self) -> None:
        """Snapshot the offsets now; commit them once the scorer sealed, and the writer made durable, all
        work before them."""
        offsets = self._commit_offsets()
        self.checkpointer.taken()
        if self._worker is None or self._writer is None:
            self._commit(self._make_durable(offsets), time.perf_counter())
            return
        sealed = self._worker.submit(self._on_scorer, self._seal, offsets)
        self._checkpoints.append(self._writer.submit(self._write_sealed, sealed))

    def _commit_completed(self) -> None:
        latest: CommitOffsets | None = None
        while self._checkpoints and self._checkpoints[0].done():
            latest = self._result(self._checkpoints.popleft())
        if latest is not None:
            self._commit(latest, time.perf_counter())

    def checkpoint(self) -> None:
        """Make everything produced so far durable, then commit offsets (with the rewind point)."""
        started = time.perf_counter()
        self._drain()
        self.checkpointer.taken()
        self._commit(self._make_durable(self._commit_offsets()), started)

    def _commit_sealed_before_failure(self) -> None:
        """After a failure: commit the latest checkpoint sealed before it that the writer made durable.

        Checkpoints are sealed in order after their batches and refused after a failed one, so each
        that completes covers only work done; the first that failed ends the search (a later one would
        skip its rows). Its commit spares the next start the replay; anything else is redone then.
        """
        latest: CommitOffsets | None = None
        while self._checkpoints:
            try:
                latest = self._checkpoints.popleft().result()
            except BaseException:
                break
        if latest is not None and self.source is not None:
            try:
                self._commit(latest, time.perf_counter(), after_failure=True)
            except Exception as error:
                log.warning("could not commit the checkpoints made durable before the failure: %s", error)

    def _commit(self, offsets: CommitOffsets, started: float, *, after_failure: bool = False) -> None:
        """Flush dead letters (consumer thread), then commit ``offsets``, whose results are durable."""
        if self._failed and not after_failure:  # e.g. a scorer failure seen in a rebalance callback
            raise RuntimeError("the scorer failed earlier; refusing to commit offsets past unwritten windows")
        self._durably(self.dead_letters.flush, "dead_letters")
        if self.source is None or not offsets:
            return
        try:
            with self.stage_clock.measure("commit"):
                self.source.commit(offsets)
        except KafkaError as error:  # data is durable; a later commit (or a replay) covers it
            log.warning("offset commit failed (%s); will retry at the next checkpoint", error)
            self.checkpointer.commit_failed()
            return
        self.stats.commits += 1
        self._last_commit = time.monotonic()
        self.metrics.commits.inc()
        self.metrics.flush_latency.observe(time.perf_counter() - started)

    def _update_lag(self) -> None:
        if self.source is None:
            return
        try:
            for (topic, partition), lag in self.source.lag().items():
                self.metrics.consumer_lag.labels(topic=topic, partition=str(partition)).set(lag)
        except KafkaError as error:
            log.debug("could not read consumer lag: %s", error)


@dataclass(frozen=True)
class Sealed:
    """A checkpoint's offsets and what each durable sink had buffered before it, for the writer."""

    offsets: CommitOffsets
    rows: list[tuple[DurableSink, Any]]


class EventClock:
    """Event time for idle eviction that no single reading can drive: the median of the last ``span`` stamps.

    A reading stamped years ahead moves the newest timestamp seen, but not this median, so it cannot
    make every other sensor look idle.

    >>> clock = EventClock(span=5)
    >>> for ts in (10.0, 11.0, 12.0, 9e12, 13.0):
    ...     clock.observe(ts)
    >>> clock.now()
    12.0
    """

    def __init__(self, span: int = 101) -> None:
        self._recent: deque[float] = deque(maxlen=span)

    def observe(self, ts: float) -> None:
        self._recent.append(ts)

    def observe_many(self, ts: np.ndarray) -> None:
        """:meth:`observe` each of ``ts`` in order (only the last ``span`` matter)."""
        self._recent.extend(ts[-(self._recent.maxlen or len(ts)) :].tolist())

    def now(self) -> float:
        """The median of the recent stamps (0.0 before any)."""
        return float(np.median(self._recent)) if self._recent else 0.0


def _to_columns(scored: ScoredBatch, drift_flags: np.ndarray) -> ScoredWindows:
    windows = scored.windows
    return ScoredWindows(
        sensor_id=windows.sensor_id,
        window_start=windows.start_ts,
        window_end=windows.end_ts,
        error=scored.error,
        channel_error=scored.channel_error,
        threshold=scored.threshold,
        exceeded=scored.exceeded,
        anomaly=scored.anomaly,
        drift=drift_flags,
        model_version=scored.model_version,
        source_topic=windows.topic,
        source_partition=windows.partition,
        source_offset_start=windows.first_offset,
        source_offset_end=windows.end_offset,
    )
