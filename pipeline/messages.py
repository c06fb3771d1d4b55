"""The input contract: sensor readings as JSON messages (schema version 1), decoded or rejected.

One reading per message::

    {"schema": 1, "sensor_id": "pump-7", "ts": "2026-01-01T00:00:00Z", "values": {"flow": 1.2, ...}}

or many readings per message (the batched form)::

    {"schema": 1, "readings": [{"sensor_id": "pump-7", "ts": 1767225600.0, "values": {...}}, ...]}

``ts`` is an ISO-8601 string or seconds since the epoch (UTC). ``sensor_id`` may be left out when the
message key carries it; it must encode as UTF-8, be at most :data:`MAX_SENSOR_ID_LENGTH` characters and
hold no control characters. Every channel the model knows must be present, as a finite number; other
channels are ignored. A reading that breaks the contract becomes a :class:`Rejection` with a ``code``
from the closed set :data:`REJECTION_CODES` (safe as a metric label) and a ``reason`` that explains it
(it goes into the dead letter with the raw bytes); the rest of a batched message is still accepted.
:func:`decode_message` never raises, whatever the bytes.

Structural checks come first, plausibility last: a reading whose timestamp lies outside ``ts_range``
(too old, or further in the future than the consumer allows) is rejected as ``ts_out_of_range``.

>>> decoded = decode_message(b'{"schema":1,"sensor_id":"p1","ts":0,"values":{"a":1,"b":2}}', None, ("a", "b"))
>>> decoded.readings[0].sensor_id, decoded.readings[0].values.tolist(), decoded.rejections
('p1', [1.0, 2.0], [])
>>> rejection = decode_message(b'{"schema":1,"ts":0,"values":{"a":"x"}}', b"p2", ("a",)).rejections[0]
>>> rejection.code, rejection.reason
('bad_value', "reading 0: channel 'a' is not a number ('x')")
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import numpy as np
import orjson

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MAX_SENSOR_ID_LENGTH = 128
# Timestamps any store downstream can hold (Parquet ms, DuckDB, pandas): 1970-01-01 .. 9999-12-31.
REPRESENTABLE_TS = (0.0, 253_402_300_799.0)

#: Every rejection code, with what it means. Codes are metric labels; details go into the dead letter.
REJECTION_CODES: dict[str, str] = {
    "tombstone": "the message has no value (a Kafka tombstone)",
    "too_large": "the message is over scoring.max_message_bytes",
    "invalid_json": "the bytes are not JSON (or not UTF-8, too deeply nested, or hold absurd numbers)",
    "not_an_object": "the message, or a reading of a batch, is not a JSON object",
    "unsupported_schema": "'schema' is not 1",
    "bad_readings": "'readings' is not a non-empty list",
    "missing_sensor_id": "no sensor_id in the reading and no message key",
    "bad_sensor_id": "sensor_id is not UTF-8, too long, or holds control characters",
    "unknown_sensor": "sensor_id is not in scoring.allowed_sensors",
    "missing_ts": "the reading has no ts",
    "bad_ts": "ts is not ISO-8601 with a zone nor a number of epoch seconds",
    "ts_out_of_range": "ts is before scoring.min_ts or further than scoring.max_future_skew_s ahead of the clock",
    "bad_values": "values is not an object of channel -> number",
    "missing_channel": "a channel the model needs is missing",
    "bad_value": "a channel value is not a finite number",
    "undecodable": "the decoder met something it did not foresee (a bug: please report it)",
}


@dataclass(frozen=True)
class Reading:
    """One decoded reading: who, when (epoch seconds), channel values in the model's channel order."""

    sensor_id: str
    ts: float
    values: np.ndarray  # [channels] float64, finite


@dataclass(frozen=True)
class Rejection:
    """Why (part of) a message was refused; the consumer adds topic/partition/offset and raw bytes.

    ``code`` is one of :data:`REJECTION_CODES`; ``reason`` is the human-readable detail.
    """

    code: str
    reason: str
    sensor_id: str | None = None


