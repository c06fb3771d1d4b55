"""Publishes readings (simulated or replayed from a file) to a Kafka topic, keyed by sensor, at a rate.

>>> import pandas as pd
>>> frame = pd.DataFrame({"sensor_id": ["a", "a", "b"], "timestamp": pd.to_datetime([0, 1, 0], unit="s", utc=True),
...                       "flow": [1.0, 2.0, 3.0]})
>>> [(key, len(message)) for key, message in batch_messages(frame, ["flow"], readings_per_message=2)]
[(b'a', 2), (b'b', 1)]
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from pipeline.messages import encode_readings
from pipeline.sources import readings_from_frame


def create_topic(bootstrap: str, prefix: str, partitions: int, replication_factor: int = 1) -> str:
    """Create a new topic named ``<prefix>-<8 random hex>`` and return its name (tests, benchmarks, demos)."""
    from kafka.admin import KafkaAdminClient, NewTopic

    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=replication_factor)])
    finally:
        admin.close()
    return name


def batch_messages(
    frame: pd.DataFrame, channels: Sequence[str], readings_per_message: int = 1
) -> Iterator[tuple[bytes, list[dict[str, Any]]]]:
    """(key, readings) groups in stream order; consecutive readings of one sensor share a message."""
    pending: dict[str, list[dict[str, Any]]] = {}
    for sensor, reading in readings_from_frame(frame, channels):
        group = pending.setdefault(sensor, [])
        group.append(reading)
        if len(group) >= readings_per_message:
            yield sensor.encode(), pending.pop(sensor)
    for sensor, group in pending.items():
        yield sensor.encode(), group


def produce(
    producer: Any,
    topic: str,
    frame: pd.DataFrame,
    channels: Sequence[str],
    *,
    rate: float | None = None,
    readings_per_message: int = 1,
    progress: bool = True,
) -> int:
    """Send every reading of ``frame``; ``rate`` readings/s (None = as fast as possible). Returns readings sent."""
    sent = 0
    started = time.perf_counter()
    with tqdm(total=len(frame), desc=f"producing to {topic}", unit="reading", disable=not progress) as bar:
        for key, readings in batch_messages(frame, channels, readings_per_message):
            producer.send(topic, key=key, value=encode_readings(readings))
            sent += len(readings)
            bar.update(len(readings))
            if rate:
                ahead = sent / rate - (time.perf_counter() - started)
                if ahead > 0:
                    time.sleep(ahead)
    producer.flush()
    return sent
