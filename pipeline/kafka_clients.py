"""The one place driftline's Kafka clients get their settings (kafka-python producers and consumers).

Every client takes the connection options of :meth:`pipeline.config.KafkaSettings.client_options`
(brokers, client id, TLS/SASL) and the rules below, so a fix to one applies to all:

- **producers** wait for every in-sync replica (``acks="all"``: a dead letter, an alarm or an event
  counts as written only once the brokers hold it) and batch for up to 20 ms;
- **consumers** never auto-commit unless asked (the loop commits only what is durable) and keep a fetch
  below kafka-python's frame limit: kafka-python 2.x refuses network frames above
  ``receive_message_max_bytes`` (1 MB by default) while ``fetch_max_bytes`` defaults to 50 MB.

The option builders are pure, so the rules are testable without a broker:

>>> from pipeline.config import KafkaSettings
>>> settings = KafkaSettings(bootstrap_servers="a:9092,b:9092")
>>> options = consumer_options(settings, group_id="g", max_poll_records=500)
>>> options["bootstrap_servers"], options["enable_auto_commit"], options["max_poll_records"]
(['a:9092', 'b:9092'], False, 500)
>>> options["fetch_max_bytes"] < options["receive_message_max_bytes"]
True
>>> producer_options(settings)["acks"]
'all'
"""

from __future__ import annotations

from typing import Any

from pipeline.config import KafkaSettings

FETCH_MAX_BYTES = 8 * 1024 * 1024
RECEIVE_MESSAGE_MAX_BYTES = 16 * 1024 * 1024
PRODUCER_LINGER_MS = 20


def producer_options(settings: KafkaSettings, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments of a ``KafkaProducer``: the connection, ``acks="all"``, a 20 ms linger."""
    return {**settings.client_options(), "acks": "all", "linger_ms": PRODUCER_LINGER_MS, **overrides}


def consumer_options(settings: KafkaSettings, *, group_id: str | None, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments of a ``KafkaConsumer`` in ``group_id`` (None: outside any group), auto-commit off."""
    return {
        **settings.client_options(),
        "group_id": group_id,
        "enable_auto_commit": False,
        "fetch_max_bytes": FETCH_MAX_BYTES,
        "receive_message_max_bytes": RECEIVE_MESSAGE_MAX_BYTES,
        **overrides,
    }


def make_producer(settings: KafkaSettings, **overrides: Any) -> Any:
    """A ``KafkaProducer`` with :func:`producer_options` (connects to the brokers)."""
    from kafka import KafkaProducer  # imported here: the config and --help stay fast

    return KafkaProducer(**producer_options(settings, **overrides))


def make_consumer(settings: KafkaSettings, *topics: str, group_id: str | None, **overrides: Any) -> Any:
    """A ``KafkaConsumer`` of ``topics`` (none: assign partitions later) with :func:`consumer_options`."""
    from kafka import KafkaConsumer

    return KafkaConsumer(*topics, **consumer_options(settings, group_id=group_id, **overrides))
