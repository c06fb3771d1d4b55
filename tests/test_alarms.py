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


SENSORS4 = [f"s{i}" for i in range(4)]


def fleet_batch(n_sensors: int, ratios: dict[str, float], at: float) -> dict[str, np.ndarray]:
    """One window per sensor at ``at``; every sensor flagged at ratio 1.5 unless ``ratios`` says otherwise."""
    sensors = [f"s{i}" for i in range(n_sensors)]
    ratio = np.array([ratios.get(s, 1.5) for s in sensors])
    return {
        "sensor_ids": sensors,
        "end_ts": np.full(n_sensors, at),
        "anomaly": ratio > 1.0,
        "error": ratio,
        "threshold": np.ones(n_sensors),
        "channel_error": np.column_stack([ratio, ratio / 2]),
        "offsets": np.arange(n_sensors) + int(at) * n_sensors,
    }


def feed_all(tracker: AlarmTracker, s: dict) -> list[dict]:
    return feed(tracker, s, 0, len(s["sensor_ids"]))


def test_a_fleet_wide_drift_is_one_notice_and_suppresses_the_alarms_it_explains() -> None:
    tracker = AlarmTracker(quiet_s=10.0, channels=CHANNELS, regime_policy="suppress")
    notice = tracker.fleet_drift(at=100.0, model_version="v1")
    assert [(e["type"], e["event"]) for e in notice] == [("regime_change", "open")]
    assert tracker.fleet_drift(at=101.0, model_version="v1") == []  # one notice while it is open
    events = feed_all(tracker, fleet_batch(10, {"s3": 20.0}, at=102.0))
    public = [e for e in events if not e["suppressed"]]
    assert [e["sensor_id"] for e in public] == ["s3"]  # stands out from the fleet: still alarmed
    assert all(e["suspected_regime_change"] for e in events)
    assert len(events) == 10  # the others are kept (the alarms table), off the alerts topic
    (closed,) = tracker.regime_settled(at=200.0, closed_by="quiet")
    assert (closed["event"], closed["notice_id"], closed["alarms_covered"]) == ("close", notice[0]["notice_id"], 10)


def test_a_model_swap_closes_the_notice_only_once_the_fleet_is_quiet_under_the_new_model() -> None:
    tracker = AlarmTracker(quiet_s=10.0, channels=CHANNELS, regime_policy="suppress")
    (notice,) = tracker.fleet_drift(at=100.0, model_version="v1")
    tracker.model_swapped()  # e.g. a first stage's threshold, and the fleet still alarms under it
    still = [e for t in range(101, 120) for e in feed_all(tracker, fleet_batch(4, {}, at=float(t)))]
    assert tracker.regime_open
    assert still
    assert all(e["suppressed"] for e in still if e["type"] == "alarm")  # no flood after the swap
    quiet = [e for t in range(120, 140) for e in feed_all(tracker, fleet_batch(4, dict.fromkeys(SENSORS4, 0.2), at=t))]
    (closed,) = [e for e in quiet if e["type"] == "regime_change"]
    assert (closed["event"], closed["notice_id"], closed["closed_by"]) == ("close", notice["notice_id"], "model_swap")
    assert closed["at"] == 139.0  # the last flagged window at 119: alarms closed at 129, then quiet_s with none open
    assert not tracker.regime_open


def test_on_a_large_fleet_a_notice_closes_although_a_few_sensors_always_alarm() -> None:
    """Forty sensors, two of which alarm on and off all the time (the normal false alarms of a big fleet):
    "no alarm open" never holds, but the fleet is quiet with at most a quarter of fleet_share alarmed."""
    tracker = AlarmTracker(quiet_s=10.0, channels=CHANNELS, regime_policy="suppress")
    sensors = [f"s{i}" for i in range(40)]
    tracker.update(sensors, np.zeros(40), np.zeros(40, bool), np.zeros(40), np.ones(40), np.zeros((40, 2)), "v1",
                   ["t"] * 40, np.zeros(40, int), np.arange(40))  # fmt: skip
    tracker.fleet_drift(at=1.0, model_version="v1")
    events = []
    for t in range(2, 60):
        noisy = {"s0": 1.5, "s1": 1.5} if t % 3 else {}  # two sensors, flagged two windows in three
        events += feed_all(tracker, fleet_batch(40, {**dict.fromkeys(sensors, 0.2), **noisy}, at=float(t)))
    closes = [e for e in events if e["type"] == "regime_change" and e["event"] == "close"]
    assert len(closes) == 1
    assert closes[0]["closed_by"] == "quiet"
    assert not tracker.regime_open


