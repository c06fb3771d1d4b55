"""Fault benchmark: hostile input and operational faults against the real broker, with exactly-once checked.

`driftline benchmark faults [--json]` starts a broker of its own (it restarts it mid-run), trains a small
model, and streams good readings of several sensors over 3 partitions, interleaved with hostile
messages (every kind that once stopped the consumer, plus random fuzz), produced by librdkafka
(confluent-kafka) in all four codecs. Meanwhile `driftline serve` runs as a supervised subprocess and
meets, on a timeline: kill -9 at random moments, a broker restart on the same storage, a full disk
(its error log on a small tmpfs filled to the last byte for a while), a malformed registry pointer,
then a valid new model version.

Reported: messages, dead letters by reason (unique source offsets found in the dead-letter topic),
bad messages missing from it, windows expected vs present, lost, duplicated, consumer deaths (exits
nobody asked for: input or faults killed it) and restarts (after the benchmark's own kill -9 too).
Target: 0 consumer deaths, 0 lost, 0 duplicated, every bad message in the dead-letter topic.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.dataset as ds
import tomli_w

from models.detector import AnomalyDetector
from models.registry import ModelRegistry
from models.training import TrainingConfig
from pipeline.config import KafkaSettings
from pipeline.kafka_clients import make_consumer
from pipeline.local_kafka import LocalKafkaBroker, fetch_kafka_jars, free_port
from pipeline.simulator import FleetSpec, simulate_fleet
from pipeline.sources import readings_from_frame

CODECS = ("gzip", "snappy", "lz4", "zstd")


@dataclass(frozen=True)
class FaultPlan:
    """What the benchmark streams and which faults it injects."""

    sensors: int = 12
    readings_per_sensor: int = 2_500
    bad_messages: int = 21_000
    partitions: int = 3
    rate: float = 500.0  # messages produced per second: the stream outlasts the faults
    kills: int = 5
    disk_full_s: float = 6.0
    window: int = 10
    seed: int = 0


@dataclass
class FaultReport:
    """What the run measured (see the module docstring)."""

    messages: int = 0
    good_messages: int = 0
    bad_messages: int = 0
    dead_letters: int = 0
    dead_letters_by_reason: dict[str, int] = field(default_factory=dict)
    missing_dead_letters: int = 0
    windows_expected: int = 0
    windows_present: int = 0
    lost_windows: int = 0
    duplicate_windows: int = 0
    consumer_deaths: int = 0
    death_reasons: list[str] = field(default_factory=list)
    restarts: int = 0
    kills: int = 0
    broker_restarts: int = 0
    disk_full: str = "not run"
    registry_pointer_refusals: int = 0
    write_failures_logged: int = 0
    hot_swapped_to: str | None = None
    final_exit_code: int | None = None
    missing_examples: list[str] = field(default_factory=list)
    served_versions: list[str] = field(default_factory=list)  # model versions found in the error log
    evidence: str | None = None  # where the error log and serve logs were kept when a target was missed
    seconds: float = 0.0

    def headline(self) -> dict[str, Any]:
        """The JSON line: the issue's keys first."""
        return {
            "messages": self.messages,
            "dead_letters": self.dead_letters,
            "lost_windows": self.lost_windows,
            "duplicate_windows": self.duplicate_windows,
            "consumer_deaths": self.consumer_deaths,
            "restarts": self.restarts,
            "bad_messages": self.bad_messages,
            "missing_dead_letters": self.missing_dead_letters,
            "windows_expected": self.windows_expected,
            "windows_present": self.windows_present,
            "kills": self.kills,
            "broker_restarts": self.broker_restarts,
            "disk_full": self.disk_full,
            "hot_swapped_to": self.hot_swapped_to,
            "write_failures_logged": self.write_failures_logged,
            "registry_pointer_refusals": self.registry_pointer_refusals,
            "dead_letters_by_reason": self.dead_letters_by_reason,
        }

    def table(self) -> str:
        rows = [
            ("messages produced (good / bad)", f"{self.messages:,} ({self.good_messages:,} / {self.bad_messages:,})"),
            ("dead letters (unique source offsets)", f"{self.dead_letters:,}"),
            ("bad messages missing from the dead-letter topic", f"{self.missing_dead_letters:,}"),
            ("windows expected / present", f"{self.windows_expected:,} / {self.windows_present:,}"),
            ("lost windows", f"{self.lost_windows:,}"),
            ("duplicate windows", f"{self.duplicate_windows:,}"),
            ("consumer deaths (not asked for)", f"{self.consumer_deaths}"),
            ("restarts (after kill -9 or death)", f"{self.restarts}"),
            ("kill -9", f"{self.kills}"),
            ("broker restarts (same storage)", f"{self.broker_restarts}"),
            ("full disk", self.disk_full),
            ("malformed registry pointer refusals logged", f"{self.registry_pointer_refusals}"),
            ("write failures logged and retried", f"{self.write_failures_logged}"),
            ("hot-swapped to", self.hot_swapped_to or "-"),
            ("final stop exit code", f"{self.final_exit_code}"),
            ("wall time", f"{self.seconds:.0f} s"),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"{name:<{width}}  {value}" for name, value in rows]
        lines.append(
            "dead letters by reason: " + ", ".join(f"{k} {v:,}" for k, v in sorted(self.dead_letters_by_reason.items()))
        )
        for reason in self.death_reasons:
            lines.append(f"death: {reason}")
        if self.missing_examples:
            lines.append("missing windows, e.g.: " + "; ".join(self.missing_examples))
        if self.evidence:
            lines.append(f"evidence kept in {self.evidence}")
        return "\n".join(lines)


