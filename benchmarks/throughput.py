"""Throughput of the streaming scorer against a real broker, beside its two ceilings, in one run.

- **consume-only**: the same kafka-python consumer and settings, polling the same topic, doing nothing;
- **model-only**: the same model scoring pre-built windows in micro-batches of the loop's batch size,
  with the loop's model threads (``scoring.model_threads`` batches at once, each with its share of the
  cores), so both sides run the model the same way;
- **end-to-end**: the scoring loop (decode, window, score, drift, Parquet, fsync, commit) on the topic.

All three read the same readings (one per message, as sensors usually publish) and are reported in
readings/s. Beside each rate the machine's CPU time per reading is measured (all processes, from
``/proc/stat``, so the co-located broker counts): the end-to-end loop must do the work of both
ceilings on the same cores, which bounds it at ``cores / (cpu_consume + cpu_model)``.

Beside the rates, the loop's own thread CPU per stage (:mod:`pipeline.stage_clock`) per reading, and
the process's peak RSS.

Latency (produce -> row durable) is measured in a second phase where readings are produced at a fixed
rate while the loop runs: each reading's timestamp is its produce time, and a row is durable when the
loop's ``on_durable`` hook reports its part fsynced (the row's ``ingest_time`` is stamped before the
write, so it would understate the latency).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import resource
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.live_producer import produce_live
from models.detector import AnomalyDetector
from models.registry import ModelRegistry
from models.scoring import reconstruction_errors
from models.training import TrainingConfig
from pipeline.config import DriftlineConfig, KafkaSettings, load_config
from pipeline.consumer import LoopHooks, ScoringLoop
from pipeline.kafka_clients import make_consumer, make_producer
from pipeline.messages import encode_readings
from pipeline.producer import create_topic
from pipeline.scorer import share_cores
from pipeline.service import build_loop, default_model_threads
from pipeline.simulator import FleetSpec, simulate_fleet
from pipeline.sinks import DeadLetterFile, KafkaEventPublisher
from pipeline.sources import Assignment, KafkaSource
from pipeline.stage_clock import STAGES
from pipeline.time_spans import epoch_seconds
from pipeline.windows import WindowAssembler
from pipeline.workers import available_cores, pin_to_cores, worker_cores

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ThroughputResult:
    readings: int
    end_to_end: float
    consume_only: float
    model_only: float
    latency_p50_ms: float
    latency_p99_ms: float
    latency_rate: float
    partitions: int
    batch_size: int
    cpu_us: dict[str, float | None]  # machine CPU microseconds per reading, per phase
    cores: int
    model_threads: int = 1
    workers: int = 1
    rounds: int = 1
    stage_us: dict[str, float] = field(default_factory=dict)  # loop thread CPU us per reading, per stage
    peak_rss_mb: float | None = None
    alarm_latency_p50_ms: float | None = None  # produce -> alarm open event read from the alerts topic
    alarm_latency_p99_ms: float | None = None
    alarms_opened: int = 0
    fleet_sensors: int = 0
    fleet_memory_mb: float | None = None  # per-sensor state with fleet_sensors in flight
    fleet_memory_after_evict_mb: float | None = None

    @property
    def ratio(self) -> float:
        return self.end_to_end / min(self.consume_only, self.model_only)

    @property
    def additive_bound(self) -> float | None:
        """Readings/s a loop doing the consume and the model work on these cores could reach at most."""
        consume, model = self.cpu_us.get("consume_only"), self.cpu_us.get("model_only")
        if consume is None or model is None:
            return None
        return self.cores * 1e6 / (consume + model)

    @property
    def ratio_to_cpu_bound(self) -> float | None:
        bound = self.additive_bound
        return None if bound is None else self.end_to_end / bound

    @property
    def loop_cpu_us(self) -> float | None:
        """The loop's own machine CPU per reading: end-to-end minus the consume and model ceilings' CPU."""
        parts = [self.cpu_us.get(k) for k in ("end_to_end", "consume_only", "model_only")]
        if any(p is None for p in parts):
            return None
        end, consume, model = (float(p) for p in parts)  # type: ignore[arg-type]
        return end - consume - model

    def headline(self) -> dict[str, float | None]:
        ratio_bound = self.ratio_to_cpu_bound
        return {
            "end_to_end": round(self.end_to_end, 1),
            "consume_only": round(self.consume_only, 1),
            "model_only": round(self.model_only, 1),
            "ratio_to_min": round(self.ratio, 3),
            "ratio_to_cpu_bound": None if ratio_bound is None else round(ratio_bound, 3),
            "latency_p50_ms": round(self.latency_p50_ms, 1),
            "latency_p99_ms": round(self.latency_p99_ms, 1),
            "latency_rate": round(self.latency_rate, 1),
            "alarm_latency_p50_ms": _rounded(self.alarm_latency_p50_ms),
            "alarm_latency_p99_ms": _rounded(self.alarm_latency_p99_ms),
            "alarms_opened": self.alarms_opened,
            "readings": self.readings,
            "cpu_us_per_reading_consume_only": _rounded(self.cpu_us.get("consume_only")),
            "cpu_us_per_reading_model_only": _rounded(self.cpu_us.get("model_only")),
            "cpu_us_per_reading_end_to_end": _rounded(self.cpu_us.get("end_to_end")),
            "cpu_us_per_reading_loop_own": _rounded(self.loop_cpu_us),
            **{f"stage_cpu_us_{stage}": round(us, 2) for stage, us in self.stage_us.items()},
            "peak_rss_mb": _rounded(self.peak_rss_mb),
            "fleet_sensors": self.fleet_sensors,
            "fleet_memory_mb": _rounded(self.fleet_memory_mb),
            "fleet_memory_after_evict_mb": _rounded(self.fleet_memory_after_evict_mb),
            "model_threads": self.model_threads,
            "workers": self.workers,
            "cores": self.cores,
        }

    def table(self) -> str:
        bottleneck = min(self.consume_only, self.model_only)
        rows = [
            ("consume-only (kafka-python, same settings)", self.consume_only, self.cpu_us.get("consume_only")),
            (
                f"model-only (LSTM-AE, same micro-batch, {self.model_threads} thread(s))",
                self.model_only,
                self.cpu_us.get("model_only"),
            ),
            (
                f"end-to-end (decode+window+score+Parquet+commit), {self.workers} process(es)",
                self.end_to_end,
                self.cpu_us.get("end_to_end"),
            ),
        ]
        lines = [f"{'what':50s} {'readings/s':>12s} {'CPU us/reading':>15s}", "-" * 79]
        lines += [f"{name:50s} {rate:12,.0f} {_cell(cpu):>15s}" for name, rate, cpu in rows]
        lines += [
            "-" * 79,
            f"end-to-end / min(consume, model) = {self.ratio:.2f}  (target >= 0.50; bottleneck {bottleneck:,.0f}/s)",
            f"latency produce -> row durable (fsynced) at {self.latency_rate:,.0f} readings/s: "
            f"p50 {self.latency_p50_ms:.0f} ms, p99 {self.latency_p99_ms:.0f} ms",
            f"latency produce -> alarm on the alerts topic, same run ({self.alarms_opened} alarms): "
            f"p50 {_cell(self.alarm_latency_p50_ms)} ms, p99 {_cell(self.alarm_latency_p99_ms)} ms"
            " (target p99 < 1,000)",
            f"{self.readings:,} readings, {self.partitions} partitions, micro-batch {self.batch_size} readings; "
            f"each rate the median of {self.rounds} rounds of the three phases side by side",
        ]
        bound = self.additive_bound
        if bound is not None:
            lines.append(
                f"CPU bound on these {self.cores} cores (broker included): cores / (consume + model CPU per reading)"
                f" = {bound:,.0f}/s; end-to-end = {self.end_to_end / bound:.2f} of it (target >= 0.80)"
            )
        loop_own = self.loop_cpu_us
        consume, model = self.cpu_us.get("consume_only"), self.cpu_us.get("model_only")
        if loop_own is not None and consume is not None and model is not None:
            lines.append(
                f"the loop's own CPU: {loop_own:,.1f} us/reading = {loop_own / (consume + model):.0%} of consume"
                " + model"
                " (target <= 25 %)"
            )
        if self.stage_us:
            lines += ["", f"{'loop stage (thread CPU, us/reading, end-to-end run)':50s} {'us':>8s}", "-" * 59]
            lines += [f"{stage:50s} {us:8.2f}" for stage, us in self.stage_us.items()]
        if self.peak_rss_mb is not None:
            lines.append(f"peak RSS of this process (model, broker client, loop): {self.peak_rss_mb:,.0f} MB")
        if self.fleet_memory_mb is not None and self.fleet_memory_after_evict_mb is not None:
            lines.append(
                f"per-sensor state, {self.fleet_sensors:,} sensors in flight: +{self.fleet_memory_mb:,.1f} MB RSS "
                f"({self.fleet_memory_mb * 1e6 / max(self.fleet_sensors, 1):,.0f} B/sensor); after eviction "
                f"+{self.fleet_memory_after_evict_mb:,.1f} MB"
            )
        return "\n".join(lines)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f}"


def _machine_cpu_seconds() -> float | None:
    """Busy CPU seconds of the whole machine since boot (Linux ``/proc/stat``), or None elsewhere."""
    try:
        with open("/proc/stat") as handle:
            fields = handle.readline().split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[:7])
    # steal (the hypervisor running other guests) is time this machine waited, not work it did
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


class _CpuMeter:
    """CPU microseconds per reading spent by the whole machine between ``start`` and ``stop``."""

    def start(self) -> None:
        self._begin = _machine_cpu_seconds()

    def per_reading(self, readings: int) -> float | None:
        end = _machine_cpu_seconds()
        if self._begin is None or end is None or readings <= 0:
            return None
        return (end - self._begin) * 1e6 / readings


def _messages(fleet: pd.DataFrame, channels: list[str], now: float | None = None) -> list[tuple[bytes, bytes]]:
    times = epoch_seconds(fleet["timestamp"])
    values = fleet[channels].to_numpy()
    out = []
    for sensor, ts, row in zip(fleet["sensor_id"], times, values, strict=True):
        reading = {"sensor_id": sensor, "ts": float(ts), "values": dict(zip(channels, row.tolist(), strict=True))}
        out.append((sensor.encode(), encode_readings([reading])))
    return out


def _config(base: DriftlineConfig, bootstrap: str, topic: str, data_dir: Path, registry: Path) -> DriftlineConfig:
    return load_config(
        overrides=[
            f"data_dir={data_dir}",
            f"kafka.bootstrap_servers={bootstrap}",
            f"kafka.topics={topic}",
            f"kafka.group_id=bench-{uuid.uuid4().hex[:8]}",
            f"kafka.max_poll_records={base.kafka.max_poll_records}",
            f"model.registry_dir={registry}",
            "model.device=cpu",
            "metrics.port=0",
            f"sinks.roll_rows={base.sinks.roll_rows}",
            f"sinks.roll_seconds={base.sinks.roll_seconds}",
            f"drift.detector={base.drift.detector}",
            f"scoring.pipelined={str(base.scoring.pipelined).lower()}",
            *([f"scoring.model_threads={base.scoring.model_threads}"] if base.scoring.model_threads else []),
        ]
    )


def fleet_memory(sensors: int, window: int, channels: int, drift: str = "adwin") -> tuple[float, float]:
    """Resident MB the loop's per-sensor state adds with ``sensors`` in flight, and what stays after eviction.

    Each sensor's window ring, its drift detector and k-of-n state, fed one full window and one scored
    error per sensor; measured as the process's resident set (``/proc/self/statm``) before and after
    (memory freed to the allocator may stay resident: the second figure says how much did not).

    >>> held, after = fleet_memory(2000, 30, 5)
    >>> held > 0
    True
    """
    import gc

    from models.threshold import AlarmFilter, StreamingAlarm
    from pipeline.drift import DriftMonitor

    names = [f"sensor-{i:05d}" for i in range(sensors)]
    assembler = WindowAssembler(length=window)
    monitor = DriftMonitor(drift, "v1")  # type: ignore[arg-type]
    alarm = StreamingAlarm()
    rng = np.random.default_rng(0)
    gc.collect()
    before = _resident_bytes()
    for step in range(window):
        batch = assembler.add_batch(
            names,
            np.full(sensors, float(step)),
            rng.normal(size=(sensors, channels)),
            ["t"] * sensors,
            np.zeros(sensors, np.int64),
            np.arange(sensors) + step * sensors,
        )
    errors = rng.gamma(2.0, 1.0, size=len(batch))
    monitor.update_many(batch.sensor_id, batch.end_ts, errors)
    alarm.update(batch.sensor_id, errors > 3.0, AlarmFilter())
    del batch
    gc.collect()
    held = _resident_bytes() - before
    gone = assembler.evict_idle(now_ts=1e12)  # as the loop does with sensors gone idle
    monitor.forget(gone)
    alarm.forget(gone)
    gc.collect()
    after = _resident_bytes() - before
    return held / 1e6, after / 1e6


def _resident_bytes() -> int:
    """This process's resident set in bytes (Linux), else its peak."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _percentile_ms(seconds: list[float], q: float) -> float | None:
    return float(np.percentile(seconds, q) * 1000) if seconds else None


