"""The latency phase's producer: readings at a fixed rate, each stamped with its send time, from a process
of its own (as a plant's producers are: not sharing the scorer's interpreter and its GIL).

Light imports only (no torch), so that the spawned process is sending within about a second.
"""

from __future__ import annotations

import time
from typing import Any

from pipeline.config import KafkaSettings
from pipeline.kafka_clients import make_producer
from pipeline.messages import encode_readings


def produce_live(
    kafka: KafkaSettings,
    topic: str,
    rows: list[list[float]],
    channels: list[str],
    sensors: int,
    per_sensor: int,
    rate: float,
    assigned: Any = None,
    settle_s: float = 1.0,
) -> None:
    """Send ``per_sensor`` readings for each of ``sensors`` at ``rate`` readings/s, from ``settle_s`` after
    ``assigned`` (an event the scorer sets once it owns its partitions) is set: readings sent while the
    group is still forming would wait for the join, which is not the latency being measured."""
    producer = make_producer(kafka)
    if assigned is not None and not assigned.wait(timeout=120):
        raise RuntimeError("the scorer was not assigned its partitions within 120 s")
    time.sleep(settle_s)
    started = time.perf_counter()
    for i in range(per_sensor):
        now = time.time()
        for s in range(sensors):
            values = dict(zip(channels, rows[(i * sensors + s) % len(rows)], strict=True))
            reading = {"sensor_id": f"sensor-{s:03d}", "ts": now + s * 1e-6, "values": values}
            producer.send(topic, key=f"sensor-{s:03d}".encode(), value=encode_readings([reading]))
        ahead = (i + 1) * sensors / rate - (time.perf_counter() - started)
        if ahead > 0:
            time.sleep(ahead)
    producer.flush()
    producer.close()
