"""The load meter: each camera's CPU, its own threads plus its share of the pod's other work."""

from __future__ import annotations

import pytest

from pantau.ingest.load import LoadMeter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.cpu = 0.0

    def mono(self) -> float:
        return self.now

    def process(self) -> float:
        return self.cpu


def meter(clock: Clock, window: float = 30.0) -> LoadMeter:
    return LoadMeter(window=window, clock=clock.mono, process_cpu=clock.process)


def test_the_rest_is_shared_in_proportion_and_the_shares_add_up_to_the_process() -> None:
    clock = Clock()
    m = meter(clock)
    m.sample({"a": 0.0, "b": 0.0})
    clock.now, clock.cpu = 10.0, 6.0  # 0.6 cores: cameras' own 1.0 + 3.0 s, the rest 2.0 s
    m.sample({"a": 1.0, "b": 3.0})
    cores = m.cores()
    assert cores["a"] == pytest.approx((1.0 + 2.0 * 1 / 4) / 10)
    assert cores["b"] == pytest.approx((3.0 + 2.0 * 3 / 4) / 10)
    assert sum(cores.values()) == pytest.approx(m.pod_cores()) == pytest.approx(0.6)
    assert m.cpu_seconds("a") == pytest.approx(1.5)


def test_without_own_cpu_the_rest_is_split_evenly_and_new_cameras_count_from_their_first_sample() -> None:
    clock = Clock()
    m = meter(clock)
    m.sample({"a": 0.0, "b": 0.0})
    clock.now, clock.cpu = 5.0, 1.0
    m.sample({"a": 0.0, "b": 0.0, "c": 7.0})  # c's 7 s were spent before it was first seen
    assert m.cores() == {"a": pytest.approx(0.1), "b": pytest.approx(0.1)}
    clock.now, clock.cpu = 10.0, 2.0
    m.sample({"a": 0.0, "b": 0.0, "c": 7.5})
    # c alone used CPU of its own: the rest goes with it.
    assert m.cpu_seconds("c") == pytest.approx(1.0)
    assert m.cpu_seconds("a") == pytest.approx(0.5)


def test_the_window_slides_and_a_gone_camera_is_forgotten() -> None:
    clock = Clock()
    m = meter(clock, window=10.0)
    for second in range(0, 31, 5):
        clock.now = float(second)
        clock.cpu = 0.1 * second if second <= 15 else 1.5 + 0.5 * (second - 15)  # 0.1 cores, then 0.5
        m.sample({"a": clock.cpu * 0.5})
    assert m.cores()["a"] == pytest.approx(0.5)  # only the last 10 s count
    m.sample({})
    assert m.cores() == {}
    assert m.cpu_seconds("a") == 0.0


def test_a_meter_needs_a_window() -> None:
    with pytest.raises(ValueError, match="window"):
        LoadMeter(window=0)
    assert LoadMeter().cores() == {}
    assert LoadMeter().pod_cores() == 0.0
