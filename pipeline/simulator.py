"""A fleet of simulated industrial sensors with labelled anomalies and scheduled drift.

Each sensor (a pump, say) has a few channels driven by shared latent processes, so channels are
correlated as real ones are: a daily-like cycle, a slower load cycle, an AR(1) wander, and noise.
Injected anomalies carry labels (``anomaly`` = 1 and their ``anomaly_kind``):

- ``level_shift``: one channel jumps by several standard deviations for a while;
- ``correlation_break``: one channel stops following the others (its own noise instead);
- ``stuck``: one channel freezes at its last value;
- ``oscillation``: a fast vibration is added to one channel.

Drift (a new operating point: offsets and gains change on every channel) is not an anomaly: it is the
regime change that retraining must absorb. It is abrupt or gradual, and marked in ``regime``.

>>> frame = simulate_fleet(FleetSpec(sensors=2, rows=600, anomalies_per_sensor=1, seed=1))
>>> sorted(frame["sensor_id"].unique()), len(frame)
(['sensor-000', 'sensor-001'], 1200)
>>> int(frame.groupby("sensor_id")["anomaly"].max().sum())
2
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

ANOMALY_KINDS = ("level_shift", "correlation_break", "stuck", "oscillation")
DEFAULT_CHANNELS = ("flow", "pressure", "current", "vibration", "temperature")


@dataclass(frozen=True)
class DriftSpec:
    """At ``at_row`` every sensor moves to a new operating point, abruptly or over ``ramp_rows``."""

    at_row: int
    kind: Literal["abrupt", "gradual"] = "abrupt"
    ramp_rows: int = 300
    offset_sd: float = 1.5  # size of the offset change, in channel standard deviations
    gain_change: float = 0.3  # relative change of each channel's response to the latent cycle


@dataclass(frozen=True)
class FleetSpec:
    sensors: int = 4
    rows: int = 3600  # readings per sensor, one per second
    channels: tuple[str, ...] = DEFAULT_CHANNELS
    period_s: float = 240.0
    noise: float = 0.08
    anomalies_per_sensor: int = 2
    anomaly_rows: tuple[int, int] = (40, 120)  # min and max duration
    anomaly_kinds: tuple[str, ...] = ANOMALY_KINDS
    normal_prefix_rows: int = 0  # no anomalies are injected before this row (training data)
    drift: DriftSpec | None = None
    start: str = "2026-01-01T00:00:00Z"
    seed: int = 0
    sensor_prefix: str = "sensor"
    extra: dict[str, float] = field(default_factory=dict)


def _latent(rows: int, period_s: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(rows, dtype=np.float64)
    phase = rng.uniform(0, 2 * np.pi, 2)
    cycle = np.sin(2 * np.pi * t / period_s + phase[0])
    load = np.sin(2 * np.pi * t / (period_s * 3.7) + phase[1])
    wander = np.zeros(rows)
    shocks = rng.normal(0, 0.02, rows)
    for i in range(1, rows):
        wander[i] = 0.995 * wander[i - 1] + shocks[i]
    return np.stack([cycle, load, wander], axis=1)  # [rows, 3]


def _drift_weight(rows: int, drift: DriftSpec | None) -> np.ndarray:
    weight = np.zeros(rows)
    if drift is None or drift.at_row >= rows:
        return weight
    if drift.kind == "abrupt":
        weight[drift.at_row :] = 1.0
    else:
        ramp = np.clip((np.arange(rows) - drift.at_row) / max(drift.ramp_rows, 1), 0.0, 1.0)
        weight = np.where(np.arange(rows) >= drift.at_row, ramp, 0.0)
    return weight


def _inject(values: np.ndarray, kind: str, channel: int, start: int, stop: int, rng: np.random.Generator) -> None:
    segment = values[start:stop, channel]
    scale = float(np.std(values[:, channel])) or 1.0
    if kind == "level_shift":
        segment += rng.choice([-1.0, 1.0]) * rng.uniform(2.5, 4.0) * scale
    elif kind == "correlation_break":
        segment[:] = np.mean(values[:, channel]) + rng.normal(0, scale, len(segment))
    elif kind == "stuck":
        segment[:] = values[start - 1, channel] if start > 0 else segment[0]
    elif kind == "oscillation":
        t = np.arange(len(segment))
        segment += 1.5 * scale * np.sin(2 * np.pi * t / rng.uniform(3, 7))
    else:
        raise ValueError(f"unknown anomaly kind {kind!r}; choose from {ANOMALY_KINDS}")


def _anomaly_slots(spec: FleetSpec, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Non-overlapping (start, stop) intervals after the normal prefix, with gaps between them."""
    low, high = spec.anomaly_rows
    first = max(spec.normal_prefix_rows, high)
    usable = spec.rows - first - high
    if spec.anomalies_per_sensor == 0 or usable <= 0:
        return []
    span = usable // spec.anomalies_per_sensor
    slots = []
    for i in range(spec.anomalies_per_sensor):
        duration = int(rng.integers(low, high + 1))
        start = first + i * span + int(rng.integers(0, max(span - duration, 1)))
        slots.append((start, min(start + duration, spec.rows)))
    return slots


