"""Proof that the broker behind the fixture is real: consumer-group commits survive a consumer restart."""

from __future__ import annotations

import uuid
from collections import defaultdict

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.structs import OffsetAndMetadata

pytestmark = pytest.mark.kafka

MESSAGES = 10_000
PARTITIONS = 3
SENSORS = 37


def _consumer(bootstrap: str, group: str, topic: str) -> KafkaConsumer:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=250,
    )
    consumer.subscribe([topic])
    return consumer


def _commit(consumer: KafkaConsumer, batch: dict[TopicPartition, list]) -> None:
    if not batch:
        return
    consumer.commit({tp: OffsetAndMetadata(records[-1].offset + 1, "", -1) for tp, records in batch.items()})


def test_commits_survive_consumer_restart(kafka_broker) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = f"proof-{uuid.uuid4().hex[:8]}"
    group = f"proof-group-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])
    admin.close()

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    for seq in range(MESSAGES):
        producer.send(topic, key=f"sensor-{seq % SENSORS}".encode(), value=str(seq).encode())
    producer.flush()
    producer.close()

    # First consumer: commit after each processed batch until half is done, then process two more
    # batches *without* committing (a crash between processing and commit) and go away.
    first = _consumer(bootstrap, group, topic)
    seen_first: set[int] = set()
    while len(seen_first) < MESSAGES // 2:
        batch = first.poll(timeout_ms=1000)
        seen_first.update(int(record.value) for records in batch.values() for record in records)
        _commit(first, batch)
    uncommitted: set[int] = set()
    for _ in range(2):
        batch = first.poll(timeout_ms=1000)
        uncommitted.update(int(record.value) for records in batch.values() for record in records)
    assignment = first.assignment()
    assert len(assignment) == PARTITIONS
    committed_at_stop = {tp: first.committed(tp) or 0 for tp in assignment}
    first.close(autocommit=False)

    # Second consumer in the same group picks up exactly at the committed offsets.
    second = _consumer(bootstrap, group, topic)
    seen_second: set[int] = set()
    first_offset: dict[TopicPartition, int] = {}
    offsets_by_partition: dict[TopicPartition, list[int]] = defaultdict(list)
    idle_polls = 0
    while idle_polls < 5:
        batch = second.poll(timeout_ms=1000)
        idle_polls = 0 if batch else idle_polls + 1
        for tp, records in batch.items():
            first_offset.setdefault(tp, records[0].offset)
            offsets_by_partition[tp].extend(record.offset for record in records)
            seen_second.update(int(record.value) for record in records)
        _commit(second, batch)
    second.close(autocommit=False)

    assert seen_first | uncommitted | seen_second == set(range(MESSAGES)), "a message was never delivered"
    assert uncommitted <= seen_second, "processed-but-uncommitted messages must be delivered again"
    for tp, offsets in offsets_by_partition.items():
        assert min(offsets) >= committed_at_stop[tp], f"{tp}: a message before the committed offset came back"
        assert first_offset[tp] == committed_at_stop[tp], f"{tp}: restart did not resume at the commit"
    assert seen_first.isdisjoint(seen_second), "a committed message was delivered again"