def notice_stream(tracker: AlarmTracker, lo: int, hi: int) -> list[dict]:
    """Four sensors: quiet, a fleet-wide rise from t=10 to t=40 (a notice from the alarms), quiet again."""
    events = []
    for t in range(lo, hi):
        ratio = 1.6 if 10 <= t < 40 else 0.3
        events += feed_all(tracker, fleet_batch(4, dict.fromkeys(SENSORS4, ratio), at=float(t)))
    return events


@given(st.integers(1, 69))
def test_a_restart_continues_the_open_notice_under_its_id(cut: int) -> None:
    reference = notice_stream(AlarmTracker(quiet_s=10.0, channels=CHANNELS), 0, 70)
    first = AlarmTracker(quiet_s=10.0, channels=CHANNELS)
    before = notice_stream(first, 0, cut)
    alarms, notice = first.snapshot(), first.notice_snapshot()  # what the commit at ``cut`` carries
    second = AlarmTracker(quiet_s=10.0, channels=CHANNELS)
    for (topic, partition), carried in alarms.items():
        second.restore(topic, partition, carried)
    assert second.restore_notice(notice) == (notice is not None)
    after = notice_stream(second, cut, 70)

    def public(events: list[dict]) -> list[tuple]:
        return [(e["type"], e["event"], e.get("alarm_id") or e["notice_id"]) for e in events if not e.get("suppressed")]

    assert public(before + after) == public(reference)
    assert [e["event"] for e in reference if e["type"] == "regime_change"] == ["open", "close"]


def test_a_carried_notice_from_elsewhere_is_ignored_and_the_newest_carried_one_wins() -> None:
    tracker = AlarmTracker(quiet_s=10.0, channels=CHANNELS)
    assert not tracker.restore_notice({"notice_id": "x"})
    assert not tracker.restore_notice("garbage")
    assert not tracker.regime_open
    older = {"notice_id": "old", "opened_at": 10.0, "model_version": "v1", "cause": "fleet_drift"}
    newer = {**older, "notice_id": "new", "opened_at": 50.0}
    assert tracker.restore_notice(newer)
    assert not tracker.restore_notice(older)  # a partition with no data since keeps the older one
    carried = tracker.notice_snapshot()
    assert carried is not None
    assert carried["notice_id"] == "new"


def test_a_suppressed_alarm_that_later_stands_out_is_sent_under_its_id() -> None:
    tracker = AlarmTracker(quiet_s=10.0, channels=CHANNELS, regime_policy="suppress")
    tracker.fleet_drift(at=100.0, model_version="v1")
    (first,) = [e for e in feed_all(tracker, fleet_batch(10, {}, at=101.0)) if e["sensor_id"] == "s4"]
    spike = [e for e in feed_all(tracker, fleet_batch(10, {"s4": 30.0}, at=102.0)) if e["sensor_id"] == "s4"]
    assert first["suppressed"]
    assert all(e["suppressed"] for e in spike)  # one window is noise, not standing out
    later = [e for t in range(103, 110) for e in feed_all(tracker, fleet_batch(10, {"s4": 30.0}, at=float(t)))]
    opened = [(e["event"], e["suppressed"], e["alarm_id"]) for e in later if e["event"] == "open"]
    assert opened == [("open", False, first["alarm_id"])]  # its level stands out: sent once, under its id


def ratio_stream(sensors: list[str], ts: np.ndarray, ratio: np.ndarray) -> dict:
    """Windows of ``sensors`` at ``ts`` with error ``ratio`` times their threshold (1), flagged above it."""
    return {
        "sensor_ids": sensors,
        "end_ts": ts,
        "anomaly": ratio > 1.0,
        "error": ratio,
        "threshold": np.ones(len(ts)),
        "channel_error": np.column_stack([ratio, ratio / 2]),
        "offsets": np.arange(len(ts)),
    }


