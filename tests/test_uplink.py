"""Unit and property tests of the uplink planner (`pantau.ingest.uplink`): the size model, each step of
`plan` and its message, the validation, and `ByteMeter` on a fake clock.

The properties are the promises of the module docstring: within the target whenever a fit exists,
monotone in the budget, priority order kept, and the same plan whatever the cameras' order.
Derandomized and without an example database, like tests/test_scaling.py.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import FrozenInstanceError

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pantau.ingest.uplink import (
    FPS_STEP,
    MAX_QUALITY,
    MIN_SCALE,
    QUALITY_FACTORS,
    REF_QUALITY,
    SCALE_FACTORS,
    SCALE_STEP,
    ByteMeter,
    CameraDemand,
    Setting,
    UplinkPlan,
    frame_size,
    plan,
    quality_factor,
    scale_factor,
)

PROPERTY = settings(max_examples=300, deadline=None, database=None, derandomize=True)

MBIT = 1e6


def camera(name: str, priority: int = 50, fps: float = 5.0, frame_bytes: float = 50_000.0) -> CameraDemand:
    return CameraDemand(name=name, priority=priority, fps=fps, frame_bytes=frame_bytes)


def predicted(cameras: Sequence[CameraDemand], chosen: UplinkPlan, event_bytes_per_s: float = 0.0) -> float:
    """The plan's bytes recomputed from its settings, independently of `plan`."""
    frames = 0.0
    for cam in cameras:
        setting = chosen.settings[cam.name]
        frames += setting.fps * frame_size(cam.frame_bytes, setting.quality, setting.scale)
    return event_bytes_per_s + frames


def bits(bytes_per_s: float, headroom: float = 0.9) -> float:
    """The budget whose target is exactly `bytes_per_s`."""
    return bytes_per_s * 8 / headroom


# --- The size model ------------------------------------------------------------------------------


def test_tables_are_increasing_and_anchored_at_the_reference() -> None:
    for table in (QUALITY_FACTORS, SCALE_FACTORS):
        xs = [x for x, _ in table]
        ys = [y for _, y in table]
        assert xs == sorted(set(xs))
        assert ys == sorted(set(ys))
    assert dict(QUALITY_FACTORS)[REF_QUALITY] == 1.0
    assert QUALITY_FACTORS[0][0] == 1
    assert QUALITY_FACTORS[-1][0] == MAX_QUALITY
    assert SCALE_FACTORS[0][0] == MIN_SCALE
    assert SCALE_FACTORS[-1] == (1.0, 1.0)


def test_frame_size_at_the_reference_is_the_measured_bytes() -> None:
    assert frame_size(40_000.0, REF_QUALITY, 1.0) == 40_000.0


def test_frame_size_uses_the_table_points_and_interpolates_between_them() -> None:
    assert frame_size(1000.0, 40, 1.0) == pytest.approx(517.0)
    assert frame_size(1000.0, 80, 0.5) == pytest.approx(330.0)
    assert quality_factor(42) == pytest.approx(0.517 + (0.562 - 0.517) * 2 / 5)
    assert scale_factor(0.5625) == pytest.approx((0.33 + 0.44) / 2)
    assert frame_size(1000.0, 40, 0.5) == pytest.approx(1000.0 * 0.517 * 0.33)


def test_a_smaller_frame_costs_more_than_its_pixels() -> None:
    # Measured, not scale**2: a half-size frame keeps about a third of its bytes.
    assert scale_factor(0.5) > 0.5**2


def test_frame_size_grows_with_quality_and_scale() -> None:
    sizes = [frame_size(1000.0, quality, 1.0) for quality in range(1, MAX_QUALITY + 1)]
    assert sizes == sorted(set(sizes))
    scales = [MIN_SCALE + i * (1 - MIN_SCALE) / 100 for i in range(101)]
    assert [scale_factor(scale) for scale in scales] == sorted({scale_factor(scale) for scale in scales})


