"""Alarm events to a Prometheus Alertmanager (API v2, ``POST /api/v2/alerts``), resolved on close.

Optional (``alarms.alertmanager_url``), beside the alerts topic, which stays the durable channel: the
sender runs on a thread of its own, so an Alertmanager that is slow or away never holds up scoring or
commits; failed posts are retried with back-off and the newest ``max_pending`` alerts are kept. Open
alarms are posted again every ``resend_s`` (Alertmanager resolves an alert it has not heard of for its
``resolve_timeout``), and a close posts the alert with ``endsAt`` = now, which resolves it.

Each alarm becomes one alert, ``alertname="DriftlineSensorAnomaly"``, labelled by ``alarm_id``,
``sensor_id`` and ``severity``, annotated with a summary, the top channels, the peak error / threshold
and the model version; ``startsAt`` is the alarm's first flagged window (event time).

>>> alert = to_alert({"alarm_id": "a1", "sensor_id": "p7", "severity": "major", "opened_at": 0.0,
...                   "event": "close", "closed_at": 60.0, "peak_ratio": 3.2, "peak_error": 1.1,
...                   "top_channels": ["flow"], "model_version": "v1", "windows": 4}, now=100.0)
>>> alert["labels"]["alertname"], alert["startsAt"], alert["endsAt"]
('DriftlineSensorAnomaly', '1970-01-01T00:00:00Z', '1970-01-01T00:01:40Z')
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

ALERT_NAME = "DriftlineSensorAnomaly"
REGIME_ALERT_NAME = "DriftlineRegimeChange"


def _key(event: dict[str, Any]) -> str:
    return str(event.get("alarm_id") or event["notice_id"])


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def to_alert(event: dict[str, Any], now: float) -> dict[str, Any]:
    """The Alertmanager v2 alert for an alarm event or a regime-change notice (see :mod:`pipeline.alarms`)."""
    if event.get("type") == "regime_change":
        labels = {"alertname": REGIME_ALERT_NAME, "notice_id": event["notice_id"], "severity": "warning"}
        annotations = {
            "summary": "fleet-wide drift: most likely a new operating regime (a plant-wide fault looks the same)",
            "policy": event["policy"],
            "cause": str(event.get("cause", "fleet_drift")),
            "alarms_covered": str(event["alarms_covered"]),
            "model_version": event["model_version"],
        }
    else:
        labels = {
            "alertname": ALERT_NAME,
            "alarm_id": event["alarm_id"],
            "sensor_id": event["sensor_id"],
            "severity": event["severity"],
        }
        annotations = {
            "summary": f"sensor {event['sensor_id']}: anomaly, {event['peak_ratio']:.1f}x its threshold",
            "top_channels": ", ".join(event["top_channels"]),
            "peak_error": f"{event['peak_error']:.4g}",
            "windows": str(event["windows"]),
            "model_version": event["model_version"],
        }
    alert: dict[str, Any] = {
        "labels": labels,
        "annotations": annotations,
        "startsAt": _iso(min(event["opened_at"], now)),
    }
    if event["event"] == "close":  # an end in the past resolves it
        alert["endsAt"] = _iso(now)
    return alert


class AlertmanagerPublisher:
    """Posts alarm events to Alertmanager from a background thread (the loop's ``alerts`` publisher)."""

    def __init__(self, url: str, *, timeout_s: float = 5.0, resend_s: float = 60.0, max_pending: int = 10_000) -> None:
        self.url = url.rstrip("/") + "/api/v2/alerts"
        self.timeout_s = timeout_s
        self.resend_s = resend_s
        self.max_pending = max_pending
        self._pending: OrderedDict[str, dict[str, Any]] = OrderedDict()  # alarm id -> latest event, to post
        self._open: dict[str, tuple[dict[str, Any], float]] = {}  # alarm id -> (event, last posted)
        self._lock = threading.Condition()
        self._stop = False
        self.posted = 0
        self._thread = threading.Thread(target=self._run, name="driftline-alertmanager", daemon=True)
        self._thread.start()

    def publish(self, event: dict[str, Any]) -> None:
        with self._lock:
            key = _key(event)
            self._pending[key] = event
            self._pending.move_to_end(key)
            while len(self._pending) > self.max_pending:
                dropped, _ = self._pending.popitem(last=False)
                log.warning("alertmanager: %d alerts waiting; dropped the oldest (%s)", self.max_pending, dropped)
            self._lock.notify()

    def flush(self) -> None:
        """Nothing to make durable here (the alerts topic is the durable channel); never blocks a commit."""

    def close(self, timeout_s: float = 5.0) -> None:
        """Post what is pending (for up to ``timeout_s``) and stop the thread."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._pending and time.monotonic() < deadline:
                self._lock.wait(0.05)
            self._stop = True
            self._lock.notify()
        self._thread.join(timeout=max(0.0, deadline - time.monotonic()) + 1.0)

    def _due(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        events = list(self._pending.values())
        self._pending.clear()
        posted = {_key(e) for e in events}
        events += [e for a, (e, at) in self._open.items() if a not in posted and now - at >= self.resend_s]
        return events

    def _run(self) -> None:
        backoff = 0.5
        while True:
            with self._lock:
                while not self._pending and not self._stop and not self._resend_due():
                    self._lock.wait(1.0)
                if self._stop and not self._pending:
                    return
                events = self._due()
            if not events:
                continue
            try:
                self._post(events)
            except (OSError, urllib.error.URLError) as error:
                log.warning("alertmanager %s: post failed (%s); retrying in %.1f s", self.url, error, backoff)
                with self._lock:
                    for event in events:  # keep the newer event of an alarm if one arrived meanwhile
                        self._pending.setdefault(_key(event), event)
                time.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 0.5
            now = time.monotonic()
            with self._lock:
                for event in events:
                    if event["event"] == "close":
                        self._open.pop(_key(event), None)
                    else:
                        self._open[_key(event)] = (event, now)
                self.posted += len(events)
                self._lock.notify_all()

    def _resend_due(self) -> bool:
        now = time.monotonic()
        return any(now - at >= self.resend_s for _, at in self._open.values())

    def _post(self, events: list[dict[str, Any]]) -> None:
        now = time.time()
        body = json.dumps([to_alert(event, now) for event in events]).encode()
        request = urllib.request.Request(
            self.url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            response.read()