# -- the stream ---------------------------------------------------------------------------------------------


def hostile_messages(
    rng: random.Random, good: list[bytes], count: int, channels: list[str]
) -> list[tuple[bytes | None, bytes]]:
    """``count`` (key, value) messages, each certain to be rejected whole: known poison kinds and fuzz."""
    values = json.dumps(dict.fromkeys(channels, 1.0))

    def poison(kind: int) -> tuple[bytes | None, bytes]:
        if kind == 0:
            return b"s", f'{{"sensor_id": "sensor-000", "ts": {"9" * 400}, "values": {values}}}'.encode()
        if kind == 1:
            return b"s", b'{"sensor_id": "sensor-000", "ts": 1767225600, "values": {"flow": ' + b"7" * 5000 + b"}}"
        if kind == 2:
            return None, b"[" * 100_000
        if kind == 3:
            return b"x", f'{{"sensor_id": "\\ud800", "ts": 1767225600, "values": {values}}}'.encode()
        if kind == 4:
            return b"f", f'{{"sensor_id": "sensor-001", "ts": "9999-12-31T23:59:59Z", "values": {values}}}'.encode()
        if kind == 5:
            return b"f", f'{{"sensor_id": "sensor-001", "ts": 1e15, "values": {values}}}'.encode()
        if kind == 6:
            return b"e", b'{"schema": 1, "readings": []}'
        if kind == 7:
            return b"../../etc/passwd", f'{{"ts": 1767225600, "values": {values}}}'.encode()
        if kind == 8:
            return None, b'{"sensor_id": "sensor-000", "ts": 1767225600, "values": {"flow": NaN}}'
        if kind == 9:
            return b"s", b'{"sensor_id": "sensor-000", "ts": "yesterday", "values": {}}'
        raw = rng.choice(good)
        if kind == 10:
            return b"t", raw[: rng.randrange(1, len(raw) - 1)]  # truncated JSON
        if kind == 11:
            return b"r", b"\xff" + rng.randbytes(rng.randrange(1, 200))  # never valid UTF-8
        if kind == 12:
            return b"w", b'{"sensor_id": "sensor-000", "ts": 1767225600, "values": "1.0"}'
        return None, None  # type: ignore[return-value]  # a tombstone

    messages = []
    for i in range(count):
        kind = i % 14
        if kind == 2 and i % 70 != 2:  # deep nesting is 100 kB: keep a few hundred of them
            kind = 10
        messages.append(poison(kind))
    messages.append((b"big", b"{" + b"x" * 900_000))  # a dead letter that must be truncated to fit
    return messages


def build_stream(
    plan: FaultPlan, fleet: pd.DataFrame, channels: list[str]
) -> list[tuple[str, bytes | None, bytes | None]]:
    """(kind, key, value) in production order: each sensor's readings in order, hostile ones between."""
    rng = random.Random(plan.seed)
    good = [
        (sensor, json.dumps({"schema": 1, **reading}, separators=(",", ":")).encode())
        for sensor, reading in readings_from_frame(fleet, channels)
    ]
    bad = hostile_messages(rng, [value for _, value in good[:500]], plan.bad_messages, channels)
    slots = sorted(rng.sample(range(len(good) + len(bad)), len(bad)))
    stream: list[tuple[str, bytes | None, bytes | None]] = []
    g = b = 0
    slot_set = set(slots)
    for position in range(len(good) + len(bad)):
        if position in slot_set:
            key, value = bad[b]
            b += 1
            stream.append(("bad", key, value))
        else:
            sensor, value = good[g]
            g += 1
            stream.append((sensor, sensor.encode(), value))
    return stream