def _median_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.median(known)) if known else None


def _consume_only(
    base: DriftlineConfig, bootstrap: str, topic: str, work: Path, registry: Path, total: int
) -> tuple[float, float | None]:
    """The same kafka-python consumer and settings polling the whole topic in a fresh group, doing nothing."""
    config = _config(base, bootstrap, topic, work / "consume", registry)
    consumer = make_consumer(
        config.kafka,
        topic,
        group_id=config.kafka.group_id,
        auto_offset_reset="earliest",
        max_poll_records=config.kafka.max_poll_records,
        session_timeout_ms=config.kafka.session_timeout_ms,
        fetch_max_wait_ms=100,
    )
    cpu = _CpuMeter()
    seen, started, counted_from = 0, 0.0, 0
    while seen < total:  # timed from the end of the first batch, as the loop is (group join excluded)
        seen += sum(len(records) for records in consumer.poll(timeout_ms=500).values())
        if seen and not started:
            started, counted_from = time.perf_counter(), seen
            cpu.start()
    rate = (seen - counted_from) / (time.perf_counter() - started)
    cpu_per_reading = cpu.per_reading(seen - counted_from)
    consumer.close()
    return rate, cpu_per_reading


def _model_only(
    detector: AnomalyDetector, windows: np.ndarray, batch_size: int, config: DriftlineConfig, model_threads: int
) -> tuple[float, float | None]:
    """The model on pre-built windows in micro-batches of the loop's batch size, on the loop's threads."""
    sample = windows[: max(batch_size * 20, 20_000)]

    def score(i: int) -> None:
        stacked = np.ascontiguousarray(sample[i : i + batch_size])
        reconstruction_errors(detector.model, stacked, config.scoring.batch_size)

    cpu = _CpuMeter()
    with ThreadPoolExecutor(model_threads, initializer=share_cores, initargs=(model_threads,)) as pool:
        list(pool.map(score, [0] * model_threads))  # warm-up, every thread
        started = time.perf_counter()
        cpu.start()
        list(pool.map(score, range(0, len(sample), batch_size)))
        rate = len(sample) / (time.perf_counter() - started)
    return rate, cpu.per_reading(len(sample))


