"""The input contract: what is accepted, and the reason given for everything that is not."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.messages import REJECTION_CODES, BatchDecoder, Decoded, decode_message, encode_readings

CHANNELS = ("flow", "pressure")


def test_single_and_batched_forms_decode_in_channel_order() -> None:
    single = encode_readings([{"sensor_id": "p1", "ts": "2026-01-01T00:00:00Z", "values": {"pressure": 2, "flow": 1}}])
    decoded = decode_message(single, None, CHANNELS)
    assert decoded.readings[0].values.tolist() == [1.0, 2.0]
    assert decoded.readings[0].ts == 1767225600.0
    batch = encode_readings([{"ts": t, "values": {"flow": t, "pressure": 0, "extra": 5}} for t in range(3)])
    decoded = decode_message(batch, b"p2", CHANNELS)
    assert [(r.sensor_id, r.ts) for r in decoded.readings] == [("p2", 0.0), ("p2", 1.0), ("p2", 2.0)]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe not json", "not valid JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"schema": 2, "sensor_id": "p", "ts": 0, "values": {}}', "unsupported schema"),
        (b'{"ts": 0, "values": {"flow": 1, "pressure": 1}}', "missing sensor_id"),
        (b'{"sensor_id": "p", "values": {"flow": 1, "pressure": 1}}', "missing ts"),
        (b'{"sensor_id": "p", "ts": "yesterday", "values": {"flow": 1, "pressure": 1}}', "Invalid isoformat"),
        (b'{"sensor_id": "p", "ts": "2026-01-01T00:00:00", "values": {"flow": 1, "pressure": 1}}', "no time zone"),
        (b'{"sensor_id": "p", "ts": 0, "values": {"flow": 1}}', "channel 'pressure' missing"),
        (b'{"sensor_id": "p", "ts": 0, "values": {"flow": "1", "pressure": 1}}', "not a number"),
        (b'{"sensor_id": "p", "ts": 0, "values": {"flow": NaN, "pressure": 1}}', "NaN/inf not allowed"),
        (b'{"sensor_id": "p", "ts": 0, "values": {"flow": Infinity, "pressure": 1}}', "NaN/inf not allowed"),
        (b'{"sensor_id": "p", "ts": 0, "values": {"flow": true, "pressure": 1}}', "not a number"),
        (None, "tombstone"),
    ],
)
def test_bad_messages_are_rejected_with_a_reason(raw: bytes | None, reason: str) -> None:
    decoded = decode_message(raw, None, CHANNELS)
    assert decoded.readings == []
    assert reason in decoded.rejections[0].reason


def test_unknown_sensors_and_oversize_messages_are_rejected() -> None:
    good = json.dumps({"sensor_id": "intruder", "ts": 0, "values": {"flow": 1, "pressure": 1}}).encode()
    assert (
        "unknown sensor 'intruder'" in decode_message(good, None, CHANNELS, allowed_sensors={"p1"}).rejections[0].reason
    )
    assert "over the 10-byte limit" in decode_message(good, None, CHANNELS, max_bytes=10).rejections[0].reason


def test_a_bad_reading_does_not_sink_its_batch() -> None:
    raw = encode_readings(
        [
            {"sensor_id": "p", "ts": 0, "values": {"flow": 1, "pressure": 1}},
            {"sensor_id": "p", "ts": 1, "values": {"flow": None, "pressure": 1}},
            {"sensor_id": "p", "ts": 2, "values": {"flow": 3, "pressure": 1}},
        ]
    )
    decoded = decode_message(raw, None, CHANNELS)
    assert [r.ts for r in decoded.readings] == [0.0, 2.0]
    assert decoded.rejections[0].reason.startswith("reading 1:")


# -- hostile input: the decoder never raises, and every failure has a code from the closed set ------------

HOSTILE = {
    "ts of 400 digits": (
        b'{"sensor_id": "p", "ts": ' + b"9" * 400 + b', "values": {"flow": 1, "pressure": 1}}',
        "bad_ts",
    ),
    "value of 5,000 digits": (
        b'{"sensor_id": "p", "ts": 1, "values": {"flow": ' + b"1" * 5000 + b', "pressure": 1}}',
        "invalid_json",
    ),
    "100,000 nested [": (b"[" * 100_000, "invalid_json"),
    "100,000 nested {": (b'{"a":' * 100_000, "invalid_json"),
    "lone surrogate sensor id": (
        b'{"sensor_id": "\\ud800", "ts": 1, "values": {"flow": 1, "pressure": 1}}',
        "bad_sensor_id",
    ),
    "control character in sensor id": (
        b'{"sensor_id": "a\\u0000b", "ts": 1, "values": {"flow": 1, "pressure": 1}}',
        "bad_sensor_id",
    ),
    "sensor id of 10,000 characters": (
        b'{"sensor_id": "' + b"s" * 10_000 + b'", "ts": 1, "values": {"flow": 1, "pressure": 1}}',
        "bad_sensor_id",
    ),
    "empty readings": (b'{"schema": 1, "readings": []}', "bad_readings"),
    "far-future ts": (
        b'{"sensor_id": "p", "ts": "9999-12-31T23:59:59Z", "values": {"flow": 1, "pressure": 1}}',
        "ts_out_of_range",
    ),
    "ts of 1e15 s": (b'{"sensor_id": "p", "ts": 1e15, "values": {"flow": 1, "pressure": 1}}', "ts_out_of_range"),
    "ts before the floor": (b'{"sensor_id": "p", "ts": 5, "values": {"flow": 1, "pressure": 1}}', "ts_out_of_range"),
    "ts string of 10,000 characters": (
        b'{"sensor_id": "p", "ts": "' + b"2" * 10_000 + b'", "values": {"flow": 1, "pressure": 1}}',
        "bad_ts",
    ),
    "invalid UTF-8": (b'{"sensor_id": "\xff", "ts": 1, "values": {}}', "invalid_json"),
    "value of 1e400": (b'{"sensor_id": "p", "ts": 1e9, "values": {"flow": 1e400, "pressure": 1}}', "bad_value"),
}
TS_RANGE = (946_684_800.0, 1_900_000_000.0)  # 2000-01-01 .. 2030-03


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_messages_are_rejected_with_their_code(name: str) -> None:
    raw, code = HOSTILE[name]
    decoded = decode_message(raw, None, CHANNELS, ts_range=TS_RANGE)
    assert decoded.readings == []
    assert [r.code for r in decoded.rejections] == [code], decoded.rejections


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)
readings = st.fixed_dictionaries(
    {},
    optional={
        "sensor_id": json_values | st.text(),
        "ts": json_values | st.integers(min_value=-(10**400), max_value=10**400),
        "values": st.dictionaries(st.sampled_from([*CHANNELS, "x"]), json_values) | json_values,
    },
)


def _check(decoded: Decoded) -> None:
    assert all(r.code in REJECTION_CODES for r in decoded.rejections), decoded.rejections
    assert all(r.code != "undecodable" for r in decoded.rejections), decoded.rejections
    for reading in decoded.readings:
        assert np.isfinite(reading.values).all()
        assert TS_RANGE[0] <= reading.ts <= TS_RANGE[1]
        reading.sensor_id.encode("utf-8")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.one_of(st.none(), st.binary(max_size=20)))
def test_arbitrary_bytes_never_raise(raw: bytes, key: bytes | None) -> None:
    _check(decode_message(raw, key, CHANNELS, ts_range=TS_RANGE))


@settings(max_examples=300, deadline=None)
@given(st.one_of(readings, st.lists(readings, max_size=4), json_values), st.booleans())
def test_arbitrary_json_never_raises(payload: object, batched: bool) -> None:
    body = {"schema": 1, "readings": payload} if batched else payload
    raw = json.dumps(body, allow_nan=True, default=str).encode("utf-8", "surrogatepass")
    _check(decode_message(raw, b"key", CHANNELS, ts_range=TS_RANGE))


def _valid(sensor: str, ts: object, flow: object, keyed: bool) -> tuple[bytes, bytes | None]:
    reading: dict[str, object] = {"ts": ts, "values": {"flow": flow, "pressure": 2.5, "x": "ignored"}}
    if not keyed:
        reading["sensor_id"] = sensor
    return encode_readings([reading]), sensor.encode() if keyed else None


valid_messages = st.builds(
    _valid,
    st.sampled_from(["p1", "p2", "p3"]),
    st.sampled_from([1e9, 1_500_000_000, "2020-01-01T00:00:00Z", 5, 1e15, True]),
    # any finite double and large integers: the fast path parses numbers as the slow one does, to the bit
    st.one_of(st.sampled_from([1, 1.5, -3, True, None, "1", 10**30, 2**63 + 1]), st.floats(allow_nan=False)),
    st.booleans(),
)
hostile_messages = st.sampled_from([(raw, None) for raw, _ in HOSTILE.values()])
arbitrary_messages = st.builds(
    lambda payload: (json.dumps(payload, allow_nan=True, default=str).encode("utf-8", "surrogatepass"), b"key"),
    st.one_of(readings, json_values),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(valid_messages, valid_messages, hostile_messages, arbitrary_messages), max_size=30))
def test_a_batch_decodes_exactly_as_message_by_message(messages: list[tuple[bytes, bytes | None]]) -> None:
    decoder = BatchDecoder(CHANNELS, allowed_sensors={"p1", "p2", "key"})
    for _ in range(2):  # the second pass finds the sensors known
        batch = decoder.decode(messages, ts_range=TS_RANGE)
        expected = [
            decode_message(raw, key, CHANNELS, allowed_sensors={"p1", "p2", "key"}, ts_range=TS_RANGE)
            for raw, key in messages
        ]
        readings = [(i, r.sensor_id, r.ts, r.values.tolist()) for i, d in enumerate(expected) for r in d.readings]
        assert [
            (int(i), s, float(t), v.tolist())
            for i, s, t, v in zip(batch.message, batch.sensor_id, batch.ts, batch.values, strict=True)
        ] == readings
        rejections = [(i, r.code, r.reason) for i, d in enumerate(expected) for r in d.rejections]
        assert sorted((i, r.code, r.reason) for i, r in batch.rejections) == sorted(rejections)


def test_a_failing_fast_path_falls_back_to_message_by_message(monkeypatch: pytest.MonkeyPatch) -> None:
    decoder = BatchDecoder(CHANNELS)

    def broken(*_: object) -> None:
        raise RuntimeError("a bug in the fast path")

    monkeypatch.setattr(decoder, "_decode", broken)
    raw = encode_readings([{"sensor_id": "p", "ts": 1e9, "values": {"flow": 1, "pressure": 2}}])
    batch = decoder.decode([(raw, None), (b"{", None)])
    assert batch.sensor_id == ["p"]
    assert [(i, r.code) for i, r in batch.rejections] == [(1, "invalid_json")]


def test_a_file_sources_readings_decode_as_their_messages_would() -> None:
    readings = [
        {"sensor_id": "s1", "ts": 1_700_000_000.0, "values": {"flow": 1.0, "pressure": 2.0}},
        {"sensor_id": "s1", "ts": 1_700_000_001.0, "values": {"flow": float("nan"), "pressure": 2.0}},
        {"sensor_id": "s2", "ts": 1_700_000_002.0, "values": {"flow": 3.0}},  # a channel missing
    ]
    as_dicts = BatchDecoder(CHANNELS).decode([(r, None) for r in readings])
    as_bytes = BatchDecoder(CHANNELS).decode([(encode_readings([r]), None) for r in readings])
    assert as_dicts.sensor_id == as_bytes.sensor_id == ["s1"]
    np.testing.assert_array_equal(as_dicts.values, as_bytes.values)
    assert [(i, r.code, r.reason) for i, r in as_dicts.rejections] == [
        (i, r.code, r.reason) for i, r in as_bytes.rejections
    ]
    assert len(as_dicts.rejections) == 2
