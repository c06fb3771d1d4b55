"""Throughput of the streaming scorer against a real broker, beside its two ceilings, in one run.

- **consume-only**: the same kafka-python consumer and settings, polling the same topic, doing nothing;
- **model-only**: the same model scoring pre-built windows in micro-batches of the loop's batch size;
- **end-to-end**: the scoring loop (decode, window, score, drift, Parquet, fsync, commit) on the topic.

All three read the same readings (one per message, as sensors usually publish) and are reported in
readings/s. Beside each rate the machine's CPU time per reading is measured (all processes, from
``/proc/stat``, so the co-located broker counts): the end-to-end loop must do the work of both
ceilings on the same cores, which bounds it at ``cores / (cpu_consume + cpu_model)``.

Latency (produce -> row durable) is measured in a second phase where readings are produced at a fixed
rate while the loop runs: each reading's timestamp is its produce time and each error-log row records
when it was written (``ingest_time``).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from kafka import KafkaConsumer, KafkaProducer

from models.detector import AnomalyDetector
from models.registry import ModelRegistry
from models.scoring import reconstruction_errors
from models.training import TrainingConfig
from pipeline.config import DriftlineConfig, load_config
from pipeline.messages import encode_readings
from pipeline.producer import create_topic
from pipeline.service import build_loop
from pipeline.simulator import FleetSpec, simulate_fleet
from pipeline.sinks import DeadLetterFile
from pipeline.sources import KafkaSource
from pipeline.time_spans import epoch_seconds

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

    def headline(self) -> dict[str, float | None]:
        return {
            "end_to_end": round(self.end_to_end, 1),
            "consume_only": round(self.consume_only, 1),
            "model_only": round(self.model_only, 1),
            "ratio_to_min": round(self.ratio, 3),
            "latency_p50_ms": round(self.latency_p50_ms, 1),
            "latency_p99_ms": round(self.latency_p99_ms, 1),
            "readings": self.readings,
            "cpu_us_per_reading_consume_only": _rounded(self.cpu_us.get("consume_only")),
            "cpu_us_per_reading_model_only": _rounded(self.cpu_us.get("model_only")),
            "cpu_us_per_reading_end_to_end": _rounded(self.cpu_us.get("end_to_end")),
            "cores": self.cores,
        }

    def table(self) -> str:
        bottleneck = min(self.consume_only, self.model_only)
        rows = [
            ("consume-only (kafka-python, same settings)", self.consume_only, self.cpu_us.get("consume_only")),
            ("model-only (LSTM-AE, same micro-batch)", self.model_only, self.cpu_us.get("model_only")),
            ("end-to-end (decode+window+score+Parquet+commit)", self.end_to_end, self.cpu_us.get("end_to_end")),
        ]
        lines = [f"{'what':50s} {'readings/s':>12s} {'CPU us/reading':>15s}", "-" * 79]
        lines += [f"{name:50s} {rate:12,.0f} {_cell(cpu):>15s}" for name, rate, cpu in rows]
        lines += [
            "-" * 79,
            f"end-to-end / min(consume, model) = {self.ratio:.2f}  (target >= 0.80; bottleneck {bottleneck:,.0f}/s)",
            f"latency produce -> row durable at {self.latency_rate:,.0f} readings/s: "
            f"p50 {self.latency_p50_ms:.0f} ms, p99 {self.latency_p99_ms:.0f} ms",
            f"{self.readings:,} readings, {self.partitions} partitions, micro-batch {self.batch_size} readings",
        ]
        bound = self.additive_bound
        if bound is not None:
            lines.append(
                f"CPU bound on these {self.cores} cores (broker included): cores / (consume + model CPU per reading)"
                f" = {bound:,.0f}/s = {bound / bottleneck:.2f} of the bottleneck"
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
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


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
        ]
    )


def run_throughput(
    bootstrap: str,
    base: DriftlineConfig,
    *,
    sensors: int = 20,
    rows: int = 5000,
    partitions: int = 3,
    latency_rate: float = 2000.0,
    latency_seconds: float = 10.0,
) -> ThroughputResult:
    work = Path(tempfile.mkdtemp(prefix="driftline-bench-"))
    spec = FleetSpec(sensors=sensors, rows=rows, anomalies_per_sensor=2, normal_prefix_rows=rows // 4, seed=11)
    fleet = simulate_fleet(spec)
    channels = list(spec.channels)
    settings = base.model
    detector = AnomalyDetector.fit(
        [g[channels].to_numpy()[: rows // 4] for _, g in fleet.groupby("sensor_id")][:4],
        window=settings.window,
        hidden_size=settings.hidden_size,
        latent_size=settings.latent_size,
        num_layers=settings.num_layers,
        channels=tuple(channels),
        training=TrainingConfig(epochs=2, progress=False),
    )
    registry = work / "registry"
    ModelRegistry(registry).publish(detector, promote=True)

    topic = create_topic(bootstrap, "bench", partitions)
    messages = _messages(fleet, channels)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, batch_size=256 * 1024)
    for key, value in messages:
        producer.send(topic, key=key, value=value)
    producer.flush()
    total = len(messages)
    log.info("produced %d readings to %s", total, topic)

    # (a) consume-only
    config = _config(base, bootstrap, topic, work / "consume", registry)
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=config.kafka.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=config.kafka.max_poll_records,
        fetch_max_wait_ms=100,
        fetch_max_bytes=8 * 1024 * 1024,
        receive_message_max_bytes=16 * 1024 * 1024,
    )
    cpu, cpu_us = _CpuMeter(), {}
    seen, started, counted_from = 0, 0.0, 0
    while seen < total:  # timed from the end of the first batch, as the loop is (group join excluded)
        seen += sum(len(records) for records in consumer.poll(timeout_ms=500).values())
        if seen and not started:
            started, counted_from = time.perf_counter(), seen
            cpu.start()
    consume_only = (seen - counted_from) / (time.perf_counter() - started)
    cpu_us["consume_only"] = cpu.per_reading(seen - counted_from)
    consumer.close()

    # (b) model-only, micro-batches of the loop's batch size (one window per reading)
    windows = detector.scaler.scaled_windows(fleet[channels].to_numpy(), settings.window)
    batch_size = config.kafka.max_poll_records
    sample = windows[: max(batch_size * 20, 20_000)]
    reconstruction_errors(detector.model, sample[:batch_size], batch_size)  # warm-up
    started = time.perf_counter()
    cpu.start()
    for i in range(0, len(sample), batch_size):
        stacked = np.ascontiguousarray(sample[i : i + batch_size])
        reconstruction_errors(detector.model, stacked, config.scoring.batch_size)
    model_only = len(sample) / (time.perf_counter() - started)
    cpu_us["model_only"] = cpu.per_reading(len(sample))

    # end-to-end
    config = _config(base, bootstrap, topic, work / "e2e", registry)
    loop = build_loop(config, DeadLetterFile(work / "e2e" / "dead.jsonl"))
    source = KafkaSource(config.kafka, loop.on_assigned, loop.on_revoked)
    first_batch: list[tuple[float, int]] = []

    def stamp_first(_: object) -> None:
        if not first_batch and loop.stats.messages:
            first_batch.append((time.perf_counter(), loop.stats.messages))
            cpu.start()

    loop.before_batch = stamp_first
    loop.run(source, max_messages=total, idle_timeout_s=10)
    # from the end of the first polled batch to the final flush and commit (group join excluded)
    t_first, counted_from = first_batch[0]
    end_to_end = (loop.stats.messages - counted_from) / (time.perf_counter() - t_first)
    cpu_us["end_to_end"] = cpu.per_reading(loop.stats.messages - counted_from)

    # latency at a fixed rate: reading ts = produce time; row durable at ingest_time
    latency_topic = create_topic(bootstrap, "bench", partitions)
    config = _config(base, bootstrap, latency_topic, work / "latency", registry)
    loop = build_loop(config, DeadLetterFile(work / "latency" / "dead.jsonl"))
    source = KafkaSource(config.kafka, loop.on_assigned, loop.on_revoked)
    n_latency = int(latency_rate * latency_seconds)
    per_sensor = n_latency // sensors

    def produce_live() -> None:
        time.sleep(3.0)  # let the loop join its group
        t0 = time.perf_counter()
        for i in range(per_sensor):
            now = time.time()
            for s in range(sensors):
                values = dict(zip(channels, fleet[channels].iloc[(i * sensors + s) % len(fleet)].tolist(), strict=True))
                reading = {"sensor_id": f"sensor-{s:03d}", "ts": now + s * 1e-6, "values": values}
                producer.send(latency_topic, key=f"sensor-{s:03d}".encode(), value=encode_readings([reading]))
            ahead = (i + 1) * sensors / latency_rate - (time.perf_counter() - t0)
            if ahead > 0:
                time.sleep(ahead)
        producer.flush()

    feeder = threading.Thread(target=produce_live, daemon=True)
    feeder.start()
    loop.run(source, idle_timeout_s=5)
    feeder.join()
    producer.close()
    rows_written = pd.read_parquet(config.error_log_dir / "errors")
    latency_ms = (rows_written["ingest_time"] - rows_written["window_end"]).dt.total_seconds().to_numpy() * 1000
    return ThroughputResult(
        readings=total,
        end_to_end=end_to_end,
        consume_only=consume_only,
        model_only=model_only,
        latency_p50_ms=float(np.percentile(latency_ms, 50)),
        latency_p99_ms=float(np.percentile(latency_ms, 99)),
        latency_rate=latency_rate,
        partitions=partitions,
        batch_size=batch_size,
        cpu_us=cpu_us,
        cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
    )
