"""The retraining job: fine-tune the current model on recent normal windows plus a replay buffer, gate
the candidate, publish and promote it.

**Recent data comes from the sensor topic itself**, read by time range (``offsets_for_times``): the
topic is the system of record the scorer consumed, so retraining needs no second copy of raw data and
sees exactly what was scored. Only windows the error log holds are learned from (what the scorer has
not judged yet may be an anomaly), less those it flagged anomalous.

**Gate.** The recent windows are split in time: the oldest 60 % train, the next 20 % drive early
stopping, the newest 20 % are the *held-out recent slice*; the replay buffer is split 80/20 the same
way. The candidate is promoted only if its mean reconstruction error is no worse than the current
model's by more than ``tolerance`` (relative) on the held-out recent slice *and* by more than
``replay_tolerance`` on the held-out replay windows (the catastrophic-forgetting guard). The second bound
is looser on purpose: one model that covers an old and a new regime cannot match a specialist of the
old one (fine-tuning with replay raised old-regime error 1.1-1.4x in our tests), while forgetting is
catastrophic (recent-only fine-tuning raised it 30x). Fine-tuning also *distils*: besides reconstructing
the replayed windows, the candidate is pulled towards the current model's reconstructions of them
(``distill_weight``, :class:`models.training.Distillation`), which kept the worst old-regime F1 loss of
the retrained weights lower offline. The threshold is recalibrated with the current model's
rule on the candidate's errors over held-out normal windows; when the recent windows lie in another
operating regime than the replay buffer's, every regime gets its own threshold from its own held-out
windows (:mod:`models.regimes`): the candidate reconstructs the regimes unequally well, and one
threshold over both was set by the worse one. A regime the recent windows do not fall in keeps the
threshold the current model judged it by, scaled by the candidate's median error ratio on its held-out
replay windows (:meth:`models.regimes.Regimes.carry_over`): re-estimating its tail quantile from the
replay slice moved it by up to 2x where the model had not changed. Every decision is a row in
``<error log>/retraining/`` (Parquet).

**First stage** (:func:`recalibrate_for_regime`, ``stage="recalibrate"``): minutes after a fleet-wide
drift, long before the plant has settled for a fine-tune, the same weights and scaler get a threshold
of their own for the new operating point: its windows (since the drift) become a regime of the model
(:mod:`models.regimes`) whose threshold is the one it was judged by, scaled by how much higher the
model's median error is there, and every known regime keeps the threshold it was judged by. Seconds
of CPU instead of a training run; nothing is forgotten (the weights do not change); the full
fine-tune follows at the debounce and starts from the same weights.
"""

from __future__ import annotations

import copy
import logging
import time
import uuid
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from jobs.replay import ReplayBuffer
from models.detector import AnomalyDetector
from models.regimes import Regimes, fit_regimes, window_levels
from models.registry import ModelRegistry
from models.scoring import reconstruction_errors
from models.threshold import Threshold, ThresholdRule, make_rule
from models.training import Distillation, TrainingConfig, train_autoencoder
from pipeline.config import DriftlineConfig, KafkaSettings
from pipeline.messages import decode_message
from pipeline.sinks import write_parquet_atomically
from pipeline.windows import WindowAssembler

log = logging.getLogger(__name__)

RETRAINING_SCHEMA_VERSION = 2  # 2 added regimes_after