@pytest.mark.parametrize(
    ("frame_bytes", "quality", "scale", "field"),
    [
        (-1.0, 80, 1.0, "frame_bytes"),
        (math.nan, 80, 1.0, "frame_bytes"),
        (1000.0, 0, 1.0, "quality"),
        (1000.0, 96, 1.0, "quality"),
        (1000.0, 80, 0.1, "scale"),
        (1000.0, 80, 1.01, "scale"),
    ],
)
def test_frame_size_rejects_out_of_range(frame_bytes: float, quality: int, scale: float, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        frame_size(frame_bytes, quality, scale)


# --- The steps of plan -----------------------------------------------------------------------------

CAMERAS = (
    camera("cam-a", priority=10, fps=5.0, frame_bytes=60_000.0),
    camera("cam-b", priority=50, fps=5.0, frame_bytes=60_000.0),
    camera("cam-c", priority=90, fps=2.0, frame_bytes=40_000.0),
)
FULL = 5 * 60_000.0 * 2 + 2 * 40_000.0  # bytes per second at the reference setting and asked fps


def test_everything_fits_stage_none() -> None:
    chosen = plan(CAMERAS, bits(FULL + 1000.0), 1000.0)
    assert chosen.stage == "none"
    assert not chosen.limited
    assert chosen.settings == {
        "cam-a": Setting(quality=REF_QUALITY, scale=1.0, fps=5.0),
        "cam-b": Setting(quality=REF_QUALITY, scale=1.0, fps=5.0),
        "cam-c": Setting(quality=REF_QUALITY, scale=1.0, fps=2.0),
    }
    assert chosen.bytes_per_s == pytest.approx(FULL + 1000.0)
    assert chosen.message.startswith("no limit: quality 80, scale 1, asked fps; ")


def test_quality_first_the_highest_that_fits_for_all_cameras() -> None:
    chosen = plan(CAMERAS, bits(FULL * 0.8), 0.0)
    assert chosen.stage == "quality"
    assert chosen.limited
    qualities = {setting.quality for setting in chosen.settings.values()}
    assert len(qualities) == 1
    quality = qualities.pop()
    assert 40 <= quality < REF_QUALITY
    assert FULL * quality_factor(quality) <= FULL * 0.8 < FULL * quality_factor(quality + 1)
    assert all(setting.scale == 1.0 for setting in chosen.settings.values())
    assert all(chosen.settings[cam.name].fps == cam.fps for cam in CAMERAS)
    assert chosen.message.startswith(f"quality {quality}, scale 1, asked fps; ")


def test_resolution_next_at_the_quality_floor() -> None:
    target = FULL * quality_factor(40) * 0.5
    chosen = plan(CAMERAS, bits(target), 0.0)
    assert chosen.stage == "resolution"
    scale = chosen.settings["cam-a"].scale
    assert {s.scale for s in chosen.settings.values()} == {scale}
    assert {s.quality for s in chosen.settings.values()} == {40}
    assert 0.5 <= scale < 1.0
    assert chosen.bytes_per_s <= target
    assert FULL * quality_factor(40) * scale_factor(scale + SCALE_STEP) > target
    assert chosen.message.startswith(f"quality 40, scale {scale:.3g}, asked fps; ")


def test_fps_last_lowest_priority_first_and_the_last_cut_only_as_needed() -> None:
    per_frame = {cam.name: frame_size(cam.frame_bytes, 40, 0.5) for cam in CAMERAS}
    # Enough for cam-a at the floor, cam-c at its ask and cam-b at 3 fps.
    target = 0.1 * per_frame["cam-a"] + 3.0 * per_frame["cam-b"] + 2.0 * per_frame["cam-c"]
    chosen = plan(CAMERAS, bits(target), 0.0)
    assert chosen.stage == "fps"
    assert chosen.limited
    assert {(s.quality, s.scale) for s in chosen.settings.values()} == {(40, 0.5)}
    assert chosen.settings["cam-a"].fps == pytest.approx(0.1)
    assert chosen.settings["cam-b"].fps == pytest.approx(3.0, abs=FPS_STEP)
    assert chosen.settings["cam-b"].fps <= 3.0 + 1e-9
    assert chosen.settings["cam-c"].fps == 2.0
    assert chosen.bytes_per_s <= target
    # One grid step more for cam-b no longer fits.
    assert chosen.bytes_per_s + FPS_STEP * per_frame["cam-b"] > target * (1 - 1e-12)
    assert chosen.message.startswith("quality 40, scale 0.5, fps: cam-a 0.1 (asked 5), cam-b 3 (asked 5); ")


def test_fps_ties_in_priority_are_cut_by_name() -> None:
    cameras = [camera("zeta", priority=20), camera("alpha", priority=20), camera("top", priority=99)]
    per_frame = frame_size(50_000.0, 40, 0.5)
    chosen = plan(cameras, bits(per_frame * (0.1 + 2.5 + 5.0)), 0.0)
    assert chosen.settings["alpha"].fps == pytest.approx(0.1)
    assert chosen.settings["zeta"].fps == pytest.approx(2.5, abs=FPS_STEP)
    assert chosen.settings["top"].fps == 5.0


def test_a_camera_asking_below_min_fps_keeps_its_ask() -> None:
    cameras = [camera("slow", priority=0, fps=0.05), camera("fast", priority=100, fps=10.0)]
    per_frame = frame_size(50_000.0, 40, 0.5)
    chosen = plan(cameras, bits(per_frame * (0.05 + 4.0)), 0.0)
    assert chosen.settings["slow"].fps == 0.05
    assert chosen.settings["fast"].fps == pytest.approx(4.0, abs=FPS_STEP)


def test_events_are_reserved_first() -> None:
    without = plan(CAMERAS, bits(FULL), 0.0)
    assert without.stage == "none"
    chosen = plan(CAMERAS, bits(FULL), 10_000.0)
    assert chosen.stage == "quality"
    assert chosen.bytes_per_s == pytest.approx(predicted(CAMERAS, chosen, 10_000.0))
    assert chosen.bytes_per_s <= FULL


def test_budget_too_small_returns_the_floors_and_what_would_fit() -> None:
    chosen = plan(CAMERAS, 10_000.0, 2000.0)
    assert chosen.limited
    assert chosen.stage == "fps"
    assert set(chosen.settings.values()) == {Setting(quality=40, scale=0.5, fps=0.1)}
    floors = 2000.0 + 0.1 * sum(frame_size(cam.frame_bytes, 40, 0.5) for cam in CAMERAS)
    assert chosen.bytes_per_s == pytest.approx(floors)
    needed = floors * 8 / 0.9 / MBIT
    assert chosen.message == (
        f"budget 0.01 Mbit/s is too small for 3 camera(s): at quality 40, scale 0.5 and at most 0.1 fps "
        f"they need {needed:.3g} Mbit/s (events 0.016 Mbit/s, headroom 90% included)"
    )
    # That budget does fit.
    assert plan(CAMERAS, needed * MBIT * 1.001, 2000.0).bytes_per_s <= needed * MBIT * 1.001 * 0.9 / 8


def test_message_names_five_cut_cameras_and_counts_the_rest() -> None:
    cameras = [camera(f"cam-{i}", priority=i) for i in range(8)]
    chosen = plan(cameras, bits(8 * 0.1 * frame_size(50_000.0, 40, 0.5) * 1.01), 0.0)
    cut = chosen.message.split("fps: ")[1].split(";")[0]
    assert cut.count("(asked 5)") == 5
    assert cut.endswith(", 3 more")  # all eight cut: five named, three counted


def test_custom_floors_and_headroom() -> None:
    chosen = plan(CAMERAS, 50_000.0, 0.0, quality_floor=20, scale_floor=0.25, min_fps=0.5, headroom=1.0)
    assert {(s.quality, s.scale) for s in chosen.settings.values()} == {(20, 0.25)}
    assert chosen.bytes_per_s <= 50_000.0 / 8


def test_no_cameras() -> None:
    chosen = plan([], 1e6, 1000.0)
    assert chosen.settings == {}
    assert chosen.stage == "none"
    assert chosen.bytes_per_s == 1000.0


def test_plan_is_frozen_and_does_not_touch_its_input() -> None:
    cameras = list(CAMERAS)
    chosen = plan(cameras, 1e6, 0.0)
    assert cameras == list(CAMERAS)
    with pytest.raises(FrozenInstanceError):
        chosen.stage = "none"  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        CAMERAS[0].fps = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"priority": 101}, "priority"),
        ({"priority": -1}, "priority"),
        ({"fps": 0.0}, "fps"),
        ({"fps": math.inf}, "fps"),
        ({"frame_bytes": -5.0}, "frame_bytes"),
        ({"frame_bytes": 0.0}, "frame_bytes"),
        ({"name": ""}, "name"),
    ],
)
def test_camera_demand_rejects_bad_fields(kwargs: dict[str, object], field: str) -> None:
    fields: dict[str, object] = {"name": "cam", "priority": 50, "fps": 5.0, "frame_bytes": 1000.0}
    fields.update(kwargs)
    with pytest.raises(ValueError, match=f"CameraDemand.{field}"):
        CameraDemand(**fields)