@dataclass(frozen=True)
class Decoded:
    """What one message gave: the readings accepted and a rejection for everything else."""

    readings: list[Reading]
    rejections: list[Rejection]


#: A message's value as the loop sees it: the bytes from Kafka, or (from a file source) the one reading
#: it holds, already a dict, so the file's rows are not turned into JSON only to be parsed again.
MessageValue = bytes | dict[str, Any] | None


def message_bytes(value: MessageValue) -> bytes | None:
    """The bytes of a message's value (a reading dict is encoded as its schema-1 message).

    >>> message_bytes({"sensor_id": "s1", "ts": 1.0, "values": {"a": 2.0}})
    b'{"schema":1,"sensor_id":"s1","ts":1.0,"values":{"a":2.0}}'
    """
    return encode_readings([value]) if isinstance(value, dict) else value


def encode_readings(readings: Sequence[dict[str, object]]) -> bytes:
    """Encode readings (dicts with sensor_id, ts, values) as one schema-1 message, batched if several."""
    if len(readings) == 1:
        return json.dumps({"schema": SCHEMA_VERSION, **readings[0]}, separators=(",", ":")).encode()
    return json.dumps({"schema": SCHEMA_VERSION, "readings": list(readings)}, separators=(",", ":")).encode()


class _BadTimestampError(ValueError):
    pass


def _parse_ts(raw: object) -> float:
    """Epoch seconds of an ISO-8601 string with a zone or a number; raises :class:`_BadTimestampError`."""
    if isinstance(raw, bool):
        raise _BadTimestampError(f"timestamp must be ISO-8601 or epoch seconds, got {raw!r}")
    if isinstance(raw, int):  # compare before converting: a 400-digit integer does not fit a float
        if not REPRESENTABLE_TS[0] <= raw <= REPRESENTABLE_TS[1]:
            raise _BadTimestampError(f"timestamp {_short(raw)} is outside 1970..9999")
        return float(raw)
    if isinstance(raw, float):
        if not math.isfinite(raw):
            raise _BadTimestampError(f"timestamp is not finite ({raw!r})")
        return raw
    if isinstance(raw, str):
        if len(raw) > 64:
            raise _BadTimestampError(f"timestamp string of {len(raw)} characters is not ISO-8601")
        try:
            parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError as error:
            raise _BadTimestampError(str(error)) from None
        if parsed.tzinfo is None:
            raise _BadTimestampError(f"timestamp {raw!r} has no time zone; add Z or an offset")
        try:
            return parsed.timestamp()
        except (OverflowError, ValueError) as error:
            raise _BadTimestampError(f"timestamp {raw!r}: {error}") from None
    raise _BadTimestampError(f"timestamp must be ISO-8601 or epoch seconds, got {type(raw).__name__}")


def _short(value: object, limit: int = 60) -> str:
    """``repr`` of a value from a message, cut to ``limit`` characters (it goes into logs)."""
    try:
        text = repr(value)
    except ValueError:  # an integer beyond sys.get_int_max_str_digits
        text = f"<{type(value).__name__} too large to print>"
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def sensor_id_problem(sensor: str, max_length: int = MAX_SENSOR_ID_LENGTH) -> str | None:
    """Why ``sensor`` cannot be a sensor id, or None if it can.

    >>> sensor_id_problem("pump-7") is None
    True
    >>> sensor_id_problem("a\\nb")
    'sensor_id holds control or unprintable characters'
    """
    if len(sensor) > max_length:
        return f"sensor_id of {len(sensor)} characters is over the {max_length}-character limit"
    try:
        sensor.encode("utf-8")
    except UnicodeEncodeError:
        return "sensor_id does not encode as UTF-8 (lone surrogate)"
    if not sensor.isprintable():
        return "sensor_id holds control or unprintable characters"
    return None