class StreamProducer(threading.Thread):
    """Produces the stream with four librdkafka producers (one codec each), paced, recording every offset."""

    def __init__(self, bootstrap: str, topic: str, stream: list[tuple[str, bytes | None, bytes | None]], rate: float):
        super().__init__(name="fault-producer", daemon=True)
        from confluent_kafka import Producer

        self.topic, self.stream, self.rate = topic, stream, rate
        common = {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "linger.ms": 10,
            "message.max.bytes": 2_000_000,
            "message.timeout.ms": 600_000,
        }
        self.producers = [Producer({**common, "compression.type": codec}) for codec in CODECS]
        self.delivered: list[tuple[str, int, int]] = []  # (kind, partition, offset)
        self.errors: list[str] = []
        self.done = threading.Event()

    def _on_delivery(self, kind: str) -> Any:
        def record(error: Any, message: Any) -> None:
            if error is not None:
                self.errors.append(str(error))
            else:
                self.delivered.append((kind, message.partition(), message.offset()))

        return record

    def run(self) -> None:
        started = time.monotonic()
        sensor_producer: dict[str, int] = {}
        for i, (kind, key, value) in enumerate(self.stream):
            # a sensor's readings always go through the same producer: order per sensor is kept
            index = sensor_producer.setdefault(kind, len(sensor_producer) % len(CODECS)) if kind != "bad" else i % 4
            producer = self.producers[index]
            while True:
                try:
                    producer.produce(self.topic, key=key, value=value, on_delivery=self._on_delivery(kind))
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
            ahead = (i + 1) / self.rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        for producer in self.producers:
            producer.flush(600)
        self.done.set()


# -- the scorer under supervision -----------------------------------------------------------------------------


class Supervisor:
    """Runs `driftline serve` and restarts it whenever it ends; tells our kills from its own deaths."""

    def __init__(self, config_path: Path, logs: Path, port: int) -> None:
        self.config_path, self.logs, self.port = config_path, logs, port
        self.process: subprocess.Popen[bytes] | None = None
        self._log_handle: Any = None
        self.runs = 0
        self.deaths: list[str] = []
        self.restarts = 0
        self._expected_exit = False

    def log_path(self, run: int) -> Path:
        return self.logs / f"serve-{run:02d}.log"

    def start(self) -> None:
        self.runs += 1
        env = {**os.environ, "DRIFTLINE_CONFIG": str(self.config_path), "PYTHONUNBUFFERED": "1"}
        if self._log_handle is not None:
            self._log_handle.close()
        self._log_handle = self.log_path(self.runs).open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "serve"], env=env, stdout=self._log_handle, stderr=subprocess.STDOUT
        )
        self._expected_exit = False

    def ready(self) -> bool:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1).status == 200
        except (urllib.error.URLError, OSError):
            return False

    def check(self) -> None:
        """Restart the scorer if it ended; an end nobody asked for is a death."""
        assert self.process is not None
        code = self.process.poll()
        if code is None:
            return
        if not self._expected_exit:
            tail = self.log_path(self.runs).read_text(errors="replace").strip().splitlines()[-3:]
            self.deaths.append(f"run {self.runs} exited {code}: {' | '.join(tail)[-400:]}")
        self.restarts += 1
        self.start()

    def kill(self) -> None:
        assert self.process is not None
        if self.process.poll() is None:
            self._expected_exit = True
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout_s: float = 30) -> int | None:
        assert self.process is not None
        self._expected_exit = True
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return None

    def grep(self, text: str) -> int:
        return sum(self.log_path(run).read_text(errors="replace").count(text) for run in range(1, self.runs + 1))


