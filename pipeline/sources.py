"""Where raw messages come from: a Kafka consumer group, or a file (the embedded default).

Both give the scoring loop the same thing: batches of :class:`Record` (topic, partition, offset, key,
value), a way to commit "everything before offset N of this partition is durable", and, for Kafka,
assignment/revocation callbacks so the loop can rebuild windows and flush on rebalances.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import pandas as pd
from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.structs import OffsetAndMetadata

from pipeline.config import KafkaSettings
from pipeline.kafka_clients import make_consumer
from pipeline.messages import MessageValue
from pipeline.time_spans import epoch_seconds

log = logging.getLogger(__name__)

TopicPartitionKey = tuple[str, int]


class Record(NamedTuple):
    """One message as the loop sees it. kafka-python's ``ConsumerRecord`` has the same fields by name and
    is handed over as it is (no copy per message)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: MessageValue  # bytes; a file source hands over the reading itself


@dataclass(frozen=True)
class Assignment:
    """A partition handed to this consumer: where its committed offset is, and what the commit noted."""

    topic: str
    partition: int
    committed: int  # next offset to process (0 if nothing was ever committed)
    metadata: dict[str, Any]


class Source(Protocol):
    """Where the scoring loop's messages come from: a Kafka consumer group (:class:`KafkaSource`), a
    file (:class:`FileSource`) or memory (:class:`PacedSource`). The loop polls, commits, seeks (to a
    rewind point on assignment) and reads the lag, all on its consumer thread.

    >>> source: Source = PacedSource([Record("t", 0, 0, b"s1", b"{}")], rate=1e6)
    >>> [record.offset for record in source.poll(0.1, 10)], source.lag()
    ([0], {('t', 0): 0})
    """

    def poll(self, timeout_s: float, max_records: int) -> list[Record]: ...

    def commit(self, offsets: dict[TopicPartitionKey, tuple[int, dict[str, Any]]]) -> None: ...

    def seek(self, topic: str, partition: int, offset: int) -> None: ...

    def lag(self) -> dict[TopicPartitionKey, int]: ...

    def close(self) -> None: ...


OnAssigned = Callable[[list[Assignment]], None]
OnRevoked = Callable[[list[TopicPartitionKey]], None]


class _Listener(ConsumerRebalanceListener):
    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        if revoked and self.source.on_revoked is not None:
            self.source.on_revoked([(tp.topic, tp.partition) for tp in revoked])

    def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        if not assigned or self.source.on_assigned is None:
            return
        assignments = []
        for tp in assigned:
            committed = self.source.consumer.committed(tp, metadata=True)
            offset, metadata = 0, dict[str, Any]()
            if committed is not None and committed.offset is not None and committed.offset >= 0:
                offset = committed.offset
                try:
                    metadata = json.loads(committed.metadata) if committed.metadata else {}
                except json.JSONDecodeError:
                    log.warning(
                        "%s-%d: commit metadata %r is not JSON; ignoring it",
                        tp.topic,
                        tp.partition,
                        committed.metadata,
                    )
            assignments.append(Assignment(tp.topic, tp.partition, offset, metadata))
        self.source.on_assigned(assignments)


class KafkaSource:
    """A kafka-python consumer in a group, auto-commit off. Only the loop's thread may touch it."""

    def __init__(
        self,
        settings: KafkaSettings,
        on_assigned: OnAssigned | None = None,
        on_revoked: OnRevoked | None = None,
    ) -> None:
        self.on_assigned = on_assigned
        self.on_revoked = on_revoked
        self.consumer = make_consumer(
            settings,
            group_id=settings.group_id,
            auto_offset_reset="earliest",
            max_poll_records=settings.max_poll_records,
            session_timeout_ms=settings.session_timeout_ms,
            fetch_max_wait_ms=100,
        )
        self.consumer.subscribe(settings.topics, listener=_Listener(self))

    def poll(self, timeout_s: float, max_records: int) -> list[Record]:
        batch = self.consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        return [record for records in batch.values() for record in records]  # ConsumerRecord: a Record by its fields

    def commit(self, offsets: dict[TopicPartitionKey, tuple[int, dict[str, Any]]]) -> None:
        if offsets:
            self.consumer.commit(
                {
                    TopicPartition(topic, partition): OffsetAndMetadata(offset, json.dumps(meta), -1)
                    for (topic, partition), (offset, meta) in offsets.items()
                }
            )

    def seek(self, topic: str, partition: int, offset: int) -> None:
        self.consumer.seek(TopicPartition(topic, partition), offset)

    def lag(self) -> dict[TopicPartitionKey, int]:
        assigned = list(self.consumer.assignment())
        if not assigned:
            return {}
        ends = self.consumer.end_offsets(assigned)
        return {(tp.topic, tp.partition): max(0, ends[tp] - self.consumer.position(tp)) for tp in assigned}

    def close(self) -> None:
        self.consumer.close(autocommit=False)


