"""Alarms reach a real Prometheus Alertmanager (Debian's prometheus-alertmanager) and resolve on close."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.alertmanager import ALERT_NAME, AlertmanagerPublisher

BINARY = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
pytestmark = pytest.mark.skipif(
    BINARY is None and not os.environ.get("CI"), reason="Alertmanager (Debian's prometheus-alertmanager) not installed"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    assert BINARY is not None, "CI installs Debian's prometheus-alertmanager (.ci/run)"
    config = tmp_path / "alertmanager.yml"
    config.write_text("route:\n  receiver: nobody\nreceivers:\n  - name: nobody\n")
    port = _free_port()
    process = subprocess.Popen(
        [
            BINARY,
            f"--config.file={config}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        assert process.poll() is None, "alertmanager exited"
        assert time.monotonic() < deadline, "alertmanager not ready in 30 s"
        time.sleep(0.2)
    yield url
    process.terminate()
    process.wait(timeout=10)


def active_alerts(url: str) -> list[dict]:
    with urllib.request.urlopen(f"{url}/api/v2/alerts?active=true&silenced=true&inhibited=true", timeout=5) as r:
        return [a for a in json.loads(r.read()) if a["labels"].get("alertname") == ALERT_NAME]


def wait_for(predicate, timeout_s: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def event(kind: str) -> dict:
    now = time.time()
    return {
        "schema": 1,
        "type": "alarm",
        "event": kind,
        "alarm_id": "0123456789abcdef0123",
        "sensor_id": "pump-7",
        "severity": "major",
        "opened_at": now - 30,
        "last_anomalous_at": now - 5,
        "closed_at": now if kind == "close" else None,
        "peak_error": 2.5,
        "peak_ratio": 3.1,
        "windows": 9,
        "top_channels": ["pressure", "flow"],
        "model_version": "v000002",
        "source": {"topic": "t", "partition": 0, "offset": 42},
        "at": now,
    }


def test_an_open_alarm_is_an_active_alert_and_its_close_resolves_it(alertmanager: str) -> None:
    publisher = AlertmanagerPublisher(alertmanager, resend_s=0.5)
    publisher.publish(event("open"))
    assert wait_for(lambda: len(active_alerts(alertmanager)) == 1)
    (alert,) = active_alerts(alertmanager)
    assert alert["labels"] == {
        "alertname": ALERT_NAME,
        "alarm_id": "0123456789abcdef0123",
        "sensor_id": "pump-7",
        "severity": "major",
    }
    assert alert["annotations"]["top_channels"] == "pressure, flow"
    publisher.publish(event("close"))
    assert wait_for(lambda: not active_alerts(alertmanager))
    publisher.close()


def test_an_alertmanager_that_is_away_is_waited_for_without_blocking(tmp_path: Path) -> None:
    port = _free_port()
    publisher = AlertmanagerPublisher(f"http://127.0.0.1:{port}", timeout_s=0.2)
    started = time.monotonic()
    publisher.publish(event("open"))
    publisher.flush()
    assert time.monotonic() - started < 0.1  # the scorer never waits for it
    time.sleep(0.5)
    assert publisher.posted == 0
    publisher.close(timeout_s=0.2)