def _decode_one(
    item: object,
    index: int,
    key_sensor: str | None,
    channels: Sequence[str],
    allowed_sensors: Collection[str] | None,
    ts_range: tuple[float, float],
) -> Reading | Rejection:
    where = f"reading {index}"
    if not isinstance(item, dict):
        return Rejection("not_an_object", f"{where}: expected an object, got {type(item).__name__}")
    sensor = item.get("sensor_id", key_sensor)
    if not isinstance(sensor, str) or not sensor:
        return Rejection("missing_sensor_id", f"{where}: missing sensor_id (in the reading or as the message key)")
    problem = sensor_id_problem(sensor)
    if problem is not None:
        return Rejection("bad_sensor_id", f"{where}: {problem}")
    if allowed_sensors is not None and sensor not in allowed_sensors:
        return Rejection(
            "unknown_sensor", f"{where}: unknown sensor {sensor!r} (not in the configured whitelist)", sensor
        )
    if "ts" not in item:
        return Rejection("missing_ts", f"{where}: missing ts", sensor)
    try:
        ts = _parse_ts(item["ts"])
    except _BadTimestampError as error:
        return Rejection("bad_ts", f"{where}: {error}", sensor)
    values = item.get("values")
    if not isinstance(values, dict):
        return Rejection("bad_values", f"{where}: values must be an object of channel -> number", sensor)
    outcome = _pick_channels(where, sensor, ts, values, channels)
    if isinstance(outcome, Reading) and not ts_range[0] <= ts <= ts_range[1]:
        return Rejection("ts_out_of_range", f"{where}: {_describe_range(ts, ts_range)}", sensor)
    return outcome


def _describe_range(ts: float, ts_range: tuple[float, float]) -> str:
    def iso(seconds: float) -> str:
        if not REPRESENTABLE_TS[0] <= seconds <= REPRESENTABLE_TS[1]:
            return f"{seconds:.6g} s"
        return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")

    side = "before the earliest accepted" if ts < ts_range[0] else "after the latest accepted"
    bound = ts_range[0] if ts < ts_range[0] else ts_range[1]
    return f"timestamp {iso(ts)} is {side} {iso(bound)} (scoring.min_ts / scoring.max_future_skew_s)"


def _pick_channels(
    where: str, sensor: str, ts: float, values: dict[str, object], channels: Sequence[str]
) -> Reading | Rejection:
    try:  # fast path: every channel present as a finite int/float (bool is not a number here)
        picked = [values[channel] for channel in channels]
        if all(type(value) is float or type(value) is int for value in picked) and math.isfinite(sum(picked)):  # type: ignore[arg-type]
            return Reading(sensor, ts, np.array(picked, dtype=np.float64))
    except (KeyError, OverflowError):
        pass
    return _first_bad_channel(where, sensor, ts, values, channels)


def _first_bad_channel(
    where: str, sensor: str, ts: float, values: dict[str, object], channels: Sequence[str]
) -> Reading | Rejection:
    """The slow path of :func:`_pick_channels`: find and name the first channel that breaks the contract."""
    row = np.empty(len(channels), dtype=np.float64)
    for i, channel in enumerate(channels):
        if channel not in values:
            return Rejection("missing_channel", f"{where}: channel {channel!r} missing", sensor)
        value = values[channel]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return Rejection("bad_value", f"{where}: channel {channel!r} is not a number ({_short(value)})", sensor)
        try:
            number = float(value)
        except OverflowError:
            return Rejection("bad_value", f"{where}: channel {channel!r} is out of the float range", sensor)
        if not math.isfinite(number):
            return Rejection("bad_value", f"{where}: channel {channel!r} is {value} (NaN/inf not allowed)", sensor)
        row[i] = number
    return Reading(sensor, ts, row)


