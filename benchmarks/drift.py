"""The drift scenario: a simulated fleet with labelled anomalies moves to a new operating point (abruptly or
gradually); the scorer streams it, River detects the drift, retraining runs in the background and the
scorer hot-swaps the new model. Which drift asks for a run, and when it starts, is the product's
policy (:class:`jobs.drift_policy.DriftRetrainPolicy`, as the scheduler and the demo use it) on the
plant's clock: every fleet-wide drift asks for a run and events during a run join it, so a retrained
model whose own error rises again (conditions its recent window did not cover) is retrained once
more; and a run starts ``retrain.debounce_s = recent_s`` of stream after the *last* event (at most
``debounce_max_s = 2 * recent_s`` after the first), so it learns the settled plant, not a ramp. A
material false fleet-wide drift before the injected one asks for a run too, as it would in the product
(column ``runs pre``; material: see :class:`pipeline.drift.DriftMonitor`), and the run is preceded by
the product's first stage (``retrain.first_stage_after_s`` of plant time after the event; a threshold
of its own for the new operating point, :func:`jobs.retrain.recalibrate_for_regime`). "After the swap"
means windows scored by a model fine-tuned on data mostly after the drift
(:func:`pipeline.alarm_summary.learned_after_drift`; a first stage's model is not one), "before"
everything else after the drift.
Three policies side by side: never retrain, retrain on the recent window only, retrain on the recent
window plus the replay buffer.

Everything runs in-process (an in-memory, rate-paced source stands in for the topic, 100 plant seconds
per wall second; while a candidate is fine-tuned the plant runs at its real pace, one reading per sensor
per second, so the seconds of CPU that fine-tuning takes are seconds of plant time as they would be
live, not minutes; the candidate is published once batches flow at full pace again, so the swap pause
is measured under full flow), so the figures measure the pipeline, not a broker: detection delay, false drift
alarms per 10^5 windows before the drift, anomaly F1 / false-alarm rate after the drift before and after
the swap, old-regime F1 after retraining (forgetting; also under the initial threshold, which separates
what the new weights forgot from what the recalibrated threshold moved), swap pause (time between the
last batch on the old model and the first on the new one), lost or duplicated windows, and what an
operator received between the drift and the first retrained model
(:func:`pipeline.alarm_summary.alarms_after_drift`, as the demo reports it): alarm episodes sent,
their plant minutes, and the share of labelled anomalies after the drift that got an alarm; beside them,
the alarms (and false alarms) the same span would have held at the rate the initial model sent them
before the drift (from the end of its training rows), and the recall there: the detector's own base
rate, which no drift handling removes.

Forgetting is measured on a held-out old-regime fleet (:func:`held_out_old_regime`: unseen units of the
same machine design, 64 labelled anomalies), not on the stream's few old-regime episodes. With several
``seeds`` every figure is reported per seed and as mean (min..max); the headline takes the mean per
scenario and the worst scenario.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.evaluation import point_metrics
from jobs.drift_policy import DriftRetrainPolicy
from jobs.replay import ReplayBuffer
from jobs.retrain import fine_tune_and_gate, learnable_windows, normal_windows, recalibrate_for_regime
from models.detector import AnomalyDetector
from models.registry import ModelRegistry
from models.training import TrainingConfig
from pipeline.alarm_summary import alarms_after_drift, learned_after_drift
from pipeline.config import load_config
from pipeline.messages import encode_readings
from pipeline.producer import batch_messages
from pipeline.service import build_loop
from pipeline.simulator import DriftSpec, FleetSpec, simulate_fleet, simulate_sensor
from pipeline.sinks import DeadLetterFile
from pipeline.sources import PacedSource, Record
from pipeline.time_spans import epoch_seconds

log = logging.getLogger(__name__)

POLICIES = ("never", "recent", "recent+replay")


@dataclass
class PolicyResult:
    seed: int
    policy: str
    scenario: str
    detection_delay_s: float | None
    false_drift_alarms_per_1e5: float
    pre_drift_far: float
    post_drift_far_before_swap: float | None
    post_drift_f1_before_swap: float | None
    post_drift_far_after_swap: float | None
    post_drift_f1_after_swap: float | None
    old_regime_f1_before: float
    old_regime_f1_after: float
    old_regime_f1_after_weights_only: float  # the retrained weights under the initial threshold
    swap_pause_ms: float | None
    lost_windows: int
    duplicate_windows: int
    retrain_outcome: str
    retrains_before_drift: int = 0  # runs asked for by a (false) fleet drift before the injected one
    alarm_episodes_after_drift: int | None = None  # alarms sent between the drift and the first new model
    alarm_minutes_after_drift: float | None = None  # plant minutes of sent alarms over that span
    post_drift_recall: float | None = None  # labelled anomalies after the drift that got an alarm
    false_alarm_episodes_after_drift: int | None = None  # of those alarms, the ones on no labelled anomaly
    false_alarm_minutes_after_drift: float | None = None
    # the reference: alarms (and false ones) the same model sent before the drift (after its training
    # rows), scaled to the span above: what that span would have held with no drift at all; and the
    # share of labelled anomalies alarmed there (recall with no drift)
    alarm_episodes_at_pre_drift_rate: float | None = None
    false_alarm_episodes_at_pre_drift_rate: float | None = None
    pre_drift_recall: float | None = None

    @property
    def far_ratio_after_swap(self) -> float | None:
        if self.post_drift_far_after_swap is None or self.pre_drift_far == 0:
            return None
        return self.post_drift_far_after_swap / self.pre_drift_far

    @property
    def old_regime_f1_drop_rel(self) -> float:
        if self.old_regime_f1_before == 0:
            return 0.0
        return (self.old_regime_f1_before - self.old_regime_f1_after) / self.old_regime_f1_before

    @property
    def old_regime_f1_drop_rel_weights_only(self) -> float:
        """The drop with the initial threshold kept: what the new weights alone forgot."""
        if self.old_regime_f1_before == 0:
            return 0.0
        return (self.old_regime_f1_before - self.old_regime_f1_after_weights_only) / self.old_regime_f1_before


@dataclass(frozen=True)
class DriftScenario:
    name: str
    drift: DriftSpec
    sensors: int = 4
    rows: int = 9000
    train_rows: int = 1200
    anomalies_per_sensor: int = 6
    seed: int = 21


SCENARIOS = (
    DriftScenario("abrupt", DriftSpec(at_row=2700, kind="abrupt", offset_sd=1.5, gain_change=0.3)),
    DriftScenario("gradual", DriftSpec(at_row=2400, kind="gradual", ramp_rows=600, offset_sd=1.5, gain_change=0.3)),
)


def _window_labels(fleet: pd.DataFrame, log_frame: pd.DataFrame) -> np.ndarray:
    labels = fleet.set_index(["sensor_id", "timestamp"])["anomaly"]
    keys = list(zip(log_frame["sensor_id"], log_frame["window_end"], strict=True))
    return labels.loc[keys].to_numpy()


def held_out_old_regime(scenario: DriftScenario, sensors: int = 8, rows: int = 2400) -> pd.DataFrame:
    """The forgetting test set: unseen units of the same machine design, old regime only, many anomalies.

    Same ``seed`` as the scenario, so the same design and operating point; sensor indices 100+ give
    other units, noise and anomalies (8 x 8 = 64 labelled episodes instead of the ~6 the stream's
    old-regime stretch holds), so the old-regime F1 before and after retraining is not decided by a
    handful of episodes.
    """
    spec = FleetSpec(
        sensors=sensors,
        rows=rows,
        anomalies_per_sensor=8,
        normal_prefix_rows=60,
        seed=scenario.seed,
        sensor_prefix="held-out",
    )
    return pd.concat([simulate_sensor(spec, 100 + i) for i in range(sensors)], ignore_index=True)


def _regime_f1(
    detector: AnomalyDetector, fleet: pd.DataFrame, channels: list[str], start: int = 0, stop: int | None = None
) -> float:
    truth, flags = [], []
    for _, group in fleet.groupby("sensor_id"):
        part = group.iloc[start:stop]
        detection = detector.predict(part[channels].to_numpy())
        truth.append(part["anomaly"].to_numpy()[detection.window_end_row])
        flags.append(detection.alarm)
    return point_metrics(np.concatenate(truth), np.concatenate(flags)).f1


def run_policy(
    scenario: DriftScenario,
    policy: str,
    *,
    rate: float = 400.0,
    recent_s: float = 900.0,
    epochs: int = 8,
    work: Path | None = None,
    first_stage: bool = True,
) -> PolicyResult:
    work = work or Path(tempfile.mkdtemp(prefix=f"drift-{policy}-"))
    spec = FleetSpec(
        sensors=scenario.sensors,
        rows=scenario.rows,
        anomalies_per_sensor=scenario.anomalies_per_sensor,
        normal_prefix_rows=scenario.train_rows,
        drift=scenario.drift,
        seed=scenario.seed,
    )
    fleet = simulate_fleet(spec)
    channels = list(spec.channels)
    training = TrainingConfig(epochs=40, batch_size=64, progress=False)
    train_segments = [g[channels].to_numpy()[: scenario.train_rows] for _, g in fleet.groupby("sensor_id")]
    initial = AnomalyDetector.fit(
        train_segments, window=30, hidden_size=32, latent_size=4, channels=tuple(channels), training=training
    )
    registry = ModelRegistry(work / "registry")
    registry.publish(initial, promote=True)
    config = load_config(
        overrides=[
            f"data_dir={work}",
            f"model.registry_dir={work / 'registry'}",
            "metrics.port=0",
            "model.device=cpu",
            "model.watch_interval_s=0.1",
            "sinks.roll_seconds=0.5",
            "kafka.max_poll_records=500",
            f"retrain.debounce_s={recent_s}",
            f"retrain.debounce_max_s={2 * recent_s}",
        ]
    )
    drift_policy = DriftRetrainPolicy.from_settings(config.retrain)
    first_stage_s = config.retrain.first_stage_after_s if first_stage else None
    records = [
        Record("stream", 0, offset, key, encode_readings(readings))
        for offset, (key, readings) in enumerate(batch_messages(fleet, channels))
    ]
    source = PacedSource(records, rate)
    real_time_rate = float(scenario.sensors)  # records per wall second when one wall second is one plant second

    assert spec.drift is not None, "a drift scenario's fleet has a drift"
    drift = spec.drift
    fleet["ts"] = epoch_seconds(fleet["timestamp"])
    drift_ts = float(fleet["ts"].iloc[0]) + drift.at_row
    replay = ReplayBuffer(20_000, 30, len(channels))  # holds the initial model's training windows
    replay.add(normal_windows(fleet[fleet.groupby("sensor_id").cumcount() < scenario.train_rows], channels, 30)[0])
    state: dict[str, Any] = {
        "detected_ts": None, "last_event_ts": 0.0, "outcomes": [], "worker": None, "runs_before_drift": 0
    }  # fmt: skip
    versions_after_drift: set[str] = set()

    def wait_for_stream(reached: Any) -> None:
        """Wait until ``reached(plant time scored so far)`` holds, or until the stream has all been served."""
        while source.position < len(records) and not reached(loop.latest_event_ts):
            time.sleep(0.01)

    def windows_between(since_ts: float, now_ts: float) -> np.ndarray:
        """The windows of the stream in ``(since_ts, now_ts]`` that retraining may learn from."""
        frame = fleet[(fleet["ts"] > since_ts) & (fleet["ts"] <= now_ts)]
        return normal_windows(frame, channels, 30, learnable_windows(work / "error_log", since_ts))[0]

    def publish_at_full_pace(candidate: AnomalyDetector, reason: str) -> str:
        """Publish once batches flow at full pace again: at the real pace the loop scores a batch of one
        reading every ~250 ms, and a swap landing there measured that idle gap as the swap pause."""
        source.set_rate(rate)
        resumed_ts = loop.latest_event_ts
        wait_for_stream(lambda ts: ts >= resumed_ts + 5)
        return registry.publish(candidate, promote=True, reason=reason)

    def run_first_stage(since_ts: float) -> bool:
        """The product's first stage: the serving weights get a threshold of their own for the windows since
        the event (:func:`jobs.retrain.recalibrate_for_regime`); its seconds of CPU are seconds of plant time,
        as in the fine-tune below."""
        source.set_rate(real_time_rate)
        windows = windows_between(since_ts, loop.latest_event_ts)
        candidate, metrics = recalibrate_for_regime(registry.load().detector, windows, replay, min_windows=100)
        outcome = f"first stage {metrics['outcome']}" + ("" if candidate else f": {metrics['reason']}")
        if not state["outcomes"] or state["outcomes"][-1] != outcome:
            state["outcomes"].append(outcome)
        if candidate is None:
            source.set_rate(rate)
            return False
        publish_at_full_pace(candidate, f"drift benchmark, first stage ({policy})")
        return True

    def retrain_in_background(trigger_ts: float) -> None:
        # the first stage, retried every first_stage_s while the plant is still between regimes, until the run
        at = trigger_ts + (first_stage_s or float("inf"))
        while at < drift_policy.run_at(trigger_ts, state["last_event_ts"]) and source.position < len(records):
            wait_for_stream(lambda ts, at=at: ts >= at)
            if run_first_stage(trigger_ts):
                break
            at = loop.latest_event_ts + (first_stage_s or float("inf"))
        # the run starts when the policy says, on the plant's clock (or when the stream ends)
        wait_for_stream(lambda ts: ts >= drift_policy.run_at(trigger_ts, state["last_event_ts"]))
        # fine-tuning takes seconds of CPU; at the paced stream's speed that would be minutes of plant
        # time served by the old model, so the plant runs at its real pace (one reading per sensor per
        # second) until the candidate is published, and at full pace again for the swap
        source.set_rate(real_time_rate)
        now_ts = loop.latest_event_ts
        recent = windows_between(now_ts - recent_s, now_ts)
        current = registry.load().detector
        candidate, metrics = fine_tune_and_gate(
            current,
            recent,
            replay if policy == "recent+replay" else None,
            training=replace(training, epochs=epochs),
            replay_fraction=1.0 if policy == "recent+replay" else 0.0,
            tolerance=0.05,
            min_windows=100,
        )
        promoted = metrics["outcome"] == "promoted"
        state["outcomes"].append(metrics["outcome"] if promoted else f"{metrics['outcome']}: {metrics['reason']}")
        if candidate is None:
            source.set_rate(rate)
            return
        version = publish_at_full_pace(candidate, f"drift benchmark ({policy})")
        if learned_after_drift(now_ts, recent_s, drift_ts):
            versions_after_drift.add(version)

    class DriftTrigger:
        """The loop's events publisher: drift the policy wants starts a run; events while one runs join it."""

        def publish(self, event: dict[str, Any]) -> None:
            if not drift_policy.wants_run(event):
                return
            if state["detected_ts"] is None and event["ts"] >= drift_ts:
                state["detected_ts"] = event["ts"]
            state["last_event_ts"] = event["ts"]
            busy = state["worker"] is not None and state["worker"].is_alive()
            if policy != "never" and not busy:
                state["runs_before_drift"] += int(event["ts"] < drift_ts)
                state["worker"] = threading.Thread(target=retrain_in_background, args=(event["ts"],), daemon=True)
                state["worker"].start()

        def flush(self) -> None:
            pass

    loop = build_loop(config, DeadLetterFile(work / "dead.jsonl"), events=DriftTrigger())
    loop.run(source, idle_timeout_s=3.0)
    if state["worker"] is not None:
        state["worker"].join()

    frame = pd.read_parquet(work / "error_log" / "errors")
    frame["label"] = _window_labels(fleet, frame)
    end_ts = epoch_seconds(frame["window_end"])
    pre = frame[end_ts < drift_ts]
    post = frame[end_ts >= drift_ts + (drift.ramp_rows if drift.kind == "gradual" else 0)]
    # "old": models trained before the drift (the initial one, or one retrained on a false fleet drift
    # before it, as the product's policy does); "new": models retrained on data after the drift
    retrained_after_drift = post["model_version"].isin(versions_after_drift)
    post_old, post_new = post[~retrained_after_drift], post[retrained_after_drift]

    def far(rows: pd.DataFrame) -> float | None:
        return point_metrics(rows["label"], rows["anomaly"]).far / 100 if len(rows) else None

    def f1(rows: pd.DataFrame) -> float | None:
        return point_metrics(rows["label"], rows["anomaly"]).f1 if len(rows) else None

    events_dir = work / "error_log" / "drift_events"
    false_alarms = 0
    if events_dir.exists():
        drift_events = pd.read_parquet(events_dir)
        event_ts = epoch_seconds(drift_events["ts"])
        false_alarms = int((event_ts < drift_ts).sum())
    keys = list(zip(frame["sensor_id"], frame["window_end"], strict=True))
    expected = sum(max(0, len(g) - 29) for _, g in fleet.groupby("sensor_id"))
    final = registry.load().detector
    weights_only = copy.copy(final)
    weights_only.threshold, weights_only.regimes = initial.threshold, None
    held_out = held_out_old_regime(scenario)
    received = alarms_after_drift(
        config.error_log_dir / "alarms", fleet, frame, pd.Timestamp(drift_ts, unit="s", tz="UTC"),
        versions_after_drift, initial.window,
    )  # fmt: skip
    train_end = pd.Timestamp(float(fleet["ts"].iloc[0]) + scenario.train_rows, unit="s", tz="UTC")
    before = alarms_after_drift(  # the fleet and the log up to the drift: its anomalies, its alarms
        config.error_log_dir / "alarms", fleet[fleet["ts"] < drift_ts], frame[end_ts < drift_ts], train_end, set(),
        initial.window,
    )  # fmt: skip
    per_span = received["span_minutes"] / max(before["span_minutes"], 1e-9)
    return PolicyResult(
        seed=scenario.seed,
        policy=policy,
        scenario=scenario.name,
        detection_delay_s=(state["detected_ts"] - drift_ts) if state["detected_ts"] is not None else None,
        false_drift_alarms_per_1e5=1e5 * false_alarms / max(len(pre), 1),
        pre_drift_far=far(pre) or 0.0,
        post_drift_far_before_swap=far(post_old),
        post_drift_f1_before_swap=f1(post_old),
        post_drift_far_after_swap=far(post_new),
        post_drift_f1_after_swap=f1(post_new),
        old_regime_f1_before=_regime_f1(initial, held_out, channels),
        old_regime_f1_after=_regime_f1(final, held_out, channels),
        old_regime_f1_after_weights_only=_regime_f1(weights_only, held_out, channels),
        swap_pause_ms=loop.stats.swap_pause_ms,
        lost_windows=max(0, expected - len(set(keys))),
        duplicate_windows=len(keys) - len(set(keys)),
        retrain_outcome="; ".join(state["outcomes"]) or "not triggered",
        retrains_before_drift=state["runs_before_drift"],
        alarm_episodes_after_drift=received["alarm_episodes_after_drift"],
        alarm_minutes_after_drift=received["alarm_minutes_after_drift"],
        post_drift_recall=received["post_drift_recall"],
        false_alarm_episodes_after_drift=received["false_alarm_episodes_after_drift"],
        false_alarm_minutes_after_drift=received["false_alarm_minutes_after_drift"],
        alarm_episodes_at_pre_drift_rate=before["alarm_episodes_after_drift"] * per_span,
        false_alarm_episodes_at_pre_drift_rate=before["false_alarm_episodes_after_drift"] * per_span,
        pre_drift_recall=before["post_drift_recall"],
    )


