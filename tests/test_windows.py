"""Per-sensor windows: order, gaps, stride, idle sensors and the rewind point."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from pipeline.windows import WindowAssembler


def feed(assembler: WindowAssembler, sensor: str, times: list[float], offset0: int = 0) -> list:
    windows = []
    for i, ts in enumerate(times):
        windows += assembler.add(sensor, ts, np.array([ts]), ("t", 0, offset0 + i))
    return windows


def test_windows_slide_one_reading_at_a_time_per_sensor() -> None:
    assembler = WindowAssembler(length=4)
    windows = feed(assembler, "a", [0, 1, 2, 3, 4, 5]) + feed(assembler, "b", [0, 1, 2])
    assert [(w.sensor_id, w.start_ts, w.end_ts) for w in windows] == [("a", 0, 3), ("a", 1, 4), ("a", 2, 5)]
    assert windows[-1].values[:, 0].tolist() == [2, 3, 4, 5]


def test_late_and_duplicate_readings_are_dropped_and_counted() -> None:
    assembler = WindowAssembler(length=2)
    feed(assembler, "a", [0, 1, 2, 1.5, 2])
    assert assembler.stats.late == 1
    assert assembler.stats.duplicates == 1
    assert assembler.stats.accepted == 3


def test_short_gaps_are_forward_filled_long_gaps_restart() -> None:
    assembler = WindowAssembler(length=3, max_fill_s=3)
    windows = feed(assembler, "a", [0, 1, 3])  # one missing second -> filled
    assert assembler.stats.filled == 1
    assert [w.values[:, 0].tolist() for w in windows] == [[0, 1, 1], [1, 1, 3]]
    windows = feed(assembler, "a", [20, 21, 22])  # 17 s gap -> restart, no window spans it
    assert assembler.stats.gap_restarts == 1
    assert [(w.start_ts, w.end_ts) for w in windows] == [(20, 22)]


def test_stride_is_a_property_of_timestamps_not_of_batching() -> None:
    times = [float(t) for t in range(20)]
    one = WindowAssembler(length=5, stride=3)
    expected = [w.end_ts for w in feed(one, "a", times)]
    assert all(end % 3 == 0 for end in expected)
    restarted = WindowAssembler(length=5, stride=3)  # rebuilt from a later point, as after a rewind
    again = [w.end_ts for w in feed(restarted, "a", times[7:])]
    assert again == [end for end in expected if end >= 11]


def test_idle_sensors_are_evicted() -> None:
    assembler = WindowAssembler(length=3, idle_ttl_s=60)
    feed(assembler, "quiet", [0, 1])
    feed(assembler, "busy", [100, 101])
    assert assembler.evict_idle(now_ts=101) == ["quiet"]
    assert len(assembler) == 1


def test_rewind_offsets_point_at_the_oldest_reading_still_needed() -> None:
    assembler = WindowAssembler(length=3)
    for offset, (sensor, ts) in enumerate([("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("a", 3)]):
        assembler.add(sensor, float(ts), np.zeros(1), ("t", 0, offset))
    # a holds offsets 2, 4, 5; b holds 1, 3
    assert assembler.rewind_offsets() == {("t", 0): 1}
    assert assembler.drop_partitions([("t", 0)]) == 2
    assert assembler.rewind_offsets() == {}


@given(st.lists(st.integers(0, 50), min_size=1, max_size=80), st.integers(1, 6))
def test_replay_from_rewind_point_reproduces_exactly_the_missing_windows(stamps: list[int], split: int) -> None:
    times = [float(t) for t in sorted(set(stamps))]
    full = WindowAssembler(length=3, max_fill_s=2)
    all_windows = feed(full, "a", times)
    cut = min(split, len(times))
    first = WindowAssembler(length=3, max_fill_s=2)
    before = feed(first, "a", times[:cut])
    rewind = first.rewind_offsets().get(("t", 0), cut)
    rebuilt = WindowAssembler(length=3, max_fill_s=2)
    after = [w for w in feed(rebuilt, "a", times[rewind:], offset0=rewind) if w.end_position[2] >= cut]
    assert [(w.start_ts, w.end_ts) for w in before + after] == [(w.start_ts, w.end_ts) for w in all_windows]


_readings = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from([1.0, 1.0, 1.0, 1.0, 0.0, -1.0, 2.0, 3.0, 9.0, 0.4, 1.6]),  # step to that sensor's next ts
        st.sampled_from([0, 1]),  # partition
    ),
    min_size=1,
    max_size=120,
)


@given(_readings, st.lists(st.integers(1, 40), min_size=1, max_size=6), st.sampled_from([1, 2, 3]))
def test_a_batch_gives_the_windows_and_counts_of_reading_by_reading(
    readings: list[tuple[str, float, int]], cuts: list[int], stride: int
) -> None:
    def assembler() -> WindowAssembler:
        return WindowAssembler(length=4, stride=stride, max_fill_s=3.0)

    clock: dict[str, float] = {}
    sensors, times, partitions = [], [], []
    for sensor, step, partition in readings:
        clock[sensor] = clock.get(sensor, 100.0) + step
        sensors.append(sensor)
        times.append(clock[sensor])
        partitions.append(partition)
    values = np.column_stack([np.array(times), np.arange(len(times), dtype=float)])
    offsets = np.arange(len(times))

    one_by_one = assembler()
    expected = [
        w
        for i in range(len(times))
        for w in one_by_one.add(sensors[i], times[i], values[i], ("t", partitions[i], int(offsets[i])))
    ]
    batched, got, start = assembler(), [], 0
    for cut in [*cuts, len(times)]:
        end = min(len(times), start + cut)
        batch = batched.add_batch(
            sensors[start:end],
            np.array(times[start:end]),
            values[start:end],
            ["t"] * (end - start),
            np.array(partitions[start:end]),
            offsets[start:end],
        )
        got += batch.windows()
        start = end
    key = [(w.sensor_id, w.start_ts, w.end_ts, w.end_position, w.first_position[2]) for w in expected]
    assert [(w.sensor_id, w.start_ts, w.end_ts, w.end_position, w.first_position[2]) for w in got] == key
    assert all(np.array_equal(a.values, b.values) for a, b in zip(expected, got, strict=True))
    assert batched.stats == one_by_one.stats
    assert batched.rewind_offsets() == one_by_one.rewind_offsets()
    assert batched.observed_period() == one_by_one.observed_period()