@pytest.mark.parametrize(
    ("budget", "events", "kwargs", "field"),
    [
        (0.0, 0.0, {}, "budget_bps"),
        (-1e6, 0.0, {}, "budget_bps"),
        (math.nan, 0.0, {}, "budget_bps"),
        (1e6, -1.0, {}, "event_bytes_per_s"),
        (1e6, 0.0, {"quality_floor": 0}, "quality_floor"),
        (1e6, 0.0, {"quality_floor": 81}, "quality_floor"),
        (1e6, 0.0, {"scale_floor": 0.1}, "scale_floor"),
        (1e6, 0.0, {"min_fps": 0.0}, "min_fps"),
        (1e6, 0.0, {"headroom": 0.0}, "headroom"),
        (1e6, 0.0, {"headroom": 1.5}, "headroom"),
    ],
)
def test_plan_rejects_bad_arguments(
    budget: float, events: float, kwargs: dict[str, float], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        plan(CAMERAS, budget, events, **kwargs)


def test_plan_rejects_duplicate_names() -> None:
    with pytest.raises(ValueError, match=r"unique.*cam-a"):
        plan([*CAMERAS, camera("cam-a")], 1e6, 0.0)


# --- Properties ------------------------------------------------------------------------------------

NAMES = [f"cam-{i}" for i in range(10)]


@st.composite
def demands(draw: st.DrawFn) -> list[CameraDemand]:
    names = draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=8))
    return [
        CameraDemand(
            name=name,
            priority=draw(st.integers(0, 100)),
            fps=draw(st.floats(0.05, 30.0)),
            frame_bytes=draw(st.floats(1_000.0, 500_000.0)),
        )
        for name in names
    ]