# -- faults ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def small_disk(path: Path, size_mb: int = 48) -> Any:
    """A tmpfs of ``size_mb`` at ``path`` if this process may mount one (root), else a plain folder."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)], capture_output=True, check=False
    )
    try:
        yield mounted.returncode == 0
    finally:
        if mounted.returncode == 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill_disk(path: Path) -> Path:
    """Write a ballast file until the disk holding ``path`` is full; return it (delete it to free the disk)."""
    ballast = path / ".ballast"
    chunk = b"\0" * (1 << 20)
    with ballast.open("wb") as handle:
        try:
            while True:
                handle.write(chunk)
                handle.flush()
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise
    return ballast


def committed_everything(bootstrap: str, group: str, topic: str, partitions: int) -> bool:
    from kafka import TopicPartition

    consumer = make_consumer(KafkaSettings(bootstrap_servers=bootstrap), group_id=group)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = consumer.end_offsets(tps)
        return all((consumer.committed(tp) or 0) >= ends[tp] for tp in tps)
    except Exception:  # the broker may be restarting: not yet
        return False
    finally:
        consumer.close()


def read_dead_letters(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    consumer = make_consumer(
        KafkaSettings(bootstrap_servers=bootstrap),
        topic,
        group_id=None,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    letters = [json.loads(message.value) for message in consumer]
    consumer.close()
    return letters


# -- the run ----------------------------------------------------------------------------------------------------


def run_fault_benchmark(plan: FaultPlan, cache_dir: Path, progress: Any = print) -> FaultReport:
    """Run the whole fault scenario; ``progress`` gets one line per phase."""
    started = time.monotonic()
    report = FaultReport()
    rng = random.Random(plan.seed)
    work = Path(tempfile.mkdtemp(prefix="driftline-faults-"))
    broker = LocalKafkaBroker(fetch_kafka_jars(cache_dir), work / "broker", heap="768m")
    bootstrap = broker.start()
    progress(f"broker at {bootstrap}; work folder {work}")
    try:
        spec = FleetSpec(sensors=plan.sensors, rows=plan.readings_per_sensor, anomalies_per_sensor=1, seed=plan.seed)
        fleet = simulate_fleet(spec)
        channels = list(spec.channels)
        segments = [g[channels].to_numpy()[:600] for _, g in fleet.groupby("sensor_id")]
        detector = AnomalyDetector.fit(
            segments,
            window=plan.window,
            hidden_size=16,
            latent_size=4,
            channels=tuple(channels),
            training=TrainingConfig(epochs=3, batch_size=128, progress=False),
        )
        registry = ModelRegistry(work / "registry")
        registry.publish(detector, promote=True)

        from pipeline.producer import create_topic

        topic = create_topic(bootstrap, "faults", plan.partitions)
        stream = build_stream(plan, fleet, channels)
        with small_disk(work / "disk") as mounted:
            port = free_port()
            config = {
                "data_dir": str(work / "data"),
                "kafka": {
                    "bootstrap_servers": bootstrap,
                    "topics": [topic],
                    "group_id": f"g-{topic}",
                    "dead_letter_topic": f"{topic}-dlq",
                    "events_topic": f"{topic}-events",
                    "max_poll_records": 500,
                    "session_timeout_ms": 10_000,
                    "connect_timeout_s": 180.0,
                },
                "model": {"registry_dir": str(work / "registry"), "device": "cpu", "watch_interval_s": 0.5},
                "scoring": {
                    "allowed_sensors": sorted(fleet["sensor_id"].unique()),
                    "max_message_bytes": 1_000_000,
                    "stop_timeout_s": 15.0,
                },
                "sinks": {"error_log_dir": str(work / "disk" / "error_log"), "roll_rows": 2_000, "roll_seconds": 0.5},
                "metrics": {"port": port},
                "log_level": "INFO",
            }
            config_path = work / "driftline.toml"
            config_path.write_text(tomli_w.dumps(config))
            logs = work / "logs"
            logs.mkdir()
            supervisor = Supervisor(config_path, logs, port)
            supervisor.start()
            while not supervisor.ready():
                supervisor.check()
                time.sleep(0.2)
            producer = StreamProducer(bootstrap, topic, stream, plan.rate)
            produce_s = len(stream) / plan.rate
            progress(f"producing {len(stream):,} messages over ~{produce_s:.0f} s; serve supervised")
            producer.start()
            t0 = time.monotonic()
            # Each fault lands on a scorer that is up and consuming: wait for /readyz, let it work a moment.
            steps = ["kill", "broker restart", "kill", "disk full", "kill", "malformed pointer", "kill"]
            steps += ["new version", *(["kill"] * max(plan.kills - 4, 0))]
            for what in steps:
                while not supervisor.ready():
                    supervisor.check()
                    time.sleep(0.1)
                pause = time.monotonic() + rng.uniform(0.5, 3.0)
                while time.monotonic() < pause:
                    supervisor.check()
                    time.sleep(0.05)
                progress(f"{time.monotonic() - t0:6.1f} s  {what}")
                if what == "kill":
                    supervisor.kill()
                    report.kills += 1
                    supervisor.check()  # restart at once
                elif what == "broker restart":
                    broker.stop()
                    time.sleep(2.0)
                    broker.start(fresh=False)
                    report.broker_restarts += 1
                elif what == "disk full" and mounted:
                    ballast = fill_disk(work / "disk")
                    full_until = time.monotonic() + plan.disk_full_s
                    while time.monotonic() < full_until:
                        supervisor.check()
                        time.sleep(0.1)
                    ballast.unlink()
                    report.disk_full = f"{plan.disk_full_s:.0f} s (tmpfs filled to the last byte)"
                    progress(f"{time.monotonic() - t0:6.1f} s  disk freed")
                elif what == "disk full":
                    report.disk_full = "skipped: could not mount a tmpfs (needs root)"
                elif what == "malformed pointer":
                    (work / "registry" / "CURRENT.json").write_bytes(b"[]")
                    time.sleep(2.0)  # the running scorer refuses it; the next start meets it too
                elif what == "new version":
                    report.hot_swapped_to = registry.publish(detector, promote=True, reason="fault benchmark")
            if producer.is_alive():
                progress(f"{time.monotonic() - t0:6.1f} s  faults done; the stream is still being produced")
            else:
                progress("warning: the stream ended before the last fault; raise --rows or lower --rate")
            producer.join()
            progress(f"{time.monotonic() - t0:6.1f} s  all produced ({len(producer.errors)} delivery errors)")
            deadline = time.monotonic() + 300
            while not committed_everything(bootstrap, f"g-{topic}", topic, plan.partitions):
                supervisor.check()
                if time.monotonic() > deadline:
                    progress("gave up waiting for the scorer to commit everything")
                    break
                time.sleep(1.0)
            report.final_exit_code = supervisor.stop()
            report.consumer_deaths = len(supervisor.deaths)
            report.death_reasons = supervisor.deaths
            report.restarts = supervisor.restarts
            report.registry_pointer_refusals = supervisor.grep("CURRENT.json holds a list")
            report.write_failures_logged = supervisor.grep("write failed (")
            _score(
                report, producer, fleet, plan, work / "disk" / "error_log", read_dead_letters(bootstrap, f"{topic}-dlq")
            )
            if report.lost_windows or report.duplicate_windows or report.consumer_deaths:
                shutil.copytree(work / "disk" / "error_log", work / "error_log_kept")
                report.evidence = str(work)
            swapped = report.hot_swapped_to
            if swapped is not None and swapped not in report.served_versions:
                report.hot_swapped_to = f"{swapped} published but never served"
    finally:
        broker.stop()
        if report.evidence is None:
            shutil.rmtree(work, ignore_errors=True)
    report.seconds = time.monotonic() - started
    return report


def _score(
    report: FaultReport,
    producer: StreamProducer,
    fleet: pd.DataFrame,
    plan: FaultPlan,
    error_log: Path,
    letters: list[dict[str, Any]],
) -> None:
    delivered = producer.delivered
    report.messages = len(delivered)
    bad = {(p, o) for kind, p, o in delivered if kind == "bad"}
    report.bad_messages = len(bad)
    report.good_messages = report.messages - report.bad_messages
    by_offset = {(letter["source_partition"], letter["source_offset"]): letter["code"] for letter in letters}
    report.dead_letters = len(set(by_offset) & bad)
    report.missing_dead_letters = len(bad - set(by_offset))
    report.dead_letters_by_reason = dict(Counter(code for key, code in by_offset.items() if key in bad))
    good_sensors = Counter(kind for kind, _, _ in delivered if kind != "bad")
    expected: set[tuple[str, int]] = set()
    for sensor, group in fleet.groupby("sensor_id"):
        since_epoch = group["timestamp"].sort_values() - pd.Timestamp(0, tz="UTC")
        stamps = (since_epoch // pd.Timedelta(milliseconds=1)).to_numpy()[: good_sensors[str(sensor)]]
        expected |= {(str(sensor), int(ms)) for ms in stamps[plan.window - 1 :]}
    table = ds.dataset(error_log / "errors", format="parquet", partitioning="hive").to_table(
        columns=["sensor_id", "window_end", "model_version"]
    )
    report.served_versions = sorted(set(table["model_version"].to_pylist()))
    ends = table["window_end"].cast("int64").to_numpy()
    keys = list(zip(table["sensor_id"].to_pylist(), (int(ms) for ms in ends), strict=True))
    present = set(keys)
    report.windows_expected = len(expected)
    report.windows_present = len(keys)
    missing = sorted(expected - present)
    report.lost_windows = len(missing)
    report.duplicate_windows = len(keys) - len(present)
    report.missing_examples = [f"{sensor} @ {pd.Timestamp(ms, unit='ms', tz='UTC')}" for sensor, ms in missing[:5]]
