"""Runs the retraining job on a schedule (APScheduler) and when drift events arrive, one run at a time.

Policies:

- **One at a time, across processes.** Every run takes an exclusive ``flock`` on
  ``<data_dir>/retrain.lock`` and writes who holds it (pid, start, trigger) into it; a run that finds it
  held is skipped and logged with the holder. The OS drops the lock when its holder dies, so a crashed
  run never blocks the next one (no stale lock). The one wait: a drift run that finds its own first
  stage still holding the lock waits for it (up to ``FIRST_STAGE_WAIT_S``; a first stage takes seconds)
  instead of being dropped, which left the fleet on the old weights until the next drift.
- **Missed runs** (scheduler down or busy past the time) are coalesced: at most one catch-up run, and
  only within ``misfire_grace_time`` (half the interval); older misses are dropped.
- **Drift trigger** (:class:`jobs.drift_policy.DriftRetrainPolicy`, shared with the demo and the
  drift benchmark): a fleet-wide ``drift`` event on ``kafka.events_topic`` schedules one run
  ``debounce_s`` later; further events before it starts join that run instead of adding runs and move
  it to ``debounce_s`` after themselves (at most ``debounce_max_s`` after the first event), so a run
  after a gradual drift learns the settled plant rather than the ramp. Events that arrive while a run
  holds the lock join that run too: they were raised against the model that run is about to replace,
  and the scorer resets its detectors when it swaps, so drift that outlives the new model is detected
  again.
- **First stage**: ``retrain.first_stage_after_s`` after the event that scheduled the run, a
  ``stage="recalibrate"`` run on the readings since that event gives the serving model a threshold of
  its own for the new operating point (seconds, no training; :func:`jobs.retrain.recalibrate_for_regime`),
  so the fleet is judged fairly again minutes before the fine-tune. While the plant is still between
  regimes (the recent windows not yet apart from the known ones, a gradual drift) it is skipped and
  tried again every ``first_stage_after_s`` until it is promoted or the fine-tune starts.

>>> import tempfile
>>> from pathlib import Path
>>> lock = RetrainLock(Path(tempfile.mkdtemp()) / "retrain.lock")
>>> with lock.hold("schedule") as first, RetrainLock(lock.path).hold() as second:
...     first, second, lock.holder().split()[-1]
(True, False, 'schedule')
>>> lock.holder() is None
True
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from jobs.drift_policy import DriftRetrainPolicy
from jobs.retrain import RetrainDecision, retrain_once
from pipeline.config import DriftlineConfig

log = logging.getLogger(__name__)

SCHEDULED_JOB = "retrain-scheduled"
DRIFT_JOB = "retrain-on-drift"
FIRST_STAGE_JOB = "recalibrate-on-drift"
FIRST_STAGE_TRIGGER = "drift, first stage"  # how a first stage's trigger (and so its lock entry) begins
FIRST_STAGE_WAIT_S = 120.0  # longest a drift run waits for its first stage to let go of the lock


class RetrainLock:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def held(self) -> bool:
        """True while a run (in this process or another) holds the lock.

        The probe (:meth:`holder`) takes a shared lock for an instant: a run starting in that instant is
        skipped as if another held it, and the probe answers False, so a caller that schedules a run when
        it is not held (as :func:`request_drift_run` does) only delays it.
        """
        return self.holder() is not None

    def holder(self) -> str | None:
        """What the holder wrote ("pid start trigger"), or None when nobody holds the lock."""
        if not self.path.exists():
            return None
        fd = os.open(self.path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return os.read(fd, 4096).decode(errors="replace").strip() or "(unknown holder)"
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    @contextmanager
    def hold(self, trigger: str = "", wait_s: float = 0.0) -> Iterator[bool]:
        """Yield True if this process now holds the lock, False if another does after ``wait_s`` seconds
        (default: never blocks). ``trigger`` is recorded for :meth:`holder`."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        yield False
                        return
                    time.sleep(0.1)
            os.ftruncate(fd, 0)
            started = datetime.now(UTC).isoformat(timespec="seconds")
            os.write(fd, f"{os.getpid()} {started} {trigger}".rstrip().encode() + b"\n")
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def run_exclusive(
    config: DriftlineConfig,
    trigger: str,
    job: Callable[..., RetrainDecision] = retrain_once,
    *,
    wait_s: float = 0.0,
    **options: Any,
) -> RetrainDecision | None:
    """Run the job (with ``options``) unless another run holds the lock (after ``wait_s`` seconds);
    return its decision or None if skipped."""
    lock = RetrainLock(config.data_dir / "retrain.lock")
    with lock.hold(trigger, wait_s=wait_s) as acquired:
        if not acquired:
            log.info("retraining (%s) skipped: %s holds %s", trigger, lock.holder() or "another run", lock.path)
            return None
        try:
            return job(config, trigger=trigger, **options)
        except Exception:  # a failed run must not kill the scheduler; the next one tries again
            log.exception("retraining (%s) failed; the current model keeps serving", trigger)
            return None


def build_scheduler(config: DriftlineConfig, job: Callable[..., RetrainDecision] = retrain_once) -> BackgroundScheduler:
    settings = config.retrain
    scheduler = BackgroundScheduler(timezone="UTC")
    if settings.cron:
        trigger = CronTrigger.from_crontab(settings.cron, timezone="UTC")
        grace = 300
    elif settings.interval_minutes:
        trigger = IntervalTrigger(minutes=settings.interval_minutes, timezone="UTC")
        grace = int(settings.interval_minutes * 30)
    else:
        trigger = None
    if trigger is not None:
        scheduler.add_job(
            run_exclusive,
            trigger,
            args=[config, "schedule", job],
            id=SCHEDULED_JOB,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(grace, 1),
        )
    return scheduler