budgets = st.floats(3.0, 8.5).map(lambda exponent: 10.0**exponent)  # 1 kbit/s .. 300 Mbit/s
events = st.sampled_from([0.0, 500.0, 20_000.0])
floors = st.fixed_dictionaries(
    {
        "quality_floor": st.integers(1, REF_QUALITY),
        "scale_floor": st.sampled_from([MIN_SCALE, 0.3, 0.5, 0.75, 1.0]),
        "min_fps": st.sampled_from([0.02, 0.1, 1.0]),
        "headroom": st.sampled_from([0.5, 0.9, 1.0]),
    }
)


@PROPERTY
@given(demands(), budgets, events, floors)
def test_within_target_whenever_a_fit_exists(
    cameras: list[CameraDemand], budget: float, event_rate: float, options: dict[str, float]
) -> None:
    chosen = plan(cameras, budget, event_rate, **options)
    target = options["headroom"] * budget / 8
    quality, scale, min_fps = int(options["quality_floor"]), options["scale_floor"], options["min_fps"]
    at_floors = event_rate + sum(
        min(cam.fps, min_fps) * frame_size(cam.frame_bytes, quality, scale) for cam in cameras
    )
    assert chosen.bytes_per_s == pytest.approx(predicted(cameras, chosen, event_rate), rel=1e-9)
    if at_floors <= target:
        assert chosen.bytes_per_s <= target
        assert "too small" not in chosen.message
    else:
        assert "too small" in chosen.message
    assert chosen.limited == any(
        s.quality < REF_QUALITY or s.scale < 1.0 or s.fps < cam.fps
        for cam in cameras
        for s in [chosen.settings[cam.name]]
    )


@PROPERTY
@given(demands(), budgets, st.floats(1.0, 20.0), events, floors)
def test_a_larger_budget_never_lowers_any_setting(
    cameras: list[CameraDemand], budget: float, factor: float, event_rate: float, options: dict[str, float]
) -> None:
    small = plan(cameras, budget, event_rate, **options)
    large = plan(cameras, budget * factor, event_rate, **options)
    for cam in cameras:
        before, after = small.settings[cam.name], large.settings[cam.name]
        assert after.quality >= before.quality
        assert after.scale >= before.scale
        assert after.fps >= before.fps
    stages = ["none", "quality", "resolution", "fps"]
    assert stages.index(large.stage) <= stages.index(small.stage)


