"""A fleet-wide change of operating point against the real broker: one regime notice on the alerts topic,
not an alarm per sensor; a single sensor's anomaly inside it still reaches the operator; and a kill -9
while the notice is open continues it under the same id after the restart."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from test_alarms_kafka import alarm_events
from test_serve_kafka import (
    CHANNELS,
    SMALL_BATCHES,
    assert_exactly_once,
    make_topic,
    publish_model,
    read_log,
    send,
    spawn_serve,
    write_config,
)

from pipeline.config import load_config
from pipeline.service import serve
from pipeline.simulator import DriftSpec, FleetSpec, simulate_fleet

pytestmark = pytest.mark.kafka
DRIFT_ROW = 500
STANDOUT = ("sensor-002", 650, 720)  # the sensor, first and last row of its own anomaly after the drift
# a change of operating point the model flags on every sensor until the stream ends (at 1.5 standard
# deviations some sensors fell quiet between bursts and the notice closed and reopened: not what is tested)
SPEC = FleetSpec(
    sensors=6,
    rows=900,
    normal_prefix_rows=400,
    anomalies_per_sensor=0,
    drift=DriftSpec(DRIFT_ROW, offset_sd=3.0),
    seed=11,
)


@pytest.fixture(scope="module")
def drifting_fleet() -> pd.DataFrame:
    """Every sensor moves to a new operating point at row 500; one of them has a fault of its own later."""
    fleet = simulate_fleet(SPEC)
    sensor, first, last = STANDOUT
    rows = fleet.index[fleet["sensor_id"] == sensor][first : last + 1]
    fleet.loc[rows, CHANNELS] += 20 * fleet[CHANNELS].std()  # every channel: some may enter relative to the window
    fleet.loc[rows, "anomaly"] = 1
    return fleet


@pytest.fixture(scope="module")
def drift_registry(tmp_path_factory: pytest.TempPathFactory, drifting_fleet: pd.DataFrame) -> Path:
    """A model trained on the fleet's first (pre-drift) operating point, published as the current version."""
    return publish_model(drifting_fleet, SPEC.normal_prefix_rows, tmp_path_factory.mktemp("drift-registry"))


def notice_config(tmp_path: Path, bootstrap: str, topic: str, registry: Path, **sections: dict) -> Path:
    kafka = {"alerts_topic": f"{topic}-alerts", **sections.pop("kafka", {})}
    alarms = {"quiet_s": 10.0, "regime_policy": "suppress"}
    return write_config(tmp_path, bootstrap, topic, registry, kafka=kafka, alarms=alarms, **sections)


def sent_alarm_opens(events: list[dict]) -> pd.DataFrame:
    opens = [e for e in events if e["type"] == "alarm" and e["event"] == "open" and not e["suppressed"]]
    return pd.DataFrame(opens, columns=["alarm_id", "sensor_id", "opened_at", "at", "suspected_regime_change"])