def _end_to_end(
    base: DriftlineConfig, bootstrap: str, topic: str, work: Path, registry: Path, total: int
) -> tuple[float, float | None, dict[str, float]]:
    """The scoring loop, built as ``serve`` builds it, on the whole topic in a fresh group."""
    config = _config(base, bootstrap, topic, work, registry)
    loop = build_loop(config, DeadLetterFile(work / "dead.jsonl"))
    source = KafkaSource(config.kafka, loop.on_assigned, loop.on_revoked)
    first_batch: list[tuple[float, int]] = []
    cpu = _CpuMeter()

    def stamp_first(_: object) -> None:
        if not first_batch and loop.stats.messages:
            first_batch.append((time.perf_counter(), loop.stats.messages))
            cpu.start()

    loop.run(source, max_messages=total, idle_timeout_s=10, hooks=LoopHooks(before_batch=stamp_first))
    # from the end of the first polled batch to the final flush and commit (group join excluded)
    t_first, counted_from = first_batch[0]
    rate = (loop.stats.messages - counted_from) / (time.perf_counter() - t_first)
    return rate, cpu.per_reading(loop.stats.messages - counted_from), loop.stage_clock.per_item_us(loop.stats.readings)


def _worker(config: DriftlineConfig, work: Path, index: int, workers: int, target: int, done: Any, events: Any) -> None:
    """One of ``workers`` scoring processes pinned to its cores, as ``serve --workers`` runs each."""
    pin_to_cores(worker_cores(available_cores(), workers, index))
    loop = build_loop(config, DeadLetterFile(work / f"dead-{index}.jsonl"))
    source = KafkaSource(config.kafka, loop.on_assigned, loop.on_revoked)
    reported = [0]

    def account(loop: ScoringLoop) -> None:
        new = loop.stats.messages - reported[0]
        if new:
            if not reported[0]:
                events.put(("first", index, time.perf_counter()))
            with done.get_lock():
                done.value += new
            reported[0] = loop.stats.messages
        if done.value >= target:
            loop.request_stop()

    loop.run(source, idle_timeout_s=30, hooks=LoopHooks(before_batch=account))
    account(loop)
    events.put(("done", index, time.perf_counter(), loop.stats.readings, loop.stage_clock.cpu_s))


