"""The analytics engine without a detector: geometry, tracking, zones and lines on synthetic tracks."""

from __future__ import annotations

import pytest

from pantau.analytics import geometry
from pantau.analytics.engine import AnalyticsEvent, CameraAnalytics, CountingSettings, LineRule, ZoneRule
from pantau.analytics.manifest import analytics_spec, parse_yaml
from pantau.analytics.tracking import Tracker, TrackerSettings
from pantau.triton.contract import Detection

HW = (1000, 1000)  # normalised 0.001 = 1 px
PERSON = 0
# A vertical line down the middle, A at the top, B at the bottom: with y down, cross(B - A, P - A)
# is > 0 to the left of it, so `forward` is right -> left.
MIDDLE = LineRule("middle", (0.5, 0.1), (0.5, 0.9))


def person(cx: float, bottom: float, score: float = 0.9, h: float = 160.0) -> Detection:
    return Detection(PERSON, score, (cx - 30, bottom - h, cx + 30, bottom))


def steps(*stops: float, step: float = 20.0) -> list[float]:
    """x positions from stop to stop, `step` pixels apart (a third of a box width)."""
    xs = [stops[0]]
    for target in stops[1:]:
        while abs(target - xs[-1]) > 1e-9:
            xs.append(xs[-1] + max(-step, min(step, target - xs[-1])))
    return xs


def walk(
    engine: CameraAnalytics, xs: list[float], bottom: float = 500.0, t0: float = 0.0, dt: float = 0.2
) -> list[AnalyticsEvent]:
    """One person walking through the x positions, one sample each; all events."""
    events: list[AnalyticsEvent] = []
    for k, x in enumerate(xs):
        events += engine.update(t0 + k * dt, HW, [person(x, bottom)]).events
    return events


@pytest.mark.parametrize(
    ("a", "b", "p", "sign"),
    [
        ((0, 0), (10, 0), (5, 5), 1),  # A->B to the right, P below it (y down): > 0
        ((0, 0), (10, 0), (5, -5), -1),
        ((0, 0), (0, 10), (-5, 5), 1),  # A->B downwards, P to its left: > 0
        ((0, 0), (0, 10), (5, 5), -1),
        ((0, 0), (10, 10), (10, 0), -1),
        ((0, 0), (10, 10), (5, 5), 0),
    ],
)
def test_side_sign_rule(a: geometry.Point, b: geometry.Point, p: geometry.Point, sign: int) -> None:
    value = geometry.side(a, b, p)
    assert (value > 0) - (value < 0) == sign


def test_geometry_helpers() -> None:
    assert geometry.to_pixels([(0.5, 0.25)], (400, 800)) == ((400.0, 100.0),)
    assert geometry.reference_point((10, 20, 30, 80)) == (20.0, 80.0)
    square = [(0, 0), (10, 0), (10, 10), (0, 10)]
    assert geometry.point_in_polygon((5, 5), square)
    assert not geometry.point_in_polygon((15, 5), square)
    assert geometry.distance_to_polygon((13, 5), square) == pytest.approx(3)


def test_crossing_directions_follow_the_rule() -> None:
    engine = CameraAnalytics((), (MIDDLE,))
    right_to_left = walk(engine, steps(700, 300))
    assert [(e.type, e.direction) for e in right_to_left] == [("line_crossed", "forward")]
    engine2 = CameraAnalytics((), (MIDDLE,))
    left_to_right = walk(engine2, steps(300, 700))
    assert [e.direction for e in left_to_right] == ["backward"]
    assert engine2.summary()["lines"]["middle"] == {
        "forward": 0,
        "backward": 1,
        "classes": {"person": {"forward": 0, "backward": 1}},
    }


def test_jitter_on_the_line_does_not_count() -> None:
    engine = CameraAnalytics((), (MIDDLE,))
    xs = [*steps(700, 510), *([505, 495] * 10), 485, 505, 495, 503]  # within the margin (16 px)
    assert walk(engine, xs) == []
    # ... and then it really crosses: counted once.
    events = walk(engine, steps(490, 300), t0=len(xs) * 0.2)
    assert [e.direction for e in events] == ["forward"]


def test_back_and_forth_counts_each_crossing_or_once_per_direction() -> None:
    xs = steps(700, 300, 700, 300)
    engine = CameraAnalytics((), (MIDDLE,))
    assert [e.direction for e in walk(engine, xs)] == ["forward", "backward", "forward"]
    once = CameraAnalytics((), (MIDDLE,), counting_settings=CountingSettings(once_per_direction=True))
    assert [e.direction for e in walk(once, xs)] == ["forward", "backward"]


def test_first_seen_beyond_the_line_or_round_its_end_is_no_crossing() -> None:
    engine = CameraAnalytics((), (MIDDLE,))
    assert walk(engine, steps(480, 300)) == []  # never seen on the other side
    short = LineRule("short", (0.5, 0.1), (0.5, 0.3))  # ends at y = 300; the walker is at y = 500
    engine2 = CameraAnalytics((), (short,))
    assert walk(engine2, steps(700, 300)) == []


def test_class_filter() -> None:
    cars_only = LineRule("cars", MIDDLE.a, MIDDLE.b, frozenset({"car"}))
    engine = CameraAnalytics((), (cars_only,))
    assert walk(engine, steps(700, 300)) == []