def _run_on_drift(
    config: DriftlineConfig,
    trigger: str,
    job: Callable[..., RetrainDecision],
    first_event_at: datetime,
    scheduler: BackgroundScheduler | None = None,
) -> RetrainDecision | None:
    """The drift-triggered run; ``first_event_at`` (its first event) bounds how far later events delay it."""
    if scheduler is not None and scheduler.get_job(FIRST_STAGE_JOB) is not None:
        scheduler.remove_job(FIRST_STAGE_JOB)  # the fine-tune supersedes its first stage
    # a first stage already running finishes first (seconds); skipping the fine-tune behind it would
    # leave the fleet on the old weights until another drift (the demo's CI failure, 2026-12-02)
    holder = RetrainLock(config.data_dir / "retrain.lock").holder()
    behind_first_stage = holder is not None and FIRST_STAGE_TRIGGER in holder
    return run_exclusive(config, trigger, job, wait_s=FIRST_STAGE_WAIT_S if behind_first_stage else 0.0)


def _first_stage(
    scheduler: BackgroundScheduler,
    config: DriftlineConfig,
    trigger: str,
    job: Callable[..., RetrainDecision],
    since_s: float,
) -> RetrainDecision | None:
    """One try of the first stage; once promoted it is not tried again for this run."""
    decision = run_exclusive(config, trigger, job, stage="recalibrate", since_s=since_s)
    if decision is not None and decision.outcome == "promoted" and scheduler.get_job(FIRST_STAGE_JOB) is not None:
        scheduler.remove_job(FIRST_STAGE_JOB)
    return decision


def request_drift_run(
    scheduler: BackgroundScheduler,
    config: DriftlineConfig,
    reason: str,
    job: Callable[..., RetrainDecision] = retrain_once,
    event_ts: float | None = None,
) -> bool:
    """Schedule one run ``debounce_s`` after this event; False if one is pending or running (events coalesce).

    With ``retrain.first_stage_after_s``, a first stage on the readings since ``event_ts`` (the event's
    own time; default now) is scheduled that long after it, before the run.

    An event for a pending run moves it to ``debounce_s`` after itself, at most ``debounce_max_s`` after
    the run's first event: while the error keeps rising (a gradual drift, a ramp) the plant has not
    settled, and data from the ramp teaches the model a state it is leaving.
    """
    policy = DriftRetrainPolicy.from_settings(config.retrain)
    now = datetime.now(UTC)
    pending = scheduler.get_job(DRIFT_JOB)
    if pending is not None:
        first = pending.kwargs["first_event_at"]
        run_at = datetime.fromtimestamp(policy.run_at(first.timestamp(), now.timestamp()), UTC)
        if pending.next_run_time is not None and run_at > pending.next_run_time:
            pending.reschedule("date", run_date=run_at)
            log.info("drift event (%s): retraining moved to %s", reason, run_at.isoformat(timespec="seconds"))
        return False
    if RetrainLock(config.data_dir / "retrain.lock").held():
        log.info("drift event (%s) joins the retraining run in progress", reason)
        return False
    run_at = datetime.fromtimestamp(policy.run_at(now.timestamp(), now.timestamp()), UTC)
    scheduler.add_job(
        _run_on_drift,
        "date",
        run_date=run_at,
        args=[config, f"drift: {reason}", job],
        kwargs={"first_event_at": now, "scheduler": scheduler},
        id=DRIFT_JOB,
        max_instances=1,
        misfire_grace_time=None,
    )
    first_stage_s = config.retrain.first_stage_after_s
    if first_stage_s is not None and now.timestamp() + first_stage_s < run_at.timestamp():
        since_s = event_ts if event_ts is not None else now.timestamp()
        scheduler.add_job(
            _first_stage,
            "interval",
            seconds=first_stage_s,
            args=[scheduler, config, f"{FIRST_STAGE_TRIGGER}: {reason}", job, since_s],
            id=FIRST_STAGE_JOB,
            replace_existing=True,
            max_instances=1,
            misfire_grace_time=None,
        )
    log.info("drift event: retraining scheduled at %s (%s)", run_at.isoformat(timespec="seconds"), reason)
    return True


def _event_ts(event: dict[str, Any]) -> float | None:
    try:
        return float(event["ts"])
    except (KeyError, TypeError, ValueError):
        return None


def run_scheduler(
    config: DriftlineConfig, stop: threading.Event, job: Callable[..., RetrainDecision] = retrain_once
) -> None:
    """Run until ``stop`` is set: the schedule, plus drift-triggered runs from the events topic."""
    scheduler = build_scheduler(config, job)
    policy = DriftRetrainPolicy.from_settings(config.retrain)
    scheduler.start()
    log.info("scheduler started: %s", [str(j.trigger) for j in scheduler.get_jobs()] or "no schedule")
    consumer = None
    try:
        if config.retrain.on_drift:
            from pipeline.kafka_clients import make_consumer

            consumer = make_consumer(
                config.kafka,
                config.kafka.events_topic,
                group_id=f"{config.kafka.group_id}-retrain",
                auto_offset_reset="latest",
                enable_auto_commit=True,  # drift events seen are not seen again after a restart
            )
        while not stop.is_set():
            if consumer is None:
                stop.wait(1.0)
                continue
            for records in consumer.poll(timeout_ms=1000).values():
                for record in records:
                    try:
                        event = json.loads(record.value)
                    except (TypeError, json.JSONDecodeError):
                        continue
                    if policy.wants_run(event):
                        where = event.get("sensor_id") or "fleet"
                        reason = f"{event.get('detector')} on {where}"
                        request_drift_run(scheduler, config, reason, job, event_ts=_event_ts(event))
    finally:
        if consumer is not None:
            consumer.close()
        scheduler.shutdown(wait=True)