def subset(s: dict, rows: np.ndarray) -> dict:
    return {k: ([v[i] for i in rows] if isinstance(v, list) else v[rows]) for k, v in s.items()}


def test_a_sensor_that_stands_out_is_sent_even_when_its_partition_is_read_far_behind_the_others() -> None:
    # every sensor flagged at 5x its threshold under a notice; s0 has a fault of its own at 500x for 20 s
    n, ts = 120, np.repeat(np.arange(120, dtype=float), 4)
    sensors = [f"s{i}" for i in np.tile(np.arange(4), n)]
    s = ratio_stream(sensors, ts, np.where((np.array(sensors) == "s0") & (ts >= 40) & (ts < 60), 500.0, 5.0))
    is_s0 = np.array(sensors) == "s0"
    in_time = [subset(s, np.arange(lo, min(lo + 200, len(ts)))) for lo in range(0, len(ts), 200)]  # in pace
    behind = [subset(s, np.flatnonzero(~is_s0)), subset(s, np.flatnonzero(is_s0))]  # s0's partition read last
    for batches in (in_time, behind):
        tracker = AlarmTracker(quiet_s=10.0, channels=CHANNELS, regime_policy="suppress")
        tracker.fleet_drift(at=0.0, model_version="v1")
        events = [event for batch in batches for event in feed_all(tracker, batch)]
        sent = [(e["event"], e["sensor_id"], e["at"]) for e in events if e["type"] == "alarm" and not e["suppressed"]]
        assert sent[0][:2] == ("open", "s0"), sent
        assert 40.0 <= sent[0][2] < 60.0, sent  # while its fault lasts, not after
        assert {sensor for _, sensor, _ in sent} == {"s0"}


def test_an_alarm_that_stood_out_closes_once_its_sensor_rejoins_the_fleet() -> None:
    tracker = AlarmTracker(quiet_s=10.0, channels=CHANNELS, regime_policy="suppress")
    tracker.fleet_drift(at=100.0, model_version="v1")
    events = [e for t in range(101, 121) for e in feed_all(tracker, fleet_batch(10, {"s4": 30.0}, at=float(t)))]
    (sent,) = [e for e in events if e["sensor_id"] == "s4" and e["event"] == "open" and not e["suppressed"]]
    # the anomaly is over; s4 is still flagged like every other sensor (the regime change's ramp goes on)
    after = [e for t in range(121, 200) for e in feed_all(tracker, fleet_batch(10, {}, at=float(t)))]
    s4 = [(e["event"], e["closed_by"], e["suppressed"]) for e in after if e["sensor_id"] == "s4"]
    (closed,) = [e for e in after if e["alarm_id"] == sent["alarm_id"]]
    assert (closed["event"], closed["closed_by"]) == ("close", "rejoined_fleet")
    assert closed["at"] < 190  # its level (30x, averaged) is back within ~2 level spans, not when the plant settles
    assert s4 == [("close", "rejoined_fleet", False), ("open", None, True)]  # the rest is the notice's
    assert not any(e["event"] == "open" and not e["suppressed"] for e in after)  # no second alarm sent


def test_policies_notify_and_alarm() -> None:
    notify = AlarmTracker(quiet_s=10.0, channels=CHANNELS, regime_policy="notify")
    assert notify.fleet_drift(at=100.0, model_version="v1")
    events = feed_all(notify, fleet_batch(5, {}, at=101.0))
    assert all(e["suspected_regime_change"] and not e["suppressed"] for e in events)
    alarm = AlarmTracker(quiet_s=10.0, channels=CHANNELS, regime_policy="alarm")
    assert alarm.fleet_drift(at=100.0, model_version="v1") == []
    events = feed_all(alarm, fleet_batch(5, {}, at=101.0))
    assert not any(e["suspected_regime_change"] or e["suppressed"] for e in events)