def readings_from_frame(frame: pd.DataFrame, channels: Sequence[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(sensor_id, reading dict) for every row of a table with sensor_id, timestamp and channel columns."""
    if "sensor_id" not in frame.columns:
        frame = frame.assign(sensor_id="sensor-000")
    time_column = "timestamp" if "timestamp" in frame.columns else None
    stamps = pd.to_datetime(frame[time_column] if time_column else frame.index.to_series(), utc=True)
    times = epoch_seconds(stamps).to_numpy(dtype=np.float64)
    values = frame[list(channels)].to_numpy(dtype=float)
    for sensor, ts, row in zip(frame["sensor_id"].astype(str), times, values, strict=True):
        yield (
            sensor,
            {"sensor_id": sensor, "ts": float(ts), "values": dict(zip(channels, row.tolist(), strict=True))},
        )


class FileSource:
    """Replays a CSV/Parquet table as if it were one Kafka partition; commits are remembered in memory.

    Each row is handed over as its reading (a dict), not as JSON: the loop checks it exactly as it
    checks a message, without encoding and parsing it again (a rejected row's dead letter holds the
    message the row would have been).
    """

    def __init__(self, path: Path, channels: Sequence[str], topic: str = "file") -> None:
        from models.data_io import read_readings

        frame = read_readings(path)
        if not isinstance(frame.index, pd.RangeIndex) and "timestamp" not in frame.columns:
            frame = frame.reset_index(names="timestamp")
        self.topic = f"file:{Path(path).name}" if topic == "file" else topic
        self._records = [
            Record(self.topic, 0, offset, sensor.encode(), reading)
            for offset, (sensor, reading) in enumerate(readings_from_frame(frame, channels))
        ]
        self._position = 0
        self.committed: dict[TopicPartitionKey, int] = {}

    def __len__(self) -> int:
        return len(self._records)

    def poll(self, timeout_s: float, max_records: int) -> list[Record]:
        batch = self._records[self._position : self._position + max_records]
        self._position += len(batch)
        return batch

    def commit(self, offsets: dict[TopicPartitionKey, tuple[int, dict[str, Any]]]) -> None:
        self.committed.update({tp: offset for tp, (offset, _) in offsets.items()})

    def seek(self, topic: str, partition: int, offset: int) -> None:
        self._position = offset

    def lag(self) -> dict[TopicPartitionKey, int]:
        return {(self.topic, 0): len(self._records) - self._position}

    def close(self) -> None:
        pass


class PacedSource:
    """In-memory records released at ``rate`` records per second of wall time (one partition).

    Stands in for a live topic in the demo and the drift benchmark: the stream arrives at a known pace
    while retraining and hot-swaps happen beside it. :meth:`set_rate` changes the pace from then on.

    >>> source = PacedSource([Record("t", 0, i, None, b"") for i in range(3)], rate=1000.0)
    >>> len(source.poll(0.1, 10))  # the first record at once
    1
    >>> time.sleep(0.01); len(source.poll(0.1, 10))  # then 1,000 a second
    2
    """

    def __init__(self, records: list[Record], rate: float) -> None:
        self.records = records
        self.rate = rate
        self.position = 0
        self._released = 0.0  # records the pace has allowed so far, as of `_clock`
        self._clock: float | None = None

    def set_rate(self, rate: float) -> None:
        """Release records at ``rate`` per second from now on (what was allowed stays allowed)."""
        self._advance(time.perf_counter())
        self.rate = rate

    def _advance(self, now: float) -> None:
        if self._clock is not None:
            self._released += (now - self._clock) * self.rate
        self._clock = now

    def poll(self, timeout_s: float, max_records: int) -> list[Record]:
        self._advance(time.perf_counter())
        allowed = min(len(self.records), int(self._released) + 1)
        if allowed <= self.position:
            time.sleep(min(timeout_s, 0.01))
            return []
        batch = self.records[self.position : min(allowed, self.position + max_records)]
        self.position += len(batch)
        return batch

    def commit(self, offsets: dict[TopicPartitionKey, tuple[int, dict[str, Any]]]) -> None:
        pass

    def seek(self, topic: str, partition: int, offset: int) -> None:
        self.position = offset

    def lag(self) -> dict[TopicPartitionKey, int]:
        topic = self.records[0].topic if self.records else "stream"  # its records share one partition
        return {(topic, 0): len(self.records) - self.position}

    def close(self) -> None:
        pass