@dataclass(frozen=True)
class RetrainDecision:
    """One run of the job: what it compared, what it decided, and why."""

    at: str
    trigger: str
    outcome: str  # promoted | rejected | skipped
    reason: str
    current_version: str
    candidate_version: str | None
    recent_windows: int
    replay_windows: int
    current_recent_error: float | None = None
    candidate_recent_error: float | None = None
    current_replay_error: float | None = None
    candidate_replay_error: float | None = None
    threshold_before: float | None = None
    threshold_after: float | None = None  # over every regime; see regimes_after
    seconds: float = 0.0
    regimes_after: int | None = None  # regimes the candidate judges windows by, each with its threshold

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_recent_readings(
    settings: KafkaSettings, channels: Sequence[str], since_s: float, until_s: float | None = None
) -> pd.DataFrame:
    """Readings on the sensor topics with Kafka timestamps in ``[since_s, until_s]`` (decoded, valid only)."""
    from kafka import TopicPartition

    from pipeline.kafka_clients import make_consumer

    consumer = make_consumer(settings, group_id=None)
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in settings.topics
            for p in sorted(consumer.partitions_for_topic(topic) or [])
        ]
        consumer.assign(partitions)
        starts = consumer.offsets_for_times({tp: int(since_s * 1000) for tp in partitions})
        ends = consumer.end_offsets(partitions)
        active = {}
        for tp in partitions:
            start = starts.get(tp)
            if start is not None and start.offset < ends[tp]:
                consumer.seek(tp, start.offset)
                active[tp] = ends[tp]
            else:
                consumer.pause(tp)
        rows: list[tuple[str, float, np.ndarray]] = []
        until_ms = int(until_s * 1000) if until_s is not None else None
        while active:
            for tp, records in consumer.poll(timeout_ms=1000).items():
                for record in records:
                    if record.offset >= active.get(tp, -1):
                        continue
                    if until_ms is None or record.timestamp <= until_ms:
                        decoded = decode_message(record.value, record.key, channels)
                        rows.extend((r.sensor_id, r.ts, r.values) for r in decoded.readings)
            # every partition, not only those that returned records: a range ending in control records
            # (transaction markers) reaches its end offset without yielding a record for it
            for tp in [tp for tp, end in active.items() if consumer.position(tp) >= end]:
                active.pop(tp)
                consumer.pause(tp)
    finally:
        consumer.close()
    frame = pd.DataFrame({"sensor_id": [r[0] for r in rows], "ts": [r[1] for r in rows]})
    values = np.stack([r[2] for r in rows]) if rows else np.empty((0, len(channels)))
    for i, channel in enumerate(channels):
        frame[channel] = values[:, i]
    return frame


def learnable_windows(
    error_log_dir: Path, since_s: float, outlier_quantile: float = 0.9
) -> set[tuple[str, int]] | None:
    """(sensor_id, window end in ms) of the recent windows retraining may learn from; None: no verdicts.

    Only windows the error log holds count. A window the scorer has not judged yet (or whose row is
    not durable yet) may be an anomaly nobody flagged: in the demo, the last half-minute of a recent
    range ended inside a level shift the log did not hold yet, and those windows lifted the recalibrated
    threshold 17-fold. Of the judged windows, one is left out when the log flagged it anomalous *and*
    its error is in the top ``1 - outlier_quantile`` of recent errors. In steady operation flagged
    windows are rare and all of them are in that top band, so all are left out; after the plant moved
    to a new regime the old model flags nearly everything, and leaving out every flagged window would
    leave nothing to learn the new regime from: then only the relatively worst windows are dropped.

    None when the log holds no window since ``since_s`` (no consumer wrote one): there is nothing to
    judge by, and the caller learns from every window.
    """
    errors = Path(error_log_dir) / "errors"
    if not errors.exists():
        return None
    dataset = ds.dataset(errors, format="parquet", partitioning="hive")
    since = pa.scalar(int(since_s * 1000), pa.timestamp("ms", tz="UTC"))
    table = dataset.to_table(
        columns=["sensor_id", "window_end", "error", "anomaly"], filter=ds.field("window_end") >= since
    )
    if table.num_rows == 0:
        return None
    error = table["error"].to_numpy()
    cut = float(np.nanquantile(error, outlier_quantile))
    keep = ~(table["anomaly"].to_numpy(zero_copy_only=False) & (error >= cut))
    sensors = np.asarray(table["sensor_id"].to_pylist(), dtype=object)[keep]
    ends = table["window_end"].cast(pa.int64()).to_numpy()[keep]
    return set(zip(sensors.tolist(), ends.tolist(), strict=True))