def test_alarms_open_when_the_notice_opens_are_closed_by_it() -> None:
    # the drift detectors' path alone (fleet_share=None): four alarms open first, the drift closes them
    tracker = AlarmTracker(quiet_s=10.0, channels=CHANNELS, regime_policy="suppress", fleet_share=None)
    opened = feed_all(tracker, fleet_batch(4, {}, at=100.0))
    events = tracker.fleet_drift(at=101.0, model_version="v1")
    assert [e["event"] for e in events] == ["open"] + ["close"] * 4
    assert {e["alarm_id"] for e in events[1:]} == {e["alarm_id"] for e in opened}
    assert all(e["closed_by"] == "regime_change" for e in events[1:])
    assert len(tracker) == 0


def staggered(n_sensors: int, alarmed: int, at: float = 0.0, n: int = 60) -> dict[str, np.ndarray]:
    """``n`` seconds of a fleet; the first ``alarmed`` sensors turn anomalous one after another, 10 s apart."""
    ts = np.repeat(at + np.arange(n, dtype=float), n_sensors)
    sensor = np.tile(np.arange(n_sensors), n)
    anomaly = (sensor < alarmed) & (ts - at >= 10.0 * (sensor + 1))
    ratio = np.where(anomaly, 1.8, 0.3)
    return {
        "sensor_ids": [f"s{i}" for i in sensor],
        "end_ts": ts,
        "anomaly": anomaly,
        "error": ratio,
        "threshold": np.ones(len(ts)),
        "channel_error": np.column_stack([ratio, ratio / 2]),
        "offsets": np.arange(len(ts)) + int(at) * n_sensors,
    }


def test_most_of_the_fleet_alarming_at_once_is_one_regime_notice_not_an_alarm_each() -> None:
    tracker = AlarmTracker(quiet_s=10.0, channels=CHANNELS, regime_policy="suppress")
    events = feed_all(tracker, staggered(n_sensors=4, alarmed=4))
    notices = [e for e in events if e["type"] == "regime_change"]
    sent = [(e["event"], e["sensor_id"]) for e in events if e["type"] == "alarm" and not e["suppressed"]]
    assert [(n["event"], n["cause"]) for n in notices] == [("open", "fleet_alarms")]
    assert notices[0]["at"] == 30.0  # when the third of four sensors alarmed
    assert sent == [("open", "s0"), ("open", "s1"), ("close", "s0"), ("close", "s1")]  # closed by the notice
    later = [e for e in events if e["type"] == "alarm" and e["sensor_id"] in ("s2", "s3")]
    assert all(e["suspected_regime_change"] and e["suppressed"] for e in later)


def rising(n_sensors: int = 4, n: int = 60, spread: float = 0.05) -> dict[str, np.ndarray]:
    """A fleet-wide rise: every sensor's error ratio climbs together, sensor i ``spread * i`` above s0."""
    ts = np.repeat(np.arange(n, dtype=float), n_sensors)
    sensor = np.tile(np.arange(n_sensors), n)
    return ratio_stream([f"s{i}" for i in sensor], ts, 0.3 + 0.02 * ts + spread * sensor)


def test_a_fleet_wide_rise_opens_the_notice_at_the_first_alarm_not_the_third() -> None:
    near = AlarmTracker(quiet_s=10.0, channels=CHANNELS, regime_policy="suppress", near_ratio=0.6)
    events = feed_all(near, rising())
    (notice,) = [e for e in events if e["type"] == "regime_change"]
    first = next(e for e in events if e["type"] == "alarm")
    assert (notice["cause"], notice["at"], first["sensor_id"]) == ("fleet_alarms", first["at"], "s3")
    assert not any(e["type"] == "alarm" and not e["suppressed"] for e in events)  # none sent one by one
    assert all(e["type"] != "regime_change" or e["event"] == "open" for e in events)
    counted_only_open = AlarmTracker(quiet_s=10.0, channels=CHANNELS, regime_policy="suppress", near_ratio=None)
    events = feed_all(counted_only_open, rising())
    sent = [e["sensor_id"] for e in events if e["type"] == "alarm" and e["event"] == "open" and not e["suppressed"]]
    assert sent == ["s3", "s2"]  # without it the first two crossings were sent before the third made it a regime


