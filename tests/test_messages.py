"""The input contract: what is accepted, and the reason given for everything that is not."""

from __future__ import annotations

import json

import pytest

from pipeline.messages import decode_message, encode_readings

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
