"""The analytics of one camera inside an ingest pod: the Camera's zones and lines as the engine's rules,
its events on the wire, and its counts in /status, whole and by interval.

The engine (pantau.analytics) tracks objects and applies the rules; this module only translates. The
interval counts are what the operator writes on the Camera's status: counts since the start change with
every crossing, counts of the last completed interval (5 minutes by default, aligned to the clock)
change at most once an interval, so a busy junction does not become a stream of status writes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pantau.analytics.engine import AnalyticsEvent, CameraAnalytics, LineRule, ZoneRule
from pantau.contract import AnalyticsCounts, AnalyticsInterval, AnalyticsReport
from pantau.ingest.events import TrackEvent
from pantau.models.camera import CameraSpec


def rules_of(spec: CameraSpec) -> tuple[list[ZoneRule], list[LineRule]]:
    """The Camera's zones and lines (normalised, as in the spec) as the engine's rules."""
    zones = [
        ZoneRule(
            name=z.name,
            points=tuple(z.points),
            classes=frozenset(z.classes) if z.classes else None,
            loiter_seconds=z.loiter_seconds,
        )
        for z in spec.zones
    ]
    lines = [
        LineRule(name=li.name, a=li.start, b=li.end, classes=frozenset(li.classes) if li.classes else None)
        for li in spec.lines
    ]
    return zones, lines


def engine_for(spec: CameraSpec) -> CameraAnalytics:
    return CameraAnalytics(*rules_of(spec))


def wire_events(
    found: Sequence[AnalyticsEvent],
    *,
    camera: str,
    site: str,
    pod: str,
    frame_id: str,
    traceparent: str | None,
) -> list[TrackEvent]:
    """The engine's events of one frame, as sinks carry them."""
    return [
        TrackEvent(
            type=e.type,
            camera=camera,
            site=site,
            pod=pod,
            timestamp=datetime.fromtimestamp(e.time, UTC),
            frame_id=frame_id,
            track_id=e.track_id,
            class_name=e.class_name,
            zone=e.zone,
            line=e.line,
            direction=e.direction,
            dwell_s=round(e.dwell_s, 3) if e.dwell_s is not None else None,
            traceparent=traceparent,
        )
        for e in found
    ]


def _minus(now: Mapping[str, Any], before: Mapping[str, Any], keep: tuple[str, ...] = ()) -> dict[str, Any]:
    """Counts in `now` less those in `before`, recursively; `keep` names figures taken as they are now."""
    out: dict[str, Any] = {}
    for key, value in now.items():
        if isinstance(value, Mapping):
            out[key] = _minus(value, before.get(key) or {}, keep)
        elif key in keep:
            out[key] = value
        else:
            out[key] = max(int(value) - int(before.get(key) or 0), 0)
    return out


class IntervalCounts:
    """Counts of the last completed interval of `seconds`, aligned to the clock (a 300 s interval ends
    at :00, :05, ...)."""

    def __init__(self, seconds: float = 300.0) -> None:
        if not (math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"the analytics interval must be above 0 seconds, got {seconds}")
        self.seconds = seconds
        self._start: float | None = None
        self._base: dict[str, Any] = {}
        self.last: AnalyticsInterval | None = None

    def roll(self, now: float, summary: Mapping[str, Any]) -> None:
        """Close the interval under way if `now` is past its end; the first call starts one."""
        boundary = math.floor(now / self.seconds) * self.seconds
        if self._start is None:
            self._start, self._base = boundary, dict(summary)
            return
        if boundary <= self._start:
            return
        counts = _minus(summary, self._base, keep=("occupancy",))
        # A gap of several intervals (no call meanwhile) closes them as one: start to this boundary.
        self.last = AnalyticsInterval(
            start=datetime.fromtimestamp(self._start, UTC),
            end=datetime.fromtimestamp(boundary, UTC),
            **AnalyticsCounts.model_validate(counts).model_dump(),
        )
        self._start, self._base = boundary, dict(summary)


def report(engine: CameraAnalytics, intervals: IntervalCounts) -> AnalyticsReport:
    summary = engine.summary()
    return AnalyticsReport(
        tracks=len(engine.tracker),
        last_interval=intervals.last,
        **AnalyticsCounts.model_validate(summary).model_dump(),
    )
