"""What an operator received across a drift: alarms sent, their plant minutes, and the anomalies they caught.

Read from the alarms table of the error log (``<error_log>/alarms``, see :mod:`pipeline.alarms`),
between the drift and the first window scored by a model trained after it: the span in which a
benign change of operating point floods an operator who is told about every sensor. The demo's
summary and the drift benchmark report the same three figures from this one function.

>>> import tempfile
>>> from pathlib import Path
>>> at = pd.Timestamp("2026-01-01 00:00", tz="UTC")
>>> fleet = pd.DataFrame({"sensor_id": "s0", "timestamp": pd.date_range(at, periods=600, freq="s"),
...                       "anomaly": [False] * 400 + [True] * 20 + [False] * 180})
>>> log = pd.DataFrame({"window_end": fleet["timestamp"], "model_version": ["v1"] * 500 + ["v2"] * 100})
>>> alarms = Path(tempfile.mkdtemp()) / "alarms"
>>> alarms_after_drift(alarms, fleet, log, at, {"v2"}, window=10)["post_drift_recall"]  # no alarm sent
0.0
>>> alarms.mkdir()
>>> pd.DataFrame({"event": ["open", "close"], "alarm_id": "a1", "suppressed": False, "sensor_id": "s0",
...               "at": [at + pd.Timedelta(seconds=402), at + pd.Timedelta(seconds=432)]}
...              ).to_parquet(alarms / "part.parquet")
>>> figures = alarms_after_drift(alarms, fleet, log, at, {"v2"}, window=10)
>>> figures["alarm_episodes_after_drift"], figures["alarm_minutes_after_drift"], figures["post_drift_recall"]
(1, 0.5, 1.0)
>>> figures["false_alarm_episodes_after_drift"]  # it covered the labelled anomaly: not a false alarm
0
>>> round(figures["span_minutes"], 2)  # from the drift to v2's first window
8.33
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from models.grouping import anomaly_episodes


def learned_after_drift(trained_until_s: float, recent_s: float, drift_at_s: float) -> bool:
    """Did a model retrained on the ``recent_s`` seconds up to ``trained_until_s`` learn mostly post-drift data?

    At least half of its recent window must lie after the drift began: a run asked for before the
    drift (or still training when it came) learned the old operating point, and its windows are not
    "after the first post-drift model".

    >>> learned_after_drift(trained_until_s=1_000, recent_s=900, drift_at_s=500), learned_after_drift(1_000, 900, 600)
    (True, False)
    """
    return trained_until_s - recent_s / 2 >= drift_at_s


def alarms_after_drift(
    alarms_dir: Path,
    fleet: pd.DataFrame,
    log_frame: pd.DataFrame,
    drift_at: pd.Timestamp,
    post_drift_models: set[str],
    window: int,
) -> dict[str, Any]:
    """Alarms sent between ``drift_at`` and the first window of a ``post_drift_models`` version.

    ``fleet``: the labelled readings (``sensor_id``, ``timestamp``, ``anomaly``); ``log_frame``: the
    error log's ``window_end`` and ``model_version``. Returns ``alarm_episodes_after_drift`` (alarms
    opened in the span and sent: not suppressed as part of a regime change),
    ``alarm_minutes_after_drift`` (plant minutes those and earlier open alarms overlap the span),
    ``post_drift_recall`` (labelled anomaly episodes after the drift for which an alarm was sent within
    ``window`` readings of their end; None without any), ``suppressed_after_drift``, and
    ``false_alarm_episodes_after_drift`` / ``false_alarm_minutes_after_drift``: the same two counts for
    the sent alarms that overlap no labelled anomaly of their sensor (up to ``window`` readings after
    it): what the benign drift itself cost the operator; ``span_minutes``, the span's plant minutes.
    """
    root = Path(alarms_dir)
    empty = pd.DataFrame(columns=["event", "alarm_id", "suppressed", "at", "sensor_id"])
    events = pd.read_parquet(root) if root.exists() else empty
    served = log_frame.loc[log_frame["model_version"].isin(post_drift_models), "window_end"]
    span_end = served.min() if len(served) else log_frame["window_end"].max()
    stream_end = log_frame["window_end"].max()
    sent = events[~events["suppressed"].astype(bool)] if len(events) else events
    opened = sent[sent["event"] == "open"].drop_duplicates("alarm_id")
    closed = sent[sent["event"] == "close"].drop_duplicates("alarm_id").set_index("alarm_id")["at"]
    labelled = _labelled_spans(fleet, window)
    minutes, episodes, false_minutes, false_episodes = 0.0, 0, 0.0, 0
    for alarm, sensor, at in zip(opened["alarm_id"], opened["sensor_id"], opened["at"], strict=True):
        end = closed.get(alarm, stream_end)
        overlap = (min(end, span_end) - max(at, drift_at)).total_seconds()
        if overlap > 0 or drift_at <= at < span_end:
            minutes += max(overlap, 0.0) / 60
            episodes += int(drift_at <= at < span_end)
            if not any(start <= end and at <= stop for start, stop in labelled.get(sensor, ())):
                false_minutes += max(overlap, 0.0) / 60
                false_episodes += int(drift_at <= at < span_end)
    suppressed = events[events["suppressed"].astype(bool) & (events["event"] == "open")] if len(events) else events
    suppressed_count = int(((suppressed["at"] >= drift_at) & (suppressed["at"] < span_end)).sum()) if len(events) else 0
    injected = caught = 0
    for sensor, spans in labelled.items():
        starts = opened.loc[opened["sensor_id"] == sensor, "at"]
        for start, end in spans:
            if start < drift_at:
                continue
            injected += 1
            caught += bool(((starts >= start) & (starts <= end)).any())
    return {
        "alarm_episodes_after_drift": episodes,
        "alarm_minutes_after_drift": minutes,
        "post_drift_recall": caught / injected if injected else None,
        "suppressed_after_drift": suppressed_count,
        "false_alarm_episodes_after_drift": false_episodes,
        "false_alarm_minutes_after_drift": false_minutes,
        "span_minutes": max((span_end - drift_at).total_seconds(), 0.0) / 60,
    }


def _labelled_spans(fleet: pd.DataFrame, window: int) -> dict[str, list[tuple[pd.Timestamp, pd.Timestamp]]]:
    """Per sensor, the (first, last + ``window`` readings) times of each labelled anomaly episode."""
    spans: dict[str, list[tuple[pd.Timestamp, pd.Timestamp]]] = {}
    for sensor, readings in fleet.groupby("sensor_id"):
        times = pd.DatetimeIndex(readings["timestamp"])
        spans[str(sensor)] = [
            (times[start], times[min(stop + window, len(times)) - 1])
            for start, stop in anomaly_episodes(readings["anomaly"].to_numpy())
        ]
    return spans
