"""The ingest side of analytics: a Camera's zones and lines as the engine's rules, its events on the wire,
the interval counts that the Camera's status shows, and what the operator writes of them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pantau.analytics.engine import AnalyticsEvent
from pantau.contract import AnalyticsInterval, AnalyticsReport, LineCounts, ZoneCounts
from pantau.ingest.analytics import IntervalCounts, engine_for, rules_of, wire_events
from pantau.ingest.events import TrackEvent
from pantau.models.camera import CameraSpec
from pantau.reconcile.camera import analytics_summary
from tests.cases_reconcile import report

SPEC = CameraSpec.model_validate(
    {
        "siteRef": {"name": "alun"},
        "source": {"url": "rtsp://10.0.0.1/x", "protocol": "rtsp"},
        "zones": [{"name": "kios", "points": [[0.1, 0.1], [0.5, 0.1], [0.5, 0.5]], "loiterSeconds": 30}],
        "lines": [{"name": "gerbang", "start": [0.0, 0.5], "end": [1.0, 0.5], "classes": ["person"]}],
    }
)


def test_the_cameras_zones_and_lines_become_the_engines_rules() -> None:
    zones, lines = rules_of(SPEC)
    assert [(z.name, z.points, z.classes, z.loiter_seconds) for z in zones] == [
        ("kios", ((0.1, 0.1), (0.5, 0.1), (0.5, 0.5)), None, 30)
    ]
    assert [(li.name, li.a, li.b, li.classes) for li in lines] == [
        ("gerbang", (0.0, 0.5), (1.0, 0.5), frozenset({"person"}))
    ]
    summary = engine_for(SPEC).summary()
    assert set(summary["lines"]) == {"gerbang"}
    assert set(summary["zones"]) == {"kios"}


def test_engine_events_go_on_the_wire_with_the_frame_and_its_trace() -> None:
    traceparent = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    found = [
        AnalyticsEvent("line_crossed", 7, "person", 1_700_000_000.25, line="gerbang", direction="forward"),
        AnalyticsEvent("zone_exited", 7, "person", 1_700_000_000.25, zone="kios", dwell_s=12.3456),
    ]
    wire = wire_events(
        found, camera="ns/cam", site="alun", pod="p-0", frame_id="u:1:9", traceparent=traceparent
    )
    crossed, left = (TrackEvent.model_validate_json(e.to_json()) for e in wire)
    assert crossed.type == "line_crossed"
    assert (crossed.line, crossed.direction, crossed.track_id, crossed.class_name) == (
        "gerbang",
        "forward",
        7,
        "person",
    )
    assert crossed.timestamp == datetime.fromtimestamp(1_700_000_000.25, UTC)
    assert crossed.traceparent == traceparent
    assert '"class":"person"' in wire[0].to_json()
    assert '"zone"' not in wire[0].to_json()  # what does not apply is left out
    assert left.dwell_s == 12.346
    assert crossed.idempotency_key != left.idempotency_key


def summary(forward: int, entered: int, occupancy: int) -> dict[str, object]:
    return {
        "lines": {
            "gerbang": {"forward": forward, "backward": 0, "classes": {"person": {"forward": forward}}}
        },
        "zones": {"kios": {"entered": entered, "exited": 0, "loitering": 0, "occupancy": occupancy}},
    }


def test_interval_counts_are_the_difference_over_a_clock_aligned_interval() -> None:
    counts = IntervalCounts(300)
    counts.roll(1_000_010.0, summary(5, 2, 1))  # starts the interval 999_900 .. 1_000_200
    assert counts.last is None
    counts.roll(1_000_100.0, summary(8, 3, 2))
    assert counts.last is None  # not over yet
    counts.roll(1_000_205.0, summary(9, 4, 3))
    last = counts.last
    assert last is not None
    assert (last.start.timestamp(), last.end.timestamp()) == (999_900.0, 1_000_200.0)
    assert last.lines["gerbang"].forward == 4
    assert last.lines["gerbang"].classes == {"person": {"forward": 4}}
    assert (last.zones["kios"].entered, last.zones["kios"].occupancy) == (2, 3)  # occupancy: as it is now
    with pytest.raises(ValueError, match="interval"):
        IntervalCounts(0)


def test_the_camera_status_shows_the_last_interval_only() -> None:
    assert analytics_summary(report("cam")) is None
    start, end = datetime(2026, 12, 7, 10, 0, tzinfo=UTC), datetime(2026, 12, 7, 10, 5, tzinfo=UTC)
    interval = AnalyticsInterval(
        start=start,
        end=end,
        lines={"gerbang": LineCounts(forward=3, backward=1, classes={"person": {"forward": 3}})},
        zones={"kios": ZoneCounts(entered=2, exited=1, occupancy=1)},
    )
    live = report(
        "cam",
        analytics=AnalyticsReport(
            tracks=4, lines={"gerbang": LineCounts(forward=99)}, last_interval=interval
        ),
    )
    assert analytics_summary(live) == {
        "intervalStart": "2026-12-07T10:00:00Z",
        "intervalEnd": "2026-12-07T10:05:00Z",
        "lines": {"gerbang": {"forward": 3, "backward": 1}},
        "zones": {"kios": {"entered": 2, "exited": 1, "loitering": 0, "occupancy": 1}},
    }