@PROPERTY
@given(demands(), budgets, events, floors)
def test_a_higher_priority_keeps_its_rate_longer(
    cameras: list[CameraDemand], budget: float, event_rate: float, options: dict[str, float]
) -> None:
    chosen = plan(cameras, budget, event_rate, **options)
    for high in cameras:
        for low in cameras:
            if high.priority > low.priority:
                # Never below a lower-priority camera, unless it asked for less than that one got.
                got_high, got_low = chosen.settings[high.name].fps, chosen.settings[low.name].fps
                assert got_high >= min(got_low, high.fps)
                if got_high < high.fps:
                    assert got_low == min(low.fps, options["min_fps"])


@PROPERTY
@given(demands(), budgets, events, floors, st.randoms(use_true_random=False))
def test_the_same_plan_whatever_the_order(
    cameras: list[CameraDemand],
    budget: float,
    event_rate: float,
    options: dict[str, float],
    rng: random.Random,
) -> None:
    shuffled = list(cameras)
    rng.shuffle(shuffled)
    first = plan(cameras, budget, event_rate, **options)
    assert plan(shuffled, budget, event_rate, **options) == first
    assert plan(cameras, budget, event_rate, **options) == first


# --- ByteMeter -------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_meter_rates_over_the_sliding_window() -> None:
    clock = FakeClock()
    meter = ByteMeter(window=10.0, clock=clock)
    assert meter.bytes_per_s() == 0.0
    for _ in range(20):  # one event of 100 bytes and one frame of 1000 bytes a second
        clock.now += 1.0
        meter.add_event(100)
        meter.add_frame("cam-a", 1000, REF_QUALITY, 1.0)
    assert meter.bytes_per_s() == pytest.approx(1100.0)
    assert meter.event_bytes_per_s() == pytest.approx(100.0)
    clock.now += 5.0  # silence for half the window
    assert meter.bytes_per_s() == pytest.approx(550.0)
    clock.now += 5.0
    assert meter.bytes_per_s() == 0.0


def test_meter_counts_over_the_time_it_ran_until_a_window_has_passed() -> None:
    clock = FakeClock()
    meter = ByteMeter(window=10.0, clock=clock)
    clock.now += 2.0
    meter.add_event(400)
    assert meter.event_bytes_per_s() == pytest.approx(200.0)


def test_meter_estimates_reference_bytes_from_any_setting() -> None:
    meter = ByteMeter(clock=FakeClock())
    for quality, scale in [(80, 1.0), (40, 0.5), (62, 0.77), (95, 0.2)]:
        meter.add_frame("cam-a", round(frame_size(30_000.0, quality, scale)), quality, scale)
    assert meter.frame_bytes()["cam-a"] == pytest.approx(30_000.0, rel=1e-3)


def test_meter_smooths_exponentially_and_forgets() -> None:
    meter = ByteMeter(smoothing=0.25, clock=FakeClock())
    meter.add_frame("cam-a", 1000, REF_QUALITY, 1.0)
    meter.add_frame("cam-a", 2000, REF_QUALITY, 1.0)
    assert meter.frame_bytes() == {"cam-a": pytest.approx(1250.0)}
    meter.forget("cam-a")
    meter.forget("cam-b")
    assert meter.frame_bytes() == {}


def test_meter_feeds_plan() -> None:
    clock = FakeClock()
    meter = ByteMeter(clock=clock)
    for _ in range(10):
        clock.now += 0.5
        meter.add_frame("cam-a", 24_000, 60, 0.75)
        meter.add_event(300)
    cameras = [CameraDemand("cam-a", 50, 2.0, meter.frame_bytes()["cam-a"])]
    chosen = plan(cameras, 2 * MBIT, meter.event_bytes_per_s())
    assert chosen.bytes_per_s <= 0.9 * 2 * MBIT / 8


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"window": 0.0}, "window"), ({"smoothing": 0.0}, "smoothing"), ({"smoothing": 1.5}, "smoothing")],
)
def test_meter_rejects_bad_arguments(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ByteMeter(clock=FakeClock(), **kwargs)


def test_meter_rejects_bad_samples() -> None:
    meter = ByteMeter(clock=FakeClock())
    with pytest.raises(ValueError, match="nbytes"):
        meter.add_event(-1)
    with pytest.raises(ValueError, match="nbytes"):
        meter.add_frame("cam-a", 0, 80, 1.0)
    with pytest.raises(ValueError, match="quality"):
        meter.add_frame("cam-a", 100, 0, 1.0)