def _end_to_end_workers(
    base: DriftlineConfig, bootstrap: str, topic: str, work: Path, registry: Path, total: int, workers: int
) -> tuple[float, float | None, dict[str, float]]:
    """``workers`` scoring processes in one group; timed once every worker scored its first batch."""
    config = _config(base, bootstrap, topic, work, registry)
    context = multiprocessing.get_context("spawn")
    done, events = context.Value("q", 0), context.Queue()
    processes = [
        context.Process(target=_worker, args=(config, work, i, workers, total, done, events)) for i in range(workers)
    ]
    for process in processes:
        process.start()
    cpu = _CpuMeter()
    first: dict[int, float] = {}
    while len(first) < workers:  # every worker assigned and scoring: the group is settled
        kind, index, at = events.get(timeout=300)[:3]
        if kind == "first":
            first[index] = at
    started, counted_from = time.perf_counter(), done.value
    cpu.start()
    finished, readings, stages = 0, 0, dict.fromkeys(STAGES, 0.0)
    while finished < workers:
        event = events.get(timeout=600)
        if event[0] == "done":
            finished += 1
            readings += event[3]
            stages = {k: stages[k] + event[4][k] for k in stages}
            ended = event[2]
    for process in processes:
        process.join(timeout=60)
    counted = done.value - counted_from
    rate = counted / (ended - started)
    return rate, cpu.per_reading(counted), {k: v * 1e6 / max(readings, 1) for k, v in stages.items()}