def format_results(results: list[PolicyResult]) -> str:
    def cell(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    header = (
        "scenario",
        "policy",
        "delay s",
        "false/1e5",
        "FAR pre",
        "FAR post old",
        "FAR post new",
        "FAR ratio",
        "F1 post old",
        "F1 post new",
        "old F1 drop",
        "weights only",
        "pause ms",
        "lost",
        "dup",
        "runs pre",
        "alarms",
        "alarm min",
        "false (min)",
        "at pre-drift rate: alarms (false)",
        "recall pre",
        "recall",
        "retrain",
    )
    rows = [header]
    for r in results:
        rows.append(
            (
                f"{r.scenario}/{r.seed}",
                r.policy,
                cell(r.detection_delay_s, ".0f"),
                cell(r.false_drift_alarms_per_1e5, ".0f"),
                cell(r.pre_drift_far, ".3f"),
                cell(r.post_drift_far_before_swap, ".3f"),
                cell(r.post_drift_far_after_swap, ".3f"),
                cell(r.far_ratio_after_swap, ".2f"),
                cell(r.post_drift_f1_before_swap, ".3f"),
                cell(r.post_drift_f1_after_swap, ".3f"),
                cell(100 * r.old_regime_f1_drop_rel, ".1f") + " %",
                cell(100 * r.old_regime_f1_drop_rel_weights_only, ".1f") + " %",
                cell(r.swap_pause_ms, ".1f"),
                str(r.lost_windows),
                str(r.duplicate_windows),
                str(r.retrains_before_drift),
                cell(r.alarm_episodes_after_drift, "d"),
                cell(r.alarm_minutes_after_drift, ".1f"),
                f"{cell(r.false_alarm_episodes_after_drift, 'd')} ({cell(r.false_alarm_minutes_after_drift, '.1f')})",
                f"{cell(r.alarm_episodes_at_pre_drift_rate, '.1f')} "
                f"({cell(r.false_alarm_episodes_at_pre_drift_rate, '.1f')})",
                cell(r.pre_drift_recall, ".2f"),
                cell(r.post_drift_recall, ".2f"),
                r.retrain_outcome,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += ["", *summary_table(results)]
    lines.append(
        "targets: FAR ratio <= 1.5 after the swap; old-regime F1 drop < 5 % with replay; "
        "swap pause < 100 ms on CPU; zero lost or duplicated windows; between the drift and the first "
        "retrained model (alarms, alarm min: plant minutes) <= 2 alarms and <= 5 alarm-minutes per benign drift"
    )
    return "\n".join(lines)


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{np.mean(values):.2f} ({min(values):.2f}..{max(values):.2f})"


def summary_table(results: list[PolicyResult]) -> list[str]:
    """Per scenario and policy, over seeds: mean (min..max) of the judged figures."""
    lines = [
        f"{'scenario':9s} {'policy':14s} {'seeds':>5s}  {'FAR ratio after swap':24s} {'old-regime F1 drop %':24s} "
        f"{'  with initial threshold':24s} {'F1 post-drift after swap':24s} {'max pause ms':>12s}"
    ]
    keys = sorted({(r.scenario, r.policy) for r in results}, key=lambda k: (k[0], POLICIES.index(k[1])))
    for scenario, policy in keys:
        group = [r for r in results if (r.scenario, r.policy) == (scenario, policy)]
        ratios = [r.far_ratio_after_swap for r in group if r.far_ratio_after_swap is not None]
        drops = [100 * r.old_regime_f1_drop_rel for r in group] if policy != "never" else []
        weight_drops = [100 * r.old_regime_f1_drop_rel_weights_only for r in group] if policy != "never" else []
        f1s = [r.post_drift_f1_after_swap for r in group if r.post_drift_f1_after_swap is not None]
        pauses = [r.swap_pause_ms for r in group if r.swap_pause_ms is not None]
        lines.append(
            f"{scenario:9s} {policy:14s} {len(group):5d}  {_spread(ratios):24s} {_spread(drops):24s} "
            f"{_spread(weight_drops):24s} {_spread(f1s):24s} {max(pauses) if pauses else float('nan'):12.1f}"
        )
    return lines


def run_benchmark(
    policies: tuple[str, ...] = POLICIES,
    scenarios: tuple[DriftScenario, ...] = SCENARIOS,
    on_result: Any = None,
    seeds: tuple[int, ...] = (21,),
    first_stage: bool = True,
) -> list[PolicyResult]:
    results = []
    for seed in seeds:
        for scenario in scenarios:
            for policy in policies:
                result = run_policy(replace(scenario, seed=seed), policy, first_stage=first_stage)
                results.append(result)
                if on_result is not None:
                    on_result(result)
    return results


def headline(results: list[PolicyResult]) -> dict[str, float | int | None]:
    """The replay policy's figures (the product's default): mean over seeds, worst scenario; ``*_worst_run``
    the worst single run; ``old_regime_f1_drop_rel_recent_only`` the recent-only policy's, for comparison.

    >>> run = dict(seed=21, detection_delay_s=16.0, false_drift_alarms_per_1e5=0.0, pre_drift_far=0.02,
    ...            post_drift_far_before_swap=1.0, post_drift_f1_before_swap=0.1, post_drift_f1_after_swap=0.5,
    ...            old_regime_f1_before=0.8, swap_pause_ms=10.0, lost_windows=0, duplicate_windows=0,
    ...            retrain_outcome="promoted")
    >>> results = [
    ...     PolicyResult(**run, policy="recent+replay", scenario="abrupt", post_drift_far_after_swap=0.01,
    ...                  old_regime_f1_after=0.76, old_regime_f1_after_weights_only=0.8),
    ...     PolicyResult(**run, policy="recent+replay", scenario="abrupt", post_drift_far_after_swap=0.03,
    ...                  old_regime_f1_after=0.8, old_regime_f1_after_weights_only=0.8),
    ...     PolicyResult(**run, policy="recent", scenario="abrupt", post_drift_far_after_swap=0.01,
    ...                  old_regime_f1_after=0.6, old_regime_f1_after_weights_only=0.6),
    ... ]
    >>> figures = headline(results)
    >>> figures["far_ratio_after_swap"], figures["far_ratio_after_swap_worst_run"]
    (1.0, 1.5)
    >>> figures["old_regime_f1_drop_rel"], figures["old_regime_f1_drop_rel_worst_run"]
    (0.025, 0.05)
    >>> figures["old_regime_f1_drop_rel_recent_only"]
    0.25
    """
    replay = [r for r in results if r.policy == "recent+replay"]
    recent = [r for r in results if r.policy == "recent"]
    pauses = [r.swap_pause_ms for r in replay if r.swap_pause_ms is not None]

    def worst_mean(value: Any, runs: list[PolicyResult] = replay) -> float | None:
        means = []
        for scenario in sorted({r.scenario for r in runs}):
            values = [value(r) for r in runs if r.scenario == scenario and value(r) is not None]
            if values:
                means.append(float(np.mean(values)))
        return max(means) if means else None

    def worst_run(value: Any) -> float | None:
        values = [value(r) for r in replay if value(r) is not None]
        return float(max(values)) if values else None

    def rounded(value: float | None, digits: int) -> float | None:
        return round(value, digits) if value is not None else None

    def ratio(r: PolicyResult) -> float | None:
        return r.far_ratio_after_swap

    def drop(r: PolicyResult) -> float:
        return r.old_regime_f1_drop_rel

    def worst_low(value: Any) -> float | None:  # for figures where lower is worse
        negated = worst_mean(lambda r: None if value(r) is None else -value(r))
        return None if negated is None else -negated

    return {
        "far_ratio_after_swap": rounded(worst_mean(ratio), 3),
        "far_ratio_after_swap_worst_run": rounded(worst_run(ratio), 3),
        "old_regime_f1_drop_rel": rounded(worst_mean(drop), 4),
        "old_regime_f1_drop_rel_worst_run": rounded(worst_run(drop), 4),
        "old_regime_f1_drop_rel_weights_only": rounded(worst_mean(lambda r: r.old_regime_f1_drop_rel_weights_only), 4),
        "old_regime_f1_drop_rel_recent_only": rounded(worst_mean(drop, recent), 4),
        "seeds": len({r.seed for r in results}),
        "swap_pause_ms": rounded(max(pauses, default=None), 2),
        "lost_windows": sum(r.lost_windows for r in results),
        "duplicate_windows": sum(r.duplicate_windows for r in results),
        "retrains_before_drift": sum(r.retrains_before_drift for r in results),
        "detection_delay_s": max((r.detection_delay_s or 0) for r in replay) if replay else None,
        "alarm_episodes_per_benign_drift": rounded(worst_mean(lambda r: r.alarm_episodes_after_drift), 2),
        "alarm_minutes_after_drift": rounded(worst_mean(lambda r: r.alarm_minutes_after_drift), 2),
        "post_drift_recall": rounded(worst_low(lambda r: r.post_drift_recall), 3),
        "false_alarm_episodes_per_benign_drift": rounded(worst_mean(lambda r: r.false_alarm_episodes_after_drift), 2),
        "false_alarm_minutes_after_drift": rounded(worst_mean(lambda r: r.false_alarm_minutes_after_drift), 2),
        "alarm_episodes_at_pre_drift_rate": rounded(worst_mean(lambda r: r.alarm_episodes_at_pre_drift_rate), 2),
        "false_alarm_episodes_at_pre_drift_rate": rounded(
            worst_mean(lambda r: r.false_alarm_episodes_at_pre_drift_rate), 2
        ),
        "pre_drift_recall": rounded(worst_low(lambda r: r.pre_drift_recall), 3),
    }


if __name__ == "__main__":  # `python benchmarks/drift.py ...` is `driftline benchmark drift ...`
    import sys

    from pipeline.cli import cli

    cli(["benchmark", "drift", *sys.argv[1:]], prog_name="benchmarks/drift.py")