@given(st.lists(st.integers(0, 240), max_size=6))
def test_the_fleet_rise_does_not_depend_on_how_the_stream_is_batched(cuts: list[int]) -> None:
    s = rising()
    whole = feed_all(AlarmTracker(quiet_s=10.0, channels=CHANNELS), s)
    tracker, got, bounds = AlarmTracker(quiet_s=10.0, channels=CHANNELS), [], sorted({0, 240, *cuts})
    for lo, hi in itertools.pairwise(bounds):
        got += feed(tracker, s, lo, hi)
    assert got == whole


def test_one_sensor_alarming_while_the_rest_are_far_from_their_thresholds_is_an_alarm() -> None:
    tracker = AlarmTracker(quiet_s=10.0, channels=CHANNELS, regime_policy="suppress", near_ratio=0.6)
    s = rising(n=10)
    s["error"] = np.where(np.array(s["sensor_ids"]) == "s3", s["end_ts"] * 0.2, 0.55)  # the rest just below 0.6
    s["anomaly"] = s["error"] > 1.0
    events = feed_all(tracker, s)
    assert [(e["type"], e["sensor_id"], e["suppressed"]) for e in events] == [("alarm", "s3", False)]


def test_two_sensors_of_four_alarming_are_two_alarms_and_no_notice() -> None:
    events = feed_all(AlarmTracker(quiet_s=10.0, channels=CHANNELS), staggered(n_sensors=4, alarmed=2))
    assert [(e["type"], e["event"], e["suppressed"]) for e in events] == [("alarm", "open", False)] * 2
    pair = feed_all(AlarmTracker(quiet_s=10.0, channels=CHANNELS), staggered(n_sensors=2, alarmed=2))
    assert [e["type"] for e in pair] == ["alarm", "alarm"]  # a fleet of two has no regime notices of this kind


def test_the_notice_closes_once_the_fleet_is_quiet_again() -> None:
    tracker = AlarmTracker(quiet_s=10.0, channels=CHANNELS)
    feed_all(tracker, staggered(n_sensors=4, alarmed=3, n=40))
    assert tracker.regime_open
    quiet = feed_all(tracker, staggered(n_sensors=4, alarmed=0, at=40.0, n=30))
    closes = [e for e in quiet if e["type"] == "regime_change"]
    assert [(e["event"], e["closed_by"]) for e in closes] == [("close", "quiet")]
    assert not tracker.regime_open
    assert closes[0]["at"] == 39.0 + 10.0 + 10.0  # last flagged window, its alarm quiet, then the fleet quiet


def test_what_a_commit_carries_fits_kafkas_metadata_limit() -> None:
    import json

    channels = tuple(f"channel-with-a-rather-long-name-{i:02d}" for i in range(8))
    tracker = AlarmTracker(quiet_s=10.0, channels=channels, top_channels=8)
    sensors = [f"sensor-{'x' * 100}-{i:03d}" for i in range(40)]
    tracker.update(
        sensors,
        np.zeros(40),
        np.ones(40, bool),
        np.full(40, 2.0),
        np.ones(40),
        np.ones((40, 8)),
        "v000001",
        ["t"] * 40,
        np.zeros(40, int),
        np.arange(40),
    )
    (carried,) = tracker.snapshot().values()
    assert 0 < len(carried) <= 10
    tracker.fleet_drift(at=1.0, model_version="v000001-with-a-long-name")
    metadata = {"v": 1, "rewind_offset": 10**12, "alarms": carried, "regime": tracker.notice_snapshot()}
    assert len(json.dumps(metadata)) < 4096


def test_events_and_carried_state_are_plain_json() -> None:
    import json

    tracker = AlarmTracker(quiet_s=10.0, channels=CHANNELS, regime_policy="suppress")
    events = tracker.fleet_drift(at=100.0, model_version="v1")
    events += feed_all(tracker, fleet_batch(6, {"s2": 30.0}, at=101.0))
    json.dumps(events)  # numpy scalars would raise here (the alerts topic and the commit metadata are JSON)
    json.dumps({f"{t}-{p}": c for (t, p), c in tracker.snapshot().items()})