def simulate_sensor(spec: FleetSpec, sensor_index: int) -> pd.DataFrame:
    """One sensor's readings: channels, ``anomaly``, ``anomaly_kind``, ``regime`` (1 once drift began)."""
    rng = np.random.default_rng([spec.seed, sensor_index])
    n_channels = len(spec.channels)
    latent = _latent(spec.rows, spec.period_s, rng)  # [rows, 3]
    # Sensors of a fleet are the same kind of machine: one design (loadings, operating point), small
    # unit-to-unit differences.
    design = np.random.default_rng([spec.seed, 20_000])
    loadings = design.normal(0, 1, (3, n_channels)) * np.array([[1.0], [0.6], [0.4]])  # [3, channels]
    offsets = design.uniform(5, 50, n_channels) * (1 + rng.normal(0, 0.01, n_channels))
    scales = design.uniform(0.5, 3.0, n_channels) * (1 + rng.normal(0, 0.03, n_channels))
    weight = _drift_weight(spec.rows, spec.drift)[:, None]  # [rows, 1]
    if spec.drift is not None:
        drift_rng = np.random.default_rng([spec.seed, 10_000])  # the same new operating point fleet-wide
        offset_change = drift_rng.normal(0, spec.drift.offset_sd, n_channels)
        gain_change = 1 + drift_rng.uniform(-spec.drift.gain_change, spec.drift.gain_change, n_channels)
    else:
        offset_change, gain_change = np.zeros(n_channels), np.ones(n_channels)
    signal = latent @ loadings  # [rows, channels]
    signal = signal * (1 + weight * (gain_change - 1)) + weight * offset_change
    values = offsets + scales * (signal + rng.normal(0, spec.noise, (spec.rows, n_channels)))

    anomaly = np.zeros(spec.rows, dtype=np.int8)
    kinds = np.array([""] * spec.rows, dtype=object)
    for start, stop in _anomaly_slots(spec, rng):
        kind = str(rng.choice(spec.anomaly_kinds))
        _inject(values, kind, int(rng.integers(0, n_channels)), start, stop, rng)
        anomaly[start:stop] = 1
        kinds[start:stop] = kind

    timestamps = pd.Timestamp(spec.start) + pd.to_timedelta(np.arange(spec.rows), unit="s")
    frame = pd.DataFrame(values, columns=list(spec.channels))
    frame.insert(0, "timestamp", timestamps)
    frame.insert(0, "sensor_id", f"{spec.sensor_prefix}-{sensor_index:03d}")
    frame["anomaly"] = anomaly
    frame["anomaly_kind"] = kinds
    frame["regime"] = (weight[:, 0] > 0).astype(np.int8)
    return frame


def simulate_fleet(spec: FleetSpec) -> pd.DataFrame:
    """Readings of every sensor, interleaved in time order as a live fleet would publish them."""
    frames = [simulate_sensor(spec, i) for i in range(spec.sensors)]
    return pd.concat(frames).sort_values(["timestamp", "sensor_id"], kind="stable").reset_index(drop=True)
