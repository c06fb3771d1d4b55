"""Fleet drift watches the median sensor: an anomaly on one sensor is not fleet drift, a regime change is."""

from __future__ import annotations

import numpy as np

from pipeline.drift import DriftMonitor


def stream(monitor: DriftMonitor, errors: np.ndarray) -> list:  # errors [time, sensors]
    events = []
    for t, row in enumerate(errors):
        for s, error in enumerate(row):
            events += monitor.update(f"s{s}", float(t), float(error))
    return events


def test_an_anomaly_on_one_sensor_is_not_fleet_drift() -> None:
    rng = np.random.default_rng(0)
    errors = rng.gamma(4.0, 0.025, size=(3000, 4))
    errors[1000:1120, 2] *= 40  # a two-minute anomaly on one sensor
    events = stream(DriftMonitor("adwin"), errors)
    assert any(e.scope == "sensor" and e.sensor_id == "s2" for e in events)
    assert not [e for e in events if e.scope == "fleet"]


def test_a_new_operating_point_on_every_sensor_is_fleet_drift_soon_after() -> None:
    rng = np.random.default_rng(1)
    errors = rng.gamma(4.0, 0.025, size=(3000, 4))
    errors[2000:] *= 3  # every sensor's error rises at t = 2000
    fleet = [e for e in stream(DriftMonitor("adwin"), errors) if e.scope == "fleet"]
    assert fleet
    assert 2000 <= fleet[0].ts < 2100


def test_a_falling_error_is_not_drift_unless_asked() -> None:
    rng = np.random.default_rng(2)
    errors = rng.gamma(4.0, 0.025, size=(3000, 4))
    errors[:1000] *= 3  # every sensor's error falls at t = 1000 (an episode ended, a calm phase began)

    def fleet_events_after_the_fall(monitor: DriftMonitor) -> list:
        return [e for e in stream(monitor, errors) if e.scope == "fleet" and 1000 <= e.ts < 1300]

    for detector in ("adwin", "kswin"):
        assert not fleet_events_after_the_fall(DriftMonitor(detector)), detector
        assert fleet_events_after_the_fall(DriftMonitor(detector, rising_only=False)), f"{detector}, both ways"
    assert not stream(DriftMonitor("adwin"), errors), "ADWIN sees no other change in this stream"


def test_forgotten_sensors_leave_the_monitor() -> None:
    monitor = DriftMonitor("adwin")
    for i in range(50):
        monitor.update("a", float(i), 0.1)
        monitor.update("b", float(i), 0.1)
    monitor.forget(["a"])
    assert set(monitor._streams) == {"b", "__fleet__"}
    assert set(monitor._latest) == {"b"}


def test_only_a_drift_the_alarms_feel_is_material() -> None:
    rng = np.random.default_rng(3)
    errors = rng.gamma(4.0, 0.025, size=(3000, 4))
    threshold = float(np.quantile(errors[:1000], 0.99))  # as calibrated on normal data
    small, large = errors.copy(), errors.copy()
    small[2000:] *= 1.5  # a real rise, well under the threshold: no alarm feels it
    large[2000:] *= 4.0  # the median sensor now errs well above its threshold
    monitor = DriftMonitor("adwin", min_ratio=1.0)
    (quiet, *_) = [e for e in stream(monitor, small) if e.scope == "fleet"]
    judged = monitor.is_material(quiet, threshold)
    assert judged.recent_mean_ratio is not None
    assert judged.recent_mean_ratio < 1.0
    assert not judged.material
    assert monitor.is_material(quiet, threshold, fleet_alarmed=True).material  # most sensors alarmed: it is
    (loud, *_) = [e for e in stream(DriftMonitor("adwin"), large) if e.scope == "fleet"]
    assert DriftMonitor("adwin").is_material(loud, threshold).material


def test_the_rising_check_matches_adwins_own_mean_before_each_error() -> None:
    """The monitor mirrors ADWIN's window instead of asking it for its mean before every error; across
    rises, falls and River's restart after each detection the events are those of asking it."""
    from river import drift

    rng = np.random.default_rng(5)
    n = 20_000
    level = np.repeat([1.0, 2.0, 0.8, 2.4], n // 4)  # rise, fall, rise
    errors = (rng.gamma(2.0, 0.05, n) * level).tolist()
    asked, detector = [], drift.ADWIN(delta=0.002)
    for i, error in enumerate(errors):
        before = detector.estimation
        detector.update(error)
        if detector.drift_detected and detector.estimation > before:
            asked.append(i)
    monitor = DriftMonitor("adwin", fleet=False)
    found = monitor.update_many(["s"] * n, np.arange(float(n)), np.array(errors))
    assert len(asked) >= 2  # the stream has rises to find (and falls to ignore)
    assert [i for i, _ in found] == asked
