"""Alarm episodes: one open and one close per anomaly, stable ids, state carried across a restart."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from pipeline.alarms import AlarmTracker, severity

CHANNELS = ("flow", "pressure")


def stream(n: int = 120, start: int = 40, length: int = 15) -> dict[str, np.ndarray]:
    """Two sensors, one second apart; sensor b has an anomaly in ``pressure`` at windows start..start+length."""
    ts = np.repeat(np.arange(n, dtype=float), 2)
    sensors = np.tile(np.array(["a", "b"], dtype=object), n)
    anomaly = np.zeros(2 * n, dtype=bool)
    anomaly[2 * np.arange(start, start + length) + 1] = True
    error = np.where(anomaly, 3.0, 0.2)
    channel_error = np.column_stack([np.full(2 * n, 0.1), np.where(anomaly, 5.0, 0.1)])
    return {
        "sensor_ids": list(sensors),
        "end_ts": ts,
        "anomaly": anomaly,
        "error": error,
        "threshold": np.ones(2 * n),
        "channel_error": channel_error,
        "offsets": np.arange(2 * n),
    }


def feed(tracker: AlarmTracker, s: dict, lo: int, hi: int) -> list[dict]:
    return tracker.update(
        s["sensor_ids"][lo:hi],
        s["end_ts"][lo:hi],
        s["anomaly"][lo:hi],
        s["error"][lo:hi],
        s["threshold"][lo:hi],
        s["channel_error"][lo:hi],
        "v1",
        ["t"] * (hi - lo),
        np.zeros(hi - lo, int),
        s["offsets"][lo:hi],
    )


def test_one_anomaly_is_one_open_and_one_close_with_one_id() -> None:
    s = stream()
    events = feed(AlarmTracker(quiet_s=10.0, channels=CHANNELS), s, 0, len(s["sensor_ids"]))
    assert [e["event"] for e in events] == ["open", "close"]
    opened, closed = events
    assert opened["alarm_id"] == closed["alarm_id"]
    assert opened["sensor_id"] == "b"
    assert opened["top_channels"][0] == "pressure"
    assert closed["windows"] == 15
    assert closed["severity"] == severity(3.0) == "major"
    assert closed["closed_at"] - closed["last_anomalous_at"] >= 10.0


@given(st.lists(st.integers(0, 240), max_size=6))
def test_events_do_not_depend_on_how_the_stream_is_batched(cuts: list[int]) -> None:
    s = stream()
    whole = feed(AlarmTracker(quiet_s=10.0, channels=CHANNELS), s, 0, 240)
    tracker, got, bounds = AlarmTracker(quiet_s=10.0, channels=CHANNELS), [], sorted({0, 240, *cuts})
    for lo, hi in itertools.pairwise(bounds):
        got += feed(tracker, s, lo, hi)
    assert got == whole


@given(st.integers(1, 239))
def test_a_restart_from_the_commit_keeps_the_id_and_raises_no_second_alarm(cut: int) -> None:
    s = stream()
    reference = feed(AlarmTracker(quiet_s=10.0, channels=CHANNELS), s, 0, 240)
    first = AlarmTracker(quiet_s=10.0, channels=CHANNELS)
    before = feed(first, s, 0, cut)
    carried = first.snapshot()  # what the commit at ``cut`` carries
    second = AlarmTracker(quiet_s=10.0, channels=CHANNELS)
    for (topic, partition), alarms in carried.items():
        second.restore(topic, partition, alarms)
    after = feed(second, s, cut, 240)
    assert [(e["event"], e["alarm_id"]) for e in before + after] == [(e["event"], e["alarm_id"]) for e in reference]


def test_replaying_uncommitted_windows_reopens_under_the_same_id() -> None:
    s = stream()
    lost = feed(AlarmTracker(quiet_s=10.0, channels=CHANNELS), s, 0, 100)  # crashed before any commit
    replayed = feed(AlarmTracker(quiet_s=10.0, channels=CHANNELS), s, 0, 240)
    assert lost[0]["event"] == "open"
    assert lost[0]["alarm_id"] == replayed[0]["alarm_id"]


def test_metadata_from_elsewhere_is_ignored() -> None:
    tracker = AlarmTracker(quiet_s=10.0, channels=CHANNELS)
    assert tracker.restore("t", 0, {"x": ["not", "an", "alarm"]}) == 0
    assert tracker.restore("t", 0, "garbage") == 0
    assert len(tracker) == 0