def _parse_json(raw: bytes) -> object:
    """orjson first; the stdlib only for what orjson refuses (NaN/Infinity tokens, named below)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        first_error = error
    # The stdlib reads NaN/Infinity (rejected by name later) but recurses per nesting level and turns
    # any run of digits into an int: refuse what orjson refused for depth or size instead of trying.
    message = str(first_error)
    if "depth limit" in message or "recursion" in message:
        raise ValueError(f"nested too deeply ({message})")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError, int digit limit
        raise ValueError(f"{message}; {type(error).__name__}: {_short(str(error), 200)}") from None


def decode_message(
    raw: bytes | None,
    key: bytes | None,
    channels: Sequence[str],
    *,
    max_bytes: int = 1_000_000,
    allowed_sensors: Collection[str] | None = None,
    ts_range: tuple[float, float] = REPRESENTABLE_TS,
) -> Decoded:
    """Decode one Kafka message into readings; never raises, whatever ``raw`` holds.

    ``ts_range`` is the (earliest, latest) accepted timestamp in epoch seconds; the consumer derives it
    from ``scoring.min_ts`` and the wall clock plus ``scoring.max_future_skew_s``.
    """
    try:
        return _decode(raw, key, channels, max_bytes, allowed_sensors, _clip_range(ts_range))
    except Exception as error:  # a bug, not bad input: still a dead letter rather than a dead consumer
        log.exception("decoder failed on a message; dead-lettering it as 'undecodable'")
        return Decoded([], [Rejection("undecodable", f"decoder error {type(error).__name__}: {_short(str(error))}")])


def _clip_range(ts_range: tuple[float, float]) -> tuple[float, float]:
    return max(ts_range[0], REPRESENTABLE_TS[0]), min(ts_range[1], REPRESENTABLE_TS[1])


def _decode(
    raw: bytes | None,
    key: bytes | None,
    channels: Sequence[str],
    max_bytes: int,
    allowed_sensors: Collection[str] | None,
    ts_range: tuple[float, float],
) -> Decoded:
    if raw is None:
        return Decoded([], [Rejection("tombstone", "empty message (tombstone)")])
    if len(raw) > max_bytes:
        return Decoded(
            [], [Rejection("too_large", f"message of {len(raw):,} bytes is over the {max_bytes:,}-byte limit")]
        )
    try:
        payload = _parse_json(raw)
    except ValueError as error:
        return Decoded([], [Rejection("invalid_json", f"not valid JSON: {error}")])
    if not isinstance(payload, dict):
        return Decoded([], [Rejection("not_an_object", f"expected a JSON object, got {type(payload).__name__}")])
    if payload.get("schema", SCHEMA_VERSION) != SCHEMA_VERSION:
        return Decoded(
            [],
            [
                Rejection(
                    "unsupported_schema", f"unsupported schema {_short(payload.get('schema'))}; this consumer reads 1"
                )
            ],
        )
    try:
        key_sensor = key.decode() if key else None
    except UnicodeDecodeError:
        key_sensor = None
    items = payload.get("readings", [payload])
    if not isinstance(items, list) or not items:
        return Decoded([], [Rejection("bad_readings", "'readings' must be a non-empty list of readings")])
    readings: list[Reading] = []
    rejections: list[Rejection] = []
    for index, item in enumerate(items):
        outcome = _decode_one(item, index, key_sensor, channels, allowed_sensors, ts_range)
        if isinstance(outcome, Reading):
            readings.append(outcome)
        else:
            rejections.append(outcome)
    return Decoded(readings, rejections)


@dataclass(frozen=True)
class DecodedBatch:
    """What a polled batch of messages gave, column-wise: one row per accepted reading.

    ``message[i]`` is the index (in the batch) of the message reading ``i`` came from; ``rejections``
    pairs each :class:`Rejection` with the index of its message.
    """

    message: np.ndarray  # [n] int64
    sensor_id: list[str]
    ts: np.ndarray  # [n] float64 epoch seconds
    values: np.ndarray  # [n, channels] float64, finite
    rejections: list[tuple[int, Rejection]]

    def __len__(self) -> int:
        return len(self.sensor_id)


_NUMBER_TYPES = frozenset({int, float})


def _plain_message_decoder(channels: Sequence[str]) -> msgspec.json.Decoder[Any]:
    """A C decoder for the common message: one reading, every channel a number, ``sensor_id`` a string
    or left to the key. It is stricter than the contract (a boolean, a null, an ISO ``ts`` or a batch
    raise), never looser: whatever it refuses goes through :func:`decode_message`. Channel names map
    onto positional fields, so any name (spaces included) works.
    """
    fields = [(f"c{i}", float) for i in range(len(channels))]
    values = msgspec.defstruct("PlainValues", fields, rename={f"c{i}": c for i, c in enumerate(channels)})
    message = msgspec.defstruct(
        "PlainMessage",
        [
            ("ts", float),
            ("values", values),
            ("sensor_id", str | msgspec.UnsetType, msgspec.UNSET),
            ("schema", int, SCHEMA_VERSION),
            ("readings", object, msgspec.UNSET),  # present: a batch, the slow path's
        ],
    )
    return msgspec.json.Decoder(message)


class BatchDecoder:
    """:func:`decode_message` for a whole polled batch, giving columns instead of objects.

    Messages that are plainly valid (the common case: known sensor, numeric ``ts``, every channel a
    number) are read on a fast path; anything else goes through :func:`decode_message` itself, so
    the readings accepted and the rejections (codes and reasons) are exactly those of
    :func:`decode_message` message by message. Sensor ids that passed its checks are remembered (up to
    ``max_known_sensors``), so the fast path does not check them again.

    >>> decoder = BatchDecoder(("a", "b"))
    >>> batch = decoder.decode([(b'{"sensor_id":"p1","ts":0,"values":{"a":1,"b":2.5}}', None), (b"{", None)])
    >>> batch.sensor_id, batch.values.tolist(), [(i, r.code) for i, r in batch.rejections]
    (['p1'], [[1.0, 2.5]], [(1, 'invalid_json')])
    """

    def __init__(
        self,
        channels: Sequence[str],
        *,
        max_bytes: int = 1_000_000,
        allowed_sensors: Collection[str] | None = None,
        max_known_sensors: int = 1_000_000,
    ) -> None:
        self.channels = tuple(channels)
        self.max_bytes = max_bytes
        self.allowed_sensors = allowed_sensors
        self.max_known_sensors = max_known_sensors
        self._known: set[str] = set()
        self._plain = _plain_message_decoder(self.channels)

    def decode(
        self, messages: Sequence[tuple[MessageValue, bytes | None]], ts_range: tuple[float, float] = REPRESENTABLE_TS
    ) -> DecodedBatch:
        """Decode ``(value, key)`` pairs; never raises, whatever the bytes. A value that is already a
        reading dict (a file source's) skips the JSON parse and is checked exactly as its message would be."""
        try:
            return self._decode(messages, ts_range)
        except Exception:  # a bug of the fast path, not bad input: every message goes through decode_message
            log.exception("batch decoder failed; decoding this batch message by message")
            low, high = _clip_range(ts_range)
            empty = np.empty((0, len(self.channels)))
            return self._merge(messages, list(range(len(messages))), [], [], [], empty, (low, high))

    def _decode(
        self, messages: Sequence[tuple[MessageValue, bytes | None]], ts_range: tuple[float, float]
    ) -> DecodedBatch:
        low, high = _clip_range(ts_range)
        channels, known = self.channels, self._known
        plain, astuple, unset, max_bytes = self._plain.decode, msgspec.structs.astuple, msgspec.UNSET, self.max_bytes
        message_index: list[int] = []
        sensors: list[str] = []
        stamps: list[float] = []
        rows: list[Sequence[object]] = []
        slow: list[int] = []
        for index, (raw, key) in enumerate(messages):
            try:
                row: Sequence[object]
                if type(raw) is bytes and len(raw) <= max_bytes:  # typed in C: numbers arrive as floats
                    message = plain(raw)
                    if message.readings is not unset or message.schema != 1:
                        raise ValueError
                    sensor = message.sensor_id if message.sensor_id is not unset else key.decode() if key else None
                    ts, row = message.ts, astuple(message.values)
                else:  # a file source's reading, or bytes the plain decoder is not given
                    if isinstance(raw, dict):
                        payload = raw
                    elif raw is None or len(raw) > max_bytes:
                        raise ValueError
                    else:
                        payload = orjson.loads(raw)
                    if type(payload) is not dict or "readings" in payload or payload.get("schema", SCHEMA_VERSION) != 1:
                        raise ValueError
                    sensor = payload["sensor_id"] if "sensor_id" in payload else key.decode() if key else None
                    ts = payload["ts"]
                    values = payload["values"]
                    row = [values[channel] for channel in channels]
                    if type(ts) not in _NUMBER_TYPES or not _NUMBER_TYPES.issuperset(map(type, row)):
                        raise ValueError
                if sensor not in known or not low <= ts <= high:
                    raise ValueError
            except Exception:  # anything unusual: decode_message decides, and says why
                slow.append(index)
                continue
            message_index.append(index)
            sensors.append(sensor)
            stamps.append(float(ts))
            rows.append(row)
        try:
            values_array = np.array(rows, dtype=np.float64).reshape(len(rows), len(channels))
        except OverflowError:  # an integer beyond the float range: let the slow path name it
            values_array = np.empty((0, len(channels)))
            slow, message_index, sensors, stamps = sorted(slow + message_index), [], [], []
        finite = np.isfinite(values_array).all(axis=1)
        if not finite.all():
            slow = sorted(slow + [message_index[i] for i in np.flatnonzero(~finite)])
            keep = np.flatnonzero(finite)
            message_index = [message_index[i] for i in keep]
            sensors = [sensors[i] for i in keep]
            stamps = [stamps[i] for i in keep]
            values_array = values_array[keep]
        if not slow:
            return DecodedBatch(np.array(message_index, dtype=np.int64), sensors, np.array(stamps), values_array, [])
        return self._merge(messages, slow, message_index, sensors, stamps, values_array, (low, high))

    def _merge(
        self,
        messages: Sequence[tuple[MessageValue, bytes | None]],
        slow: list[int],
        message_index: list[int],
        sensors: list[str],
        stamps: list[float],
        values: np.ndarray,
        ts_range: tuple[float, float],
    ) -> DecodedBatch:
        """Decode the ``slow`` messages one by one and merge them in message order with the fast ones."""
        rejections: list[tuple[int, Rejection]] = []
        extra_index: list[int] = []
        extra_sensors: list[str] = []
        extra_stamps: list[float] = []
        extra_values: list[np.ndarray] = []
        for index in slow:
            value, key = messages[index]
            decoded = decode_message(
                message_bytes(value),
                key,
                self.channels,
                max_bytes=self.max_bytes,
                allowed_sensors=self.allowed_sensors,
                ts_range=ts_range,
            )
            rejections += [(index, rejection) for rejection in decoded.rejections]
            for reading in decoded.readings:
                extra_index.append(index)
                extra_sensors.append(reading.sensor_id)
                extra_stamps.append(reading.ts)
                extra_values.append(reading.values)
                if len(self._known) < self.max_known_sensors:
                    self._known.add(reading.sensor_id)
        all_index = np.array(message_index + extra_index, dtype=np.int64)
        order = np.argsort(all_index, kind="stable")
        all_sensors = sensors + extra_sensors
        extra = np.array(extra_values, dtype=np.float64).reshape(len(extra_values), len(self.channels))
        return DecodedBatch(
            all_index[order],
            [all_sensors[i] for i in order],
            np.array(stamps + extra_stamps, dtype=np.float64)[order],
            np.concatenate([values, extra])[order],
            rejections,
        )