@pytest.mark.parametrize("client", ["kafka-python", "librdkafka"])
def test_a_fleet_wide_drift_is_one_notice_and_a_single_sensors_fault_inside_it_is_still_sent(
    kafka_broker, drift_registry, drifting_fleet, tmp_path, client
) -> None:
    topic = make_topic(kafka_broker.bootstrap_servers, partitions=3)
    config = load_config(notice_config(tmp_path, kafka_broker.bootstrap_servers, topic, drift_registry))
    send(kafka_broker.bootstrap_servers, topic, drifting_fleet, client=client)
    serve(config, idle_timeout_s=5)

    events = alarm_events(kafka_broker.bootstrap_servers, f"{topic}-alerts")
    notices = [e for e in events if e["type"] == "regime_change"]
    summary = [(n["event"], n["at"], n.get("cause"), n.get("closed_by")) for n in notices]
    assert [n["event"] for n in notices if n["event"] == "open"] == ["open"], summary
    assert len({n["notice_id"] for n in notices}) == 1
    drift_at = drifting_fleet["timestamp"].iloc[0] + pd.Timedelta(seconds=DRIFT_ROW)
    sensor, first, last = STANDOUT
    fault = (drift_at + pd.Timedelta(seconds=first - DRIFT_ROW), drift_at + pd.Timedelta(seconds=last - DRIFT_ROW))
    opens = sent_alarm_opens(events)
    sent_at = pd.to_datetime(opens["at"], unit="s", utc=True)  # when sent (a suppressed episode keeps its opened_at)
    after = opens[sent_at >= drift_at]
    # the fleet's change: at most the first sensors to cross alarm before the notice, not all six
    drift_alarms = after[(after["sensor_id"] != sensor) | (sent_at[after.index] < fault[0])]
    assert drift_alarms["sensor_id"].nunique() <= 2, drift_alarms
    standout = after[(after["sensor_id"] == sensor) & sent_at[after.index].between(fault[0], fault[1])]
    assert len(standout) == 1, f"the single sensor's fault inside the regime change was not sent: {opens}"
    assert bool(standout["suspected_regime_change"].iloc[0]), "it is marked as raised during the notice"
    table = pd.read_parquet(config.error_log_dir / "alarms")
    suppressed = table[(table["event"] == "open") & table["suppressed"]]
    assert suppressed["sensor_id"].nunique() >= 3, "the other sensors' alarms are kept, suppressed, in the table"


def wait_for_notice(bootstrap: str, alerts_topic: str, process: subprocess.Popen[str], timeout_s: float = 120) -> str:
    """Block until a regime notice has opened on ``alerts_topic`` (``process`` still running); its id."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"serve ended early:\n{process.stdout.read() if process.stdout else ''}"
        opened = [e for e in alarm_events(bootstrap, alerts_topic) if e["type"] == "regime_change"]
        if opened:
            return str(opened[0]["notice_id"])
    raise AssertionError(f"no regime notice on {alerts_topic} within {timeout_s:.0f} s")


def test_kill_9_while_the_notice_is_open_continues_it_under_its_id(
    kafka_broker, drift_registry, drifting_fleet, tmp_path
) -> None:
    topic = make_topic(kafka_broker.bootstrap_servers, partitions=3)
    bootstrap, alerts = kafka_broker.bootstrap_servers, f"{topic}-alerts"
    config_path = notice_config(tmp_path, bootstrap, topic, drift_registry, **SMALL_BATCHES)
    cut = drifting_fleet["timestamp"].iloc[0] + pd.Timedelta(seconds=STANDOUT[1])  # mid-fault, notice open
    send(bootstrap, topic, drifting_fleet[drifting_fleet["timestamp"] < cut])
    first = spawn_serve(config_path, "--idle-timeout", "60")
    notice_id = wait_for_notice(bootstrap, alerts, first)
    time.sleep(2.0)  # let it score and commit past the notice's opening
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not [e for e in alarm_events(bootstrap, alerts) if e["type"] == "regime_change" and e["event"] == "close"]

    send(bootstrap, topic, drifting_fleet[drifting_fleet["timestamp"] >= cut])
    second = spawn_serve(config_path, "--idle-timeout", "5")
    output, _ = second.communicate(timeout=180)
    assert second.returncode == 0, output

    assert_exactly_once(read_log(tmp_path / "data"), drifting_fleet)
    events = alarm_events(bootstrap, alerts)
    notice_ids = {e["notice_id"] for e in events if e["type"] == "regime_change"}
    assert notice_ids == {notice_id}, "the restart continued the open notice instead of opening a second"
    opens = sent_alarm_opens(events)
    drift_at = drifting_fleet["timestamp"].iloc[0] + pd.Timedelta(seconds=DRIFT_ROW)
    after = opens[pd.to_datetime(opens["at"], unit="s", utc=True) >= drift_at]
    assert after["sensor_id"].nunique() <= 3, f"the restart sent the alarms the notice suppresses: {after}"
    assert (after["sensor_id"] == STANDOUT[0]).any(), "the single sensor's fault was still sent"