def rule_of(threshold: Threshold) -> ThresholdRule:
    """The rule, with its parameters, that calibrated ``threshold`` (retraining recalibrates with it).

    >>> from models.threshold import TargetFarRule
    >>> rule_of(TargetFarRule(0.05).fit(np.arange(100.0)))
    TargetFarRule(target_far=0.05, min_exceedances=10, floor=0.001, name='target_far')
    """
    names = ("q", "k", "risk", "initial_quantile", "target_far")
    return make_rule(threshold.rule, **{k: v for k, v in threshold.params.items() if k in names})


def normal_windows(
    readings: pd.DataFrame,
    channels: Sequence[str],
    window: int,
    keep: Collection[tuple[str, int]] | None = None,
    max_fill_s: float = 5.0,
    sample_period_s: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw windows ``[n, window, channels]`` of every sensor in end-time order, and their end times.

    ``keep``: only windows whose (sensor_id, end in ms) it holds (see :func:`learnable_windows`);
    None keeps every window.
    """
    assembler = WindowAssembler(window, sample_period_s=sample_period_s, max_fill_s=max_fill_s, idle_ttl_s=float("inf"))
    values = readings[list(channels)].to_numpy(dtype=np.float64)
    out, ends = [], []
    order = np.argsort(readings["ts"].to_numpy(), kind="stable")
    sensors, times = readings["sensor_id"].to_numpy(), readings["ts"].to_numpy()
    for i in order:
        for w in assembler.add(str(sensors[i]), float(times[i]), values[i], ("recent", 0, int(i))):
            if keep is None or (w.sensor_id, round(w.end_ts * 1000)) in keep:
                out.append(w.values)
                ends.append(w.end_ts)
    if not out:
        return np.empty((0, window, len(channels)), dtype=np.float32), np.empty(0)
    return np.stack(out).astype(np.float32), np.asarray(ends)


def _errors(detector: AnomalyDetector, scaled_windows: np.ndarray) -> np.ndarray:
    if len(scaled_windows) == 0:
        return np.empty(0, dtype=np.float32)
    return reconstruction_errors(detector.model, scaled_windows).error


def _mean(errors: np.ndarray) -> float | None:
    return float(errors.mean()) if len(errors) else None


def fine_tune_and_gate(
    current: AnomalyDetector,
    recent: np.ndarray,
    replay: ReplayBuffer | None,
    *,
    training: TrainingConfig,
    replay_fraction: float = 1.0,
    tolerance: float = 0.05,
    replay_tolerance: float = 0.5,
    min_windows: int = 200,
    distill_weight: float = 3.0,
) -> tuple[AnomalyDetector | None, dict[str, Any]]:
    """The pure core of the job: returns (candidate if it passed the gate else None, metrics and reason).

    With replay, the candidate is also distilled towards the current model's reconstructions of the
    replay windows it trains on (``distill_weight``, 0 = off; see :class:`models.training.Distillation`).
    """
    n = len(recent)
    if n < min_windows:
        return None, {"outcome": "skipped", "reason": f"only {n} recent normal windows (< {min_windows})"}
    # every window is scaled once, here: the candidate keeps the current model's scaler, and scaling
    # works window by window, so slices and concatenations of scaled windows are what scaling them gives
    scale = current.scaler.transform_windows
    scaled_recent = scale(recent)
    replay_windows = scale(replay.windows) if replay is not None else np.empty((0, *recent.shape[1:]), np.float32)
    train_end, val_end = int(n * 0.6), int(n * 0.8)
    recent_train, recent_val = scaled_recent[:train_end], scaled_recent[train_end:val_end]
    recent_gate = scaled_recent[val_end:]
    cut = int(len(replay_windows) * 0.8)
    replay_train, replay_gate = replay_windows[:cut], replay_windows[cut:]
    n_replay = min(len(replay_train), int(len(recent_train) * replay_fraction))
    chosen = np.random.default_rng(training.seed).choice(len(replay_train), n_replay, replace=False)
    replayed = replay_train[np.sort(chosen)]
    train_set = np.concatenate([recent_train, replayed])

    candidate = copy.deepcopy(current)
    candidate.model.cpu()
    candidate.training = train_autoencoder(
        candidate.model,
        train_set,
        training,
        val_windows=recent_val,
        distillation=Distillation(replayed, distill_weight),
    )
    candidate_recent = _errors(candidate, recent_gate)
    current_replay, candidate_replay = _errors(current, replay_gate), _errors(candidate, replay_gate)
    metrics: dict[str, Any] = {
        "current_recent_error": _mean(_errors(current, recent_gate)),
        "candidate_recent_error": _mean(candidate_recent),
        "current_replay_error": _mean(current_replay),
        "candidate_replay_error": _mean(candidate_replay),
        "replay_windows": int(n_replay),
    }
    worse_recent = metrics["candidate_recent_error"] > metrics["current_recent_error"] * (1 + tolerance)
    replay_error = metrics["candidate_replay_error"]
    worse_replay = replay_error is not None and replay_error > metrics["current_replay_error"] * (1 + replay_tolerance)
    if worse_recent or worse_replay:
        if worse_recent:
            where, limit = "the held-out recent slice", tolerance
        else:
            where, limit = "the replay buffer (forgetting guard)", replay_tolerance
        metrics |= {"outcome": "rejected", "reason": f"candidate worse than current on {where} beyond {limit:.0%}"}
        return None, metrics
    assert current.threshold is not None
    rule = rule_of(current.threshold)
    # calibrated on the held-out windows the weights were not selected on: the recent and replay gate
    # slices (the recent validation slice chose the epoch, as in AnomalyDetector.fit it is left out)
    errors = np.concatenate([candidate_recent, candidate_replay])
    margin = float(current.threshold.params.get("margin", 1.0))
    pooled = rule.fit(errors)
    candidate.threshold = pooled.with_margin(margin)
    candidate.regimes = None
    if len(replay_windows):
        # the replay buffer tells which regimes the model must still serve: one threshold each
        known = current.regimes.regimes if current.regimes is not None else ()
        regimes = fit_regimes(
            known, window_levels(replay_windows), window_levels(scaled_recent), min_windows=min_windows
        )
        if len(regimes) > 1:
            levels = window_levels(np.concatenate([recent_gate, replay_gate]))  # as `errors`
            held_out_recent = len(recent_gate)
            calibrated = regimes.calibrate(levels, errors, rule, pooled, min_windows).with_margin(margin)
            # the regimes the recent windows do not fall in keep the thresholds they were judged by
            recent_regimes = np.bincount(calibrated.assign(levels[:held_out_recent]), minlength=len(regimes))
            candidate.regimes = calibrated.carry_over(
                levels[held_out_recent:],
                current.window_thresholds(replay_gate),
                current_replay,
                candidate_replay,
                relearned=set(np.flatnonzero(recent_regimes >= min_windows).tolist()),
                min_windows=min_windows,
            )
    metrics |= {
        "outcome": "promoted",
        "reason": "no worse on recent and replay slices",
        "regimes_after": len(candidate.regimes) if candidate.regimes is not None else 1,
    }
    return candidate, metrics


def recalibrate_for_regime(
    current: AnomalyDetector, recent: np.ndarray, replay: ReplayBuffer | None, *, min_windows: int = 100
) -> tuple[AnomalyDetector | None, dict[str, Any]]:
    """The first stage after a regime change: ``current`` with a threshold of its own for ``recent``'s regime.

    ``recent``: raw normal windows since the drift; ``replay``: the buffer that describes the regimes
    the model already serves. Returns (candidate or None, metrics as :func:`fine_tune_and_gate`'s).
    Skipped when there are fewer than ``min_windows`` recent windows, no replay buffer to describe the
    known regimes, or when the recent windows lie in a regime the model knows.

    >>> import numpy as np
    >>> from models.training_config import TrainingConfig
    >>> t = np.arange(1500.0)
    >>> readings = np.stack([np.sin(t / 10), np.cos(t / 10)], axis=1)
    >>> detector = AnomalyDetector.fit(readings, window=10, hidden_size=8, latent_size=2,
    ...                                training=TrainingConfig(epochs=2, progress=False))
    >>> replay = ReplayBuffer(2000, 10, 2)
    >>> replay.add(np.stack([readings[i : i + 10] for i in range(1400)]))
    >>> moved = np.stack([readings[i : i + 10] + [3.0, -2.0] for i in range(300)])  # a new operating point
    >>> candidate, metrics = recalibrate_for_regime(detector, moved, replay)
    >>> metrics["outcome"], metrics["regimes_after"]
    ('promoted', 2)
    >>> bool(candidate.window_thresholds(candidate.scaler.transform_windows(moved))[0] > detector.threshold.value)
    True
    """
    n = len(recent)
    if n < min_windows:
        return None, {"outcome": "skipped", "reason": f"only {n} recent normal windows (< {min_windows})"}
    if replay is None or len(replay) < min_windows:
        return None, {"outcome": "skipped", "reason": "no replay buffer to describe the regimes the model serves"}
    assert current.threshold is not None
    scale = current.scaler.transform_windows
    scaled_recent, scaled_replay = scale(recent), scale(replay.windows)
    known = current.regimes.regimes if current.regimes is not None else ()
    replay_levels, recent_levels = window_levels(scaled_replay), window_levels(scaled_recent)
    regimes = fit_regimes(known, replay_levels, recent_levels, min_windows=min_windows)
    # the new regime is the one fitted on the recent windows (their centre is its own), never a known one:
    # the regime most recent windows are assigned to can be a known one when only some of them moved
    # (drift benchmark, abrupt/22: a drift before the real one gave the old regime 6x its threshold)
    centre = recent_levels.mean(axis=0, keepdims=True)
    fresh = int(np.argmin([r.mahalanobis(centre)[0] for r in regimes.regimes]))
    new = np.bincount(regimes.assign(recent_levels), minlength=len(regimes))
    if len(regimes) <= max(len(known), 1) or new[fresh] < min_windows:
        return None, {"outcome": "skipped", "reason": "the recent windows lie in a regime the model knows"}
    recent_errors, replay_errors = _errors(current, scaled_recent), _errors(current, scaled_replay)
    # the new regime: the threshold its windows were judged by, scaled by how much higher the model's
    # median error is there than on the windows that threshold was calibrated for. A tail quantile of
    # the few minutes since the drift is a poor estimate (a 99th percentile of ~500 windows from the
    # first two minutes alarmed on 18 % of the next quarter hour in the drift benchmark); the median
    # ratio is steady, as for the regimes a fine-tune carries over (Regimes.carry_over)
    judged_by = float(np.median(current.window_thresholds(scaled_recent)))
    replay_thresholds = current.window_thresholds(scaled_replay)
    same = np.isclose(replay_thresholds, judged_by)
    reference = replay_errors[same] if same.sum() >= min_windows else replay_errors
    ratio = float(np.median(recent_errors) / max(float(np.median(reference)), 1e-12))
    params = {**current.threshold.params, "carried_from": judged_by, "error_ratio": ratio, "first_stage": True}
    own = Threshold(judged_by * ratio, current.threshold.rule, params, int(new[fresh]))
    calibrated = Regimes(
        tuple(replace(r, threshold=own if i == fresh else current.threshold) for i, r in enumerate(regimes.regimes))
    )
    candidate = copy.deepcopy(current)
    # the same weights: every known regime keeps exactly the threshold it was judged by (error ratio 1)
    candidate.regimes = calibrated.carry_over(
        replay_levels, replay_thresholds, replay_errors, replay_errors, relearned={fresh}, min_windows=min_windows
    )
    mean = _mean(recent_errors)
    return candidate, {
        "outcome": "promoted",
        "reason": "first stage: a threshold of its own for the new operating point, same weights",
        "current_recent_error": mean,
        "candidate_recent_error": mean,
        "replay_windows": 0,
        "regimes_after": len(candidate.regimes),
    }


def record_decision(error_log_dir: Path, decision: RetrainDecision) -> Path:
    frame = pd.DataFrame([decision.to_dict()])
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata(
        {"driftline.schema": "retraining", "driftline.schema_version": str(RETRAINING_SCHEMA_VERSION)}
    )
    date = decision.at[:10]
    path = (
        Path(error_log_dir)
        / "retraining"
        / f"date={date}"
        / f"decision-{decision.at.replace(':', '')}-{uuid.uuid4().hex[:6]}.parquet"
    )
    write_parquet_atomically(table, path)
    return path


def retrain_once(
    config: DriftlineConfig,
    *,
    trigger: str = "manual",
    readings: pd.DataFrame | None = None,
    now_s: float | None = None,
    stage: Literal["fine_tune", "recalibrate"] = "fine_tune",
    since_s: float | None = None,
) -> RetrainDecision:
    """Run the job once: read recent data, fine-tune with replay, gate, publish/promote, log the decision.

    ``stage="recalibrate"``: the first stage after a regime change (:func:`recalibrate_for_regime`) on
    the readings since ``since_s`` (the drift), no training.
    """
    started = time.perf_counter()
    settings = config.retrain
    now_s = now_s if now_s is not None else time.time()
    registry = ModelRegistry(config.registry_dir)
    loaded = registry.load()
    current = loaded.detector
    version = loaded.metadata.get("version", loaded.path.name)
    since = since_s if since_s is not None else now_s - settings.recent_hours * 3600
    if readings is None:
        readings = read_recent_readings(config.kafka, current.channels, since, now_s)
    keep = learnable_windows(config.error_log_dir, since)
    if keep is None:
        log.warning(
            "the error log holds no window since %s: learning from every recent window, none was judged",
            datetime.fromtimestamp(since, UTC).isoformat(timespec="seconds"),
        )
    period, max_fill = config.windows.clock(current.sample_period_s)
    recent, _ = normal_windows(readings, current.channels, current.window, keep, max_fill, period)
    replay_path = config.data_dir / "replay" / "buffer.npz"
    replay = ReplayBuffer.load(replay_path, current.window, len(current.channels), settings.replay_capacity)
    training = replace(config.training, epochs=settings.epochs, device="cpu", progress=False)
    if stage == "recalibrate":
        candidate, metrics = recalibrate_for_regime(current, recent, replay, min_windows=settings.first_stage_windows)
    else:
        candidate, metrics = fine_tune_and_gate(
            current,
            recent,
            replay if settings.replay_fraction > 0 else None,
            training=training,
            replay_fraction=settings.replay_fraction,
            tolerance=settings.tolerance,
            replay_tolerance=settings.replay_tolerance,
            min_windows=settings.min_windows,
            distill_weight=settings.distill_weight,
        )
    candidate_version = None
    if candidate is not None:
        candidate_version = registry.publish(
            candidate,
            promote=True,
            reason=f"retrain ({trigger})",
            extra={"parent_version": version, "trigger": trigger, "stage": stage},
        )
    if len(recent) and stage == "fine_tune":
        replay.add(recent[: int(len(recent) * 0.6)])  # train part only: held-out slices stay unseen
        replay.save(replay_path)
    decision = RetrainDecision(
        at=datetime.fromtimestamp(time.time(), UTC).isoformat(timespec="seconds"),
        trigger=trigger,
        outcome=metrics.pop("outcome"),
        reason=metrics.pop("reason"),
        current_version=version,
        candidate_version=candidate_version,
        recent_windows=len(recent),
        replay_windows=int(metrics.pop("replay_windows", 0)),
        threshold_before=current.threshold.value if current.threshold else None,
        threshold_after=candidate.threshold.value if candidate is not None and candidate.threshold else None,
        seconds=time.perf_counter() - started,
        **metrics,
    )
    record_decision(config.error_log_dir, decision)
    log.info("retraining %s: %s (%s)", decision.outcome, decision.reason, decision.candidate_version or version)
    return decision