def test_zone_enter_exit_and_loitering() -> None:
    zone = ZoneRule("left", ((0.0, 0.0), (0.45, 0.0), (0.45, 1.0), (0.0, 1.0)), loiter_seconds=2.0)
    engine = CameraAnalytics((zone,), ())
    events = walk(engine, steps(560, 400), dt=0.2)
    assert [e.type for e in events] == ["zone_entered"]
    entered = events[0].time
    assert engine.summary()["zones"]["left"]["occupancy"] == 1
    t0 = len(steps(560, 400)) * 0.2
    more = walk(engine, [400] * 15, t0=t0)
    assert [e.type for e in more] == ["loitering"]
    assert more[0].dwell_s == pytest.approx(2.0, abs=0.2)
    assert more[0].time == pytest.approx(entered + (more[0].dwell_s or 0))
    out = walk(engine, steps(400, 600), t0=t0 + 3.0)
    assert [e.type for e in out] == ["zone_exited"]
    # It left beyond the margin (16 px) outside the edge at x = 450, not when first outside.
    summary = engine.summary()["zones"]["left"]
    assert (summary["entered"], summary["exited"], summary["loitering"], summary["occupancy"]) == (1, 1, 1, 0)


def test_zone_edge_jitter_does_not_flicker() -> None:
    zone = ZoneRule("left", ((0.0, 0.0), (0.45, 0.0), (0.45, 1.0), (0.0, 1.0)))
    engine = CameraAnalytics((zone,), ())
    events = walk(engine, [*steps(600, 440), *([445, 455, 460, 445] * 5)])
    assert [e.type for e in events] == ["zone_entered"]


def test_a_forgotten_track_leaves_its_zone_when_last_seen() -> None:
    zone = ZoneRule("all", ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)))
    engine = CameraAnalytics((zone,), (), tracker_settings=TrackerSettings(lost_seconds=1.0))
    walk(engine, [400, 410, 420])  # last seen at t = 0.4
    events: list[AnalyticsEvent] = []
    for k in range(10):
        events += engine.update(0.6 + 0.2 * k, HW, []).events
    assert [(e.type, e.time) for e in events] == [("zone_exited", 0.4)]
    assert engine.state_size() == 0


def test_reconfigure_keeps_tracks() -> None:
    engine = CameraAnalytics((), (MIDDLE,))
    walk(engine, steps(700, 600))
    ids = {t.track_id for t in engine.update(1.2, HW, [person(580, 500)]).tracks}
    other = LineRule("other", (0.4, 0.1), (0.4, 0.9))
    engine.configure((), (MIDDLE, other))
    events = walk(engine, steps(560, 300), t0=1.4)
    assert {e.track_id for e in events} == ids  # same track, no new id
    assert sorted((e.line, e.direction) for e in events) == [("middle", "forward"), ("other", "forward")]


def test_reset_keeps_ids_unique() -> None:
    engine = CameraAnalytics()
    first = engine.update(0.0, HW, [person(300, 500)])
    first = engine.update(0.2, HW, [person(302, 500)])
    engine.reset()
    engine.update(0.4, HW, [person(300, 500)])
    second = engine.update(0.6, HW, [person(302, 500)])
    assert [t.track_id for t in first.tracks] == [1]
    assert [t.track_id for t in second.tracks] == [2]


def test_tracker_memory_is_bounded() -> None:
    tracker = Tracker(TrackerSettings(max_tracks=20, min_hits=1))
    for k in range(200):  # 5 new far-apart objects each sample, none seen again
        boxes = [((5 * k + x) * 50.0, 0.0, (5 * k + x) * 50.0 + 20, 40.0) for x in range(5)]
        tracker.update(k * 0.1, boxes, [0.9] * 5, [PERSON] * 5)
        assert len(tracker) <= 20
    assert tracker.next_id == 1001


def test_sampled_rate_keeps_ids() -> None:
    """At 2 fps a walker moves most of a box width between samples: one id all the same."""
    engine = CameraAnalytics()
    ids = set()
    for k in range(12):
        ids |= {t.track_id for t in engine.update(k * 0.5, HW, [person(100 + 45 * k, 500)]).tracks}
    assert ids == {1}


def test_manifest_reader() -> None:
    text = """
# a camera
apiVersion: pantau.io/v1alpha1
kind: Camera
metadata: {name: gate}
spec:
  source: {url: "rtsp://cam:554/x"}
  sampling:
    fps: 5
  detection:
    classes: [person, car]
    minScore: 0.4
  zones:
    - name: door
      points:
        - [0.1, 0.1]
        - [0.5, 0.1]
        - [0.5, 0.5]
      loiterSeconds: 30
  lines:
    - {name: kerb, start: [0, 0.5], end: [1, 0.5], classes: [car]}
"""
    spec = analytics_spec(parse_yaml(text))
    assert spec.name == "gate"
    assert spec.fps == 5
    assert spec.min_score == 0.4
    assert spec.classes == frozenset({"person", "car"})
    assert spec.zones == (ZoneRule("door", ((0.1, 0.1), (0.5, 0.1), (0.5, 0.5)), None, 30.0),)
    assert spec.lines == (LineRule("kerb", (0.0, 0.5), (1.0, 0.5), frozenset({"car"})),)
