"""Replay buffer, the validation gate, the retraining job's decision log, and one-run-at-a-time."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from jobs.replay import ReplayBuffer
from jobs.retrain import (
    RetrainDecision,
    fine_tune_and_gate,
    learnable_windows,
    normal_windows,
    recalibrate_for_regime,
    retrain_once,
)
from jobs.scheduler import RetrainLock, build_scheduler, request_drift_run, run_exclusive
from models.detector import AnomalyDetector
from models.regimes import window_levels
from models.registry import ModelRegistry
from models.scoring import reconstruction_errors
from models.training import TrainingConfig
from pipeline.config import load_config
from pipeline.simulator import DriftSpec, FleetSpec, simulate_fleet
from pipeline.sinks import ErrorLogSink, ScoredWindows
from pipeline.time_spans import epoch_seconds

SPEC = FleetSpec(sensors=3, rows=1600, anomalies_per_sensor=0, drift=DriftSpec(at_row=800, offset_sd=2.0), seed=5)
CHANNELS = list(SPEC.channels)
FAST = TrainingConfig(epochs=12, batch_size=64, progress=False)


@pytest.fixture(scope="module")
def fleet() -> pd.DataFrame:
    return simulate_fleet(SPEC)


@pytest.fixture(scope="module")
def old_regime_detector(fleet: pd.DataFrame) -> AnomalyDetector:
    segments = [g[CHANNELS].to_numpy()[:800] for _, g in fleet.groupby("sensor_id")]
    return AnomalyDetector.fit(
        segments, window=20, hidden_size=32, latent_size=4, channels=tuple(CHANNELS), training=FAST
    )


def readings_of(fleet: pd.DataFrame, start: int, stop: int) -> pd.DataFrame:
    part = pd.concat([g.iloc[start:stop] for _, g in fleet.groupby("sensor_id")])
    part = part.assign(ts=epoch_seconds(part["timestamp"]))
    return part[["sensor_id", "ts", *CHANNELS]]


def test_reservoir_keeps_a_uniform_sample_and_round_trips(tmp_path: Path) -> None:
    buffer = ReplayBuffer(capacity=500, window=2, n_channels=1, seed=1)
    stream = np.arange(10_000, dtype=np.float32).reshape(-1, 1, 1).repeat(2, axis=1)
    for chunk in np.array_split(stream, 37):
        buffer.add(chunk)
    kept = buffer.windows[:, 0, 0]
    assert len(buffer) == 500
    assert buffer.seen == 10_000
    assert 3500 < kept.mean() < 6500, "early and late windows should be equally likely to stay"
    buffer.save(tmp_path / "replay.npz")
    loaded = ReplayBuffer.load(tmp_path / "replay.npz", window=2, n_channels=1, capacity=500)
    assert np.array_equal(loaded.windows, buffer.windows)
    assert loaded.seen == 10_000
    with pytest.raises(ValueError, match="shape"):
        ReplayBuffer.load(tmp_path / "replay.npz", window=3, n_channels=1, capacity=500)


def log_scored(error_log: Path, ends: np.ndarray, sensors: list[str], error: np.ndarray, anomaly: np.ndarray) -> None:
    """Write what a scorer would have written for these windows to a real error log."""
    n = len(ends)
    sink = ErrorLogSink(error_log, CHANNELS)
    sink.append(
        ScoredWindows(
            sensor_id=sensors,
            window_start=ends - 19,
            window_end=ends,
            error=error,
            channel_error=np.zeros((n, len(CHANNELS))),
            threshold=0.1,
            exceeded=anomaly,
            anomaly=anomaly,
            drift=np.zeros(n, dtype=bool),
            model_version="v000001",
            source_topic=["sensors"] * n,
            source_partition=np.zeros(n, dtype=np.int64),
            source_offset_start=np.arange(n),
            source_offset_end=np.arange(n),
        )
    )
    sink.flush()


def test_retraining_learns_only_from_windows_the_log_judged_normal(fleet: pd.DataFrame, tmp_path: Path) -> None:
    readings = readings_of(fleet, 0, 100)
    windows, ends = normal_windows(readings, CHANNELS, 20)
    assert len(windows) == 3 * 81
    assert learnable_windows(tmp_path, ends.min()) is None, "no error log: nothing to judge by"
    # the scorer has judged all but the newest 10 windows of each sensor; one judged window was flagged
    sensors = [f"sensor-00{i}" for i in range(3) for _ in range(71)]
    judged_ends = np.tile(np.sort(np.unique(ends))[:71], 3)
    error, anomaly = np.full(len(sensors), 0.05), np.zeros(len(sensors), dtype=bool)
    error[5], anomaly[5] = 3.0, True
    log_scored(tmp_path, judged_ends, sensors, error, anomaly)

    keep = learnable_windows(tmp_path, ends.min())
    assert keep is not None
    assert len(keep) == 3 * 71 - 1
    assert ("sensor-000", round(judged_ends[5] * 1000)) not in keep
    learned, learned_ends = normal_windows(readings, CHANNELS, 20, keep)
    assert len(learned) == 3 * 71 - 1, "the flagged window and the 30 the log does not hold yet are left out"
    assert learned_ends.max() == judged_ends.max()


def test_gate_promotes_a_candidate_that_learned_the_new_regime(fleet, old_regime_detector) -> None:
    recent, _ = normal_windows(readings_of(fleet, 900, 1600), CHANNELS, 20)
    replay = ReplayBuffer(5000, 20, len(CHANNELS))
    replay.add(normal_windows(readings_of(fleet, 0, 800), CHANNELS, 20)[0])
    candidate, metrics = fine_tune_and_gate(old_regime_detector, recent, replay, training=FAST, tolerance=0.05)
    assert metrics["outcome"] == "promoted", metrics
    assert candidate is not None
    assert candidate.threshold is not None
    assert metrics["candidate_recent_error"] < 0.8 * metrics["current_recent_error"]
    assert metrics["candidate_replay_error"] <= 1.5 * metrics["current_replay_error"]
    # the buffer's regime and the recent one each keep a threshold, calibrated on their own windows
    assert metrics["regimes_after"] == 2
    assert candidate.regimes is not None
    scale = candidate.scaler.transform_windows
    old_regime = candidate.regimes.assign(window_levels(scale(replay.windows)))
    new_regime = candidate.regimes.assign(window_levels(scale(recent)))
    assert np.bincount(old_regime).argmax() != np.bincount(new_regime).argmax()
    assert (old_regime == np.bincount(old_regime).argmax()).mean() > 0.95
    assert (new_regime == np.bincount(new_regime).argmax()).mean() > 0.95
    # the old regime keeps the threshold it was judged by, scaled by how the candidate's error there moved
    before = old_regime_detector.threshold.value
    kept = candidate.regimes.regimes[np.bincount(old_regime).argmax()].threshold
    assert kept.params["carried_from"] == pytest.approx(before)
    assert kept.value == pytest.approx(before * kept.params["error_ratio"])
    fresh = candidate.regimes.regimes[np.bincount(new_regime).argmax()].threshold
    assert "carried_from" not in fresh.params


def test_first_stage_gives_the_new_operating_point_a_threshold_and_changes_nothing_else(
    fleet, old_regime_detector
) -> None:
    recent, _ = normal_windows(readings_of(fleet, 800, 1000), CHANNELS, 20)  # minutes after the drift
    replay = ReplayBuffer(5000, 20, len(CHANNELS))
    replay.add(normal_windows(readings_of(fleet, 0, 800), CHANNELS, 20)[0])
    candidate, metrics = recalibrate_for_regime(old_regime_detector, recent, replay)
    assert metrics["outcome"] == "promoted", metrics
    assert candidate is not None
    assert candidate.regimes is not None
    assert metrics["regimes_after"] == 2
    before = old_regime_detector.model.state_dict()
    assert all(torch.equal(before[k], v) for k, v in candidate.model.state_dict().items()), "same weights"
    assert candidate.scaler == old_regime_detector.scaler
    scale = candidate.scaler.transform_windows
    old_thresholds = candidate.window_thresholds(scale(replay.windows))
    assert np.median(old_thresholds) == pytest.approx(old_regime_detector.threshold.value)  # judged as before
    # later at the new operating point: flagged nearly everywhere by the old threshold, rarely by its own
    later, _ = normal_windows(readings_of(fleet, 1000, 1600), CHANNELS, 20)
    errors = reconstruction_errors(candidate.model, scale(later)).error
    assert (errors > old_regime_detector.threshold.value).mean() > 0.5
    assert (errors > candidate.window_thresholds(scale(later))).mean() < 0.1


def test_first_stage_never_moves_a_known_regimes_threshold_when_only_some_recent_windows_moved(
    fleet, old_regime_detector
) -> None:
    replay = ReplayBuffer(5000, 20, len(CHANNELS))
    replay.add(normal_windows(readings_of(fleet, 0, 600), CHANNELS, 20)[0])
    same, _ = normal_windows(readings_of(fleet, 600, 800), CHANNELS, 20)  # still the known operating point
    moved, _ = normal_windows(readings_of(fleet, 1000, 1600), CHANNELS, 20)  # the new one
    recent = np.concatenate([same[:150], moved[:100]])  # most recent windows did not move (yet)
    candidate, metrics = recalibrate_for_regime(old_regime_detector, recent, replay)
    assert metrics["outcome"] == "promoted", metrics
    assert candidate is not None
    scale = candidate.scaler.transform_windows
    old_thresholds = candidate.window_thresholds(scale(replay.windows))
    assert np.median(old_thresholds) == pytest.approx(old_regime_detector.threshold.value), "the known regime moved"
    assert np.median(candidate.window_thresholds(scale(moved))) > old_regime_detector.threshold.value


def test_first_stage_is_skipped_where_the_model_knows_the_regime(fleet, old_regime_detector) -> None:
    replay = ReplayBuffer(5000, 20, len(CHANNELS))
    replay.add(normal_windows(readings_of(fleet, 0, 600), CHANNELS, 20)[0])
    same, _ = normal_windows(readings_of(fleet, 600, 800), CHANNELS, 20)
    candidate, metrics = recalibrate_for_regime(old_regime_detector, same, replay)
    assert (candidate, metrics["outcome"]) == (None, "skipped")
    assert "regime the model knows" in metrics["reason"]
    assert recalibrate_for_regime(old_regime_detector, same, None)[1]["outcome"] == "skipped"


def test_forgetting_guard_rejects_a_candidate_that_lost_the_old_regime(fleet, old_regime_detector) -> None:
    recent, _ = normal_windows(readings_of(fleet, 900, 1600), CHANNELS, 20)
    replay = ReplayBuffer(5000, 20, len(CHANNELS))
    replay.add(normal_windows(readings_of(fleet, 0, 800), CHANNELS, 20)[0])
    # trained on recent data only (no replay in the training mix), judged with the default slack
    candidate, metrics = fine_tune_and_gate(old_regime_detector, recent, replay, training=FAST, replay_fraction=0.0)
    assert candidate is None
    assert metrics["outcome"] == "rejected"
    assert "replay buffer" in metrics["reason"]


def test_retrain_job_publishes_promotes_and_logs_its_decision(fleet, old_regime_detector, tmp_path) -> None:
    config = load_config(overrides=[f"data_dir={tmp_path}", "retrain.epochs=12", "retrain.recent_hours=1"])
    registry = ModelRegistry(config.registry_dir)
    first = registry.publish(old_regime_detector, promote=True)
    readings = readings_of(fleet, 900, 1600)
    decision = retrain_once(config, trigger="test", readings=readings, now_s=float(readings["ts"].max()))
    assert decision.outcome == "promoted", decision
    assert registry.current_version() == decision.candidate_version != first
    assert registry.load().metadata["parent_version"] == first
    logged = pd.read_parquet(tmp_path / "error_log" / "retraining")
    assert logged["outcome"].tolist() == ["promoted"]
    assert (tmp_path / "replay" / "buffer.npz").exists()


def test_concurrent_runs_take_turns_through_the_lock(tmp_path: Path) -> None:
    config = load_config(overrides=[f"data_dir={tmp_path}"])
    started = []

    def slow_job(_config, trigger):
        started.append(trigger)
        time.sleep(0.5)
        return RetrainDecision("t", trigger, "skipped", "test", "v000001", None, 0, 0)

    results = []
    threads = [
        threading.Thread(target=lambda t=t: results.append(run_exclusive(config, t, slow_job)))
        for t in ("schedule", "drift")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(started) == 1, "only one run may hold the lock"
    assert sorted(r is None for r in results) == [False, True]
    with RetrainLock(config.data_dir / "retrain.lock").hold() as acquired:
        assert acquired, "the lock is free again once the run ended"


def test_schedule_and_drift_trigger_give_one_run(tmp_path: Path) -> None:
    config = load_config(overrides=[f"data_dir={tmp_path}", "retrain.debounce_s=0.3", "retrain.interval_minutes=60"])
    runs = []

    def job(_config, trigger):
        runs.append(trigger)
        time.sleep(0.3)
        return RetrainDecision("t", trigger, "skipped", "test", "v000001", None, 0, 0)

    scheduler = build_scheduler(config, job)
    scheduler.start()
    try:
        assert request_drift_run(scheduler, config, "adwin on s1", job)
        assert not request_drift_run(scheduler, config, "adwin on s2", job), "events coalesce into the pending run"
        scheduler.remove_job("retrain-on-drift")
        with RetrainLock(config.data_dir / "retrain.lock").hold():
            assert not request_drift_run(scheduler, config, "adwin on s3", job), "and join a run in progress"
        assert request_drift_run(scheduler, config, "adwin on s4", job)
        scheduler.get_job("retrain-scheduled").modify(next_run_time=scheduler.get_job("retrain-on-drift").next_run_time)
        time.sleep(1.5)
    finally:
        scheduler.shutdown(wait=True)
    assert len(runs) == 1, runs


def test_a_drift_run_is_preceded_by_its_first_stage_on_the_readings_since_the_event(tmp_path: Path) -> None:
    overrides = [f"data_dir={tmp_path}", "retrain.debounce_s=30", "retrain.first_stage_after_s=0.2"]
    config = load_config(overrides=overrides)
    runs = []

    def job(_config, trigger, **stage):
        runs.append((trigger, stage))
        outcome = "skipped" if len(runs) == 1 else "promoted"  # still between regimes, then apart
        return RetrainDecision("t", trigger, outcome, "test", "v000001", None, 0, 0)

    scheduler = build_scheduler(config, job)
    scheduler.start()
    try:
        assert request_drift_run(scheduler, config, "adwin on the fleet", job, event_ts=1_767_225_600.0)
        time.sleep(1.2)
        assert scheduler.get_job("retrain-on-drift") is not None, "the fine-tune still waits for its debounce"
        assert scheduler.get_job("recalibrate-on-drift") is None, "promoted: not tried again"
    finally:
        scheduler.shutdown(wait=True)
    first_stage = ("drift, first stage: adwin on the fleet", {"stage": "recalibrate", "since_s": 1_767_225_600.0})
    assert runs == [first_stage, first_stage]  # skipped once, tried again, promoted


def test_a_drift_run_that_fires_while_its_first_stage_runs_waits_for_it(tmp_path: Path) -> None:
    # CI, 2026-12-02: the fine-tune fired while a first stage held the lock, was skipped, and the demo's
    # fleet kept its old weights; it must run once the first stage lets go
    overrides = [f"data_dir={tmp_path}", "retrain.debounce_s=0.6", "retrain.first_stage_after_s=0.2"]
    config = load_config(overrides=overrides)
    runs = []

    def job(_config, trigger, **stage):
        runs.append((trigger, stage.get("stage", "fine_tune")))
        if stage:
            time.sleep(1.0)  # a first stage still running when the fine-tune is due
        return RetrainDecision("t", trigger, "skipped", "test", "v000001", None, 0, 0)

    scheduler = build_scheduler(config, job)
    scheduler.start()
    try:
        assert request_drift_run(scheduler, config, "adwin on the fleet", job, event_ts=1_767_225_600.0)
        time.sleep(2.5)
    finally:
        scheduler.shutdown(wait=True)
    assert [stage for _, stage in runs] == ["recalibrate", "fine_tune"], runs


def test_a_run_skipped_on_the_lock_names_its_holder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = load_config(overrides=[f"data_dir={tmp_path}"])
    lock = RetrainLock(config.data_dir / "retrain.lock")
    with lock.hold("schedule"), caplog.at_level("INFO", logger="jobs.scheduler"):
        assert run_exclusive(config, "drift: adwin", lambda *_a, **_k: None) is None
    assert f"{os.getpid()} " in caplog.text
    assert " schedule holds " in caplog.text
    assert lock.holder() is None


def test_drift_events_delay_a_pending_run_but_only_up_to_a_bound(tmp_path: Path) -> None:
    config = load_config(overrides=[f"data_dir={tmp_path}", "retrain.debounce_s=10", "retrain.debounce_max_s=10.6"])
    scheduler = build_scheduler(config)
    scheduler.start()
    try:
        assert request_drift_run(scheduler, config, "adwin on the fleet")
        first = scheduler.get_job("retrain-on-drift").next_run_time
        time.sleep(0.4)
        assert not request_drift_run(scheduler, config, "adwin on the fleet, still rising")
        moved = scheduler.get_job("retrain-on-drift").next_run_time
        assert 0.3 < (moved - first).total_seconds() < 0.6, "the run waits debounce_s after the latest event"
        time.sleep(0.4)
        assert not request_drift_run(scheduler, config, "adwin on the fleet, rising again")
        bounded = scheduler.get_job("retrain-on-drift").next_run_time
        assert abs((bounded - first).total_seconds() - 0.6) < 0.05, "but no later than debounce_max_s"
    finally:
        scheduler.shutdown(wait=False)
