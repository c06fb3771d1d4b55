"""The input contract: sensor readings as JSON messages (schema version 1), decoded or rejected.

One reading per message::

    {"schema": 1, "sensor_id": "pump-7", "ts": "2026-01-01T00:00:00Z", "values": {"flow": 1.2, ...}}

or many readings per message (the batched form)::

    {"schema": 1, "readings": [{"sensor_id": "pump-7", "ts": 1767225600.0, "values": {...}}, ...]}

``ts`` is an ISO-8601 string or seconds since the epoch (UTC). ``sensor_id`` may be left out when the
message key carries it. Every channel the model knows must be present, as a finite number; other
channels are ignored. A reading that breaks the contract becomes a :class:`Rejection` with a reason
(the consumer dead-letters it with the raw bytes); the rest of a batched message is still accepted.

>>> decoded = decode_message(b'{"schema":1,"sensor_id":"p1","ts":0,"values":{"a":1,"b":2}}', None, ("a", "b"))
>>> decoded.readings[0].sensor_id, decoded.readings[0].values.tolist(), decoded.rejections
('p1', [1.0, 2.0], [])
>>> decode_message(b'{"schema":1,"ts":0,"values":{"a":"x"}}', b"p2", ("a",)).rejections[0].reason
"reading 0: channel 'a' is not a number ('x')"
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import orjson

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Reading:
    """One decoded reading: who, when (epoch seconds), channel values in the model's channel order."""

    sensor_id: str
    ts: float
    values: np.ndarray  # [channels] float64, finite


@dataclass(frozen=True)
class Rejection:
    """Why (part of) a message was refused; the consumer adds topic/partition/offset and raw bytes."""

    reason: str
    sensor_id: str | None = None


@dataclass(frozen=True)
class Decoded:
    readings: list[Reading]
    rejections: list[Rejection]


def encode_readings(readings: Sequence[dict[str, object]]) -> bytes:
    """Encode readings (dicts with sensor_id, ts, values) as one schema-1 message, batched if several."""
    if len(readings) == 1:
        return json.dumps({"schema": SCHEMA_VERSION, **readings[0]}, separators=(",", ":")).encode()
    return json.dumps({"schema": SCHEMA_VERSION, "readings": list(readings)}, separators=(",", ":")).encode()


def _parse_ts(raw: object) -> float:
    if isinstance(raw, bool):
        raise ValueError(f"timestamp must be ISO-8601 or epoch seconds, got {raw!r}")
    if isinstance(raw, (int, float)):
        if not math.isfinite(raw):
            raise ValueError(f"timestamp is not finite ({raw!r})")
        return float(raw)
    if isinstance(raw, str):
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            raise ValueError(f"timestamp {raw!r} has no time zone; add Z or an offset")
        return parsed.timestamp()
    raise ValueError(f"timestamp must be ISO-8601 or epoch seconds, got {type(raw).__name__}")


def _decode_one(
    item: object,
    index: int,
    key_sensor: str | None,
    channels: Sequence[str],
    allowed_sensors: Collection[str] | None,
) -> Reading | Rejection:
    where = f"reading {index}"
    if not isinstance(item, dict):
        return Rejection(f"{where}: expected an object, got {type(item).__name__}")
    sensor = item.get("sensor_id", key_sensor)
    if not isinstance(sensor, str) or not sensor:
        return Rejection(f"{where}: missing sensor_id (in the reading or as the message key)")
    if allowed_sensors is not None and sensor not in allowed_sensors:
        return Rejection(f"{where}: unknown sensor {sensor!r} (not in the configured whitelist)", sensor)
    if "ts" not in item:
        return Rejection(f"{where}: missing ts", sensor)
    try:
        ts = _parse_ts(item["ts"])
    except ValueError as error:
        return Rejection(f"{where}: {error}", sensor)
    values = item.get("values")
    if not isinstance(values, dict):
        return Rejection(f"{where}: values must be an object of channel -> number", sensor)
    try:  # fast path: every channel present as a finite int/float (bool is not a number here)
        picked = [values[channel] for channel in channels]
        if all(type(value) is float or type(value) is int for value in picked) and math.isfinite(sum(picked)):
            return Reading(sensor, ts, np.array(picked, dtype=np.float64))
    except (KeyError, OverflowError):
        pass
    return _first_bad_channel(where, sensor, ts, values, channels)


def _first_bad_channel(
    where: str, sensor: str, ts: float, values: dict[str, object], channels: Sequence[str]
) -> Reading | Rejection:
    """The slow path of :func:`_decode_one`: find and name the first channel that breaks the contract."""
    row = np.empty(len(channels), dtype=np.float64)
    for i, channel in enumerate(channels):
        if channel not in values:
            return Rejection(f"{where}: channel {channel!r} missing", sensor)
        value = values[channel]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return Rejection(f"{where}: channel {channel!r} is not a number ({value!r})", sensor)
        try:
            number = float(value)
        except OverflowError:
            return Rejection(f"{where}: channel {channel!r} is out of the float range", sensor)
        if not math.isfinite(number):
            return Rejection(f"{where}: channel {channel!r} is {value} (NaN/inf not allowed)", sensor)
        row[i] = number
    return Reading(sensor, ts, row)


def decode_message(
    raw: bytes | None,
    key: bytes | None,
    channels: Sequence[str],
    *,
    max_bytes: int = 1_000_000,
    allowed_sensors: Collection[str] | None = None,
) -> Decoded:
    """Decode one Kafka message into readings; never raises on bad input."""
    if raw is None:
        return Decoded([], [Rejection("empty message (tombstone)")])
    if len(raw) > max_bytes:
        return Decoded([], [Rejection(f"message of {len(raw):,} bytes is over the {max_bytes:,}-byte limit")])
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:  # slower, but reads NaN/Infinity tokens (rejected below by name) and explains what is wrong
            payload = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            return Decoded([], [Rejection(f"not valid JSON: {error}")])
    if not isinstance(payload, dict):
        return Decoded([], [Rejection(f"expected a JSON object, got {type(payload).__name__}")])
    if payload.get("schema", SCHEMA_VERSION) != SCHEMA_VERSION:
        return Decoded([], [Rejection(f"unsupported schema {payload.get('schema')!r}; this consumer reads 1")])
    try:
        key_sensor = key.decode() if key else None
    except UnicodeDecodeError:
        key_sensor = None
    items = payload.get("readings", [payload])
    if not isinstance(items, list):
        return Decoded([], [Rejection("'readings' must be a list")])
    readings, rejections = [], []
    for index, item in enumerate(items):
        outcome = _decode_one(item, index, key_sensor, channels, allowed_sensors)
        (readings if isinstance(outcome, Reading) else rejections).append(outcome)
    return Decoded(readings, rejections)
