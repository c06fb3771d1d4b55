"""Prometheus metrics of the scoring loop, on a registry of their own (no global state).

>>> metrics = ScoringMetrics()
>>> metrics.windows_scored.inc(3)
>>> b"driftline_windows_scored_total 3.0" in metrics.exposition()
True
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class ScoringMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.readings_in = Counter("driftline_readings_in", "Readings decoded from the input", registry=r)
        self.messages_in = Counter("driftline_messages_in", "Messages polled from the input", registry=r)
        self.dead_letters = Counter(
            "driftline_dead_letters",
            "Messages or readings rejected to the dead-letter sink, by reason code (pipeline.messages.REJECTION_CODES)",
            ["reason"],
            registry=r,
        )
        self.evicted_sensors = Counter(
            "driftline_evicted_sensors", "Sensors forgotten after windows.idle_ttl_s of event time", registry=r
        )
        self.windows_scored = Counter("driftline_windows_scored", "Windows scored and written", registry=r)
        self.anomalies = Counter(
            "driftline_anomalies", "Windows flagged anomalous (after the alarm filter)", registry=r
        )
        self.drift_events = Counter("driftline_drift_events", "Drift detections", ["scope"], registry=r)
        self.late_readings = Counter("driftline_late_readings", "Readings dropped as late or duplicate", registry=r)
        self.write_failures = Counter(
            "driftline_write_failures",
            "Durable writes that failed and were retried (disk full, I/O or broker errors), by sink",
            ["sink"],
            registry=r,
        )
        self.gap_restarts = Counter(
            "driftline_gap_restarts",
            "Windows restarted because a sensor's gap exceeded windows.max_fill_s",
            registry=r,
        )
        self.commits = Counter("driftline_commits", "Offset commits after durable writes", registry=r)
        self.open_alarms = Gauge("driftline_open_alarms", "Alarm episodes open now", registry=r)
        self.alarm_events = Counter(
            "driftline_alarm_events", "Alarm events sent (open / update / close)", ["event"], registry=r
        )
        self.stage_cpu = Counter(
            "driftline_stage_cpu_seconds",
            "Thread CPU seconds spent in each stage of the scoring loop (see pipeline.stage_clock.STAGES)",
            ["stage"],
            registry=r,
        )
        self.batch_latency = Histogram(
            "driftline_batch_latency_seconds",
            "Time to decode, window, score and buffer one polled batch",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.flush_latency = Histogram(
            "driftline_flush_latency_seconds", "Time to make sinks durable and commit", registry=r
        )
        self.consumer_lag = Gauge(
            "driftline_consumer_lag",
            "Messages behind the end of each partition",
            ["topic", "partition"],
            registry=r,
        )
        self.swap_pause = Gauge(
            "driftline_swap_pause_seconds",
            "Gap between the last batch on the old model and the first on the new one, at the latest swap",
            registry=r,
        )
        self.models_refused = Counter(
            "driftline_models_refused",
            "New model versions or registry pointers refused by the hot-swap watcher, by reason code",
            ["reason"],
            registry=r,
        )
        self.model_version = Gauge(
            "driftline_model_version", "1 for the model version now serving", ["version"], registry=r
        )

    def set_model_version(self, version: str) -> None:
        self.model_version.clear()
        self.model_version.labels(version=version).set(1)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