def run_throughput(
    bootstrap: str,
    base: DriftlineConfig,
    *,
    sensors: int = 20,
    rows: int = 5000,
    partitions: int = 3,
    latency_rate: float | None = None,
    latency_seconds: float = 20.0,
    rounds: int = 3,
    workers: int = 1,
    fleet_sensors: int = 10_000,
) -> ThroughputResult:
    work = Path(tempfile.mkdtemp(prefix="driftline-bench-"))
    spec = FleetSpec(sensors=sensors, rows=rows, anomalies_per_sensor=2, normal_prefix_rows=rows // 4, seed=11)
    fleet = simulate_fleet(spec)
    channels = list(spec.channels)
    settings = base.model
    detector = AnomalyDetector.fit(
        [g[channels].to_numpy()[: rows // 4] for _, g in fleet.groupby("sensor_id")][:4],
        channels=tuple(channels),
        training=TrainingConfig(epochs=2, progress=False),  # speed, not detection, is measured here
        **settings.fit_options(),  # the served model as `driftline train` fits it under this config
    )
    registry = work / "registry"
    ModelRegistry(registry).publish(detector, promote=True)

    topic = create_topic(bootstrap, "bench", partitions)
    messages = _messages(fleet, channels)
    producer = make_producer(KafkaSettings(bootstrap_servers=bootstrap), batch_size=256 * 1024)
    for key, value in messages:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()
    total = len(messages)
    log.info("produced %d readings to %s", total, topic)

    config = _config(base, bootstrap, topic, work / "consume", registry)
    windows = detector.scaler.scaled_windows(fleet[channels].to_numpy(), settings.window)
    batch_size = config.kafka.max_poll_records
    model_threads = config.scoring.model_threads or default_model_threads("cpu")
    if workers > 1:  # the model-only ceiling runs the model as the workers do: each on its own cores
        model_threads = workers * (config.scoring.model_threads or max(1, min(len(available_cores()) // workers, 4)))
    measured: dict[str, list[tuple[float, float | None]]] = {"consume_only": [], "model_only": [], "end_to_end": []}
    stage_us: dict[str, float] = {}
    for round_ in range(rounds):  # the phases side by side, several times: medians resist a noisy machine
        log.info("round %d of %d", round_ + 1, rounds)
        measured["consume_only"].append(_consume_only(base, bootstrap, topic, work, registry, total))
        measured["model_only"].append(_model_only(detector, windows, batch_size, config, model_threads))
        e2e_work = work / f"e2e-{round_}"
        if workers > 1:
            rate, cpu_per_reading, stages = _end_to_end_workers(
                base, bootstrap, topic, e2e_work, registry, total, workers
            )
        else:
            rate, cpu_per_reading, stages = _end_to_end(base, bootstrap, topic, e2e_work, registry, total)
        measured["end_to_end"].append((rate, cpu_per_reading))
        stage_us = {k: stage_us.get(k, 0.0) + v / rounds for k, v in stages.items()}
    rates = {phase: float(np.median([r for r, _ in runs])) for phase, runs in measured.items()}
    cpu_us = {phase: _median_or_none([c for _, c in runs]) for phase, runs in measured.items()}
    consume_only, model_only, end_to_end = rates["consume_only"], rates["model_only"], rates["end_to_end"]

    # latency at a fixed rate (default: half the end-to-end rate): reading ts = produce time; a row is
    # durable when its part is fsynced (on_durable); an alarm is delivered when it is read from the alerts topic
    latency_rate = latency_rate or round(end_to_end / 2, -2)
    latency_topic = create_topic(bootstrap, "bench", partitions)
    alerts_topic = create_topic(bootstrap, "bench-alerts", 1)
    config = _config(base, bootstrap, latency_topic, work / "latency", registry)
    alert_producer = make_producer(config.kafka)  # as serve's producer
    alerts = KafkaEventPublisher(alert_producer, alerts_topic, key="sensor_id")
    loop = build_loop(config, DeadLetterFile(work / "latency" / "dead.jsonl"), alerts=alerts)
    context = multiprocessing.get_context("spawn")
    assigned = context.Event()  # the producer starts once the loop owns the partitions (not during the join)

    def on_assigned(assignments: list[Assignment]) -> None:
        loop.on_assigned(assignments)
        assigned.set()

    source = KafkaSource(config.kafka, on_assigned, loop.on_revoked)
    n_latency = int(latency_rate * latency_seconds)
    per_sensor = n_latency // sensors
    rows_by_sensor = fleet[channels].to_numpy().tolist()
    alarm_latency_s: list[float] = []
    listening = threading.Event()

    def listen_for_alarms() -> None:
        consumer = make_consumer(config.kafka, alerts_topic, group_id=None, auto_offset_reset="earliest")
        while not listening.is_set():
            for records in consumer.poll(timeout_ms=100).values():
                received = time.time()
                for record in records:
                    event = json.loads(record.value)
                    if event["event"] == "open":
                        # from the reading that opened it: "at" (an alarm suppressed during a regime change
                        # and sent once it stands out keeps its first window as opened_at)
                        alarm_latency_s.append(received - event["at"])
        consumer.close()

    held, after_evict = fleet_memory(fleet_sensors, settings.window, len(channels), base.drift.detector)
    durable_at: dict[Path, float] = {}

    def note_durable(parts: list[Path], at: float) -> None:
        durable_at.update(dict.fromkeys(parts, at))

    # the producer runs in a process of its own, as a plant's producers do (not in the scorer's interpreter)
    feeder = context.Process(
        target=produce_live,
        args=(config.kafka, latency_topic, rows_by_sensor, channels, sensors, per_sensor, latency_rate, assigned),
        daemon=True,
    )
    listener = threading.Thread(target=listen_for_alarms, daemon=True)
    listener.start()
    feeder.start()
    loop.run(source, idle_timeout_s=5, hooks=LoopHooks(on_durable=note_durable))
    feeder.join()
    time.sleep(1.0)  # the last alarms in flight
    listening.set()
    listener.join()
    alert_producer.close()
    latency_ms = np.concatenate(
        [
            (at - epoch_seconds(pd.read_parquet(part, columns=["window_end"])["window_end"])) * 1000
            for part, at in durable_at.items()
        ]
    )
    return ThroughputResult(
        readings=total,
        end_to_end=end_to_end,
        consume_only=consume_only,
        model_only=model_only,
        latency_p50_ms=float(np.percentile(latency_ms, 50)),
        latency_p99_ms=float(np.percentile(latency_ms, 99)),
        latency_rate=latency_rate,
        alarm_latency_p50_ms=_percentile_ms(alarm_latency_s, 50),
        alarm_latency_p99_ms=_percentile_ms(alarm_latency_s, 99),
        alarms_opened=len(alarm_latency_s),
        partitions=partitions,
        batch_size=batch_size,
        cpu_us=cpu_us,
        cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
        model_threads=model_threads,
        workers=workers,
        rounds=rounds,
        stage_us=stage_us,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        fleet_sensors=fleet_sensors,
        fleet_memory_mb=held,
        fleet_memory_after_evict_mb=after_evict,
    )


if __name__ == "__main__":  # `python benchmarks/throughput.py ...` is `driftline benchmark throughput ...`
    import sys

    from pipeline.cli import cli

    cli(["benchmark", "throughput", *sys.argv[1:]], prog_name="benchmarks/throughput.py")
