"""One camera's analytics: detections in, tracks and events out.

`CameraAnalytics.update` takes a sample's time, frame size and detections; it tracks them
(`tracking.Tracker`), then applies the camera's zones and lines to each confirmed track's reference
point (the bottom centre of its box) and returns the tracks and the events of that sample.

Counting rules, each against a known way of over- or under-counting:
- a line is crossed when a track's *settled* side changes: a point within `line_margin` box
  heights of the line leaves the side as it was, so jitter on the line never counts;
- a track must have been seen on both sides: one first seen beyond the line (a new id after an
  identity switch, say) has nothing to cross from;
- the crossing must pass between the line's ends (walking round the end of a segment is no crossing);
- each track counts at most once per direction on each line (`once_per_direction`);
- a zone is entered when the point is inside, left when it is `zone_margin` box heights outside,
  and left too when its track is forgotten (occluded for longer than the tracker's `lost_seconds`);
  a track that is only lost for a while stays in the zone (occupancy does not flicker);
- loitering is reported once per visit, when the dwell reaches the zone's `loiter_seconds`.
Per-track state is dropped with the track: memory is bounded by the tracker's `max_tracks`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from pantau.analytics import geometry
from pantau.analytics.geometry import Point
from pantau.analytics.tracking import Tracker, TrackerSettings
from pantau.triton.contract import CLASS_NAMES, Detection

EventType = Literal["line_crossed", "zone_entered", "zone_exited", "loitering"]
Direction = Literal["forward", "backward"]


@dataclass(frozen=True)
class ZoneRule:
    """A polygon in normalised coordinates (x, y in 0..1 of the width and height)."""

    name: str
    points: tuple[Point, ...]
    classes: frozenset[str] | None = None  # None: every class
    loiter_seconds: float | None = None


@dataclass(frozen=True)
class LineRule:
    """A segment from a to b, normalised; `forward` is from cross(b - a, p - a) < 0 to > 0."""

    name: str
    a: Point
    b: Point
    classes: frozenset[str] | None = None


@dataclass(frozen=True)
class AnalyticsEvent:
    type: EventType
    track_id: int
    class_name: str
    time: float  # seconds, on the clock of `update`'s t
    zone: str | None = None
    line: str | None = None
    direction: Direction | None = None
    dwell_s: float | None = None  # zone_exited and loitering: time in the zone so far


@dataclass(frozen=True)
class TrackedObject:
    track_id: int
    class_name: str
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2, pixels of the frame


@dataclass(frozen=True)
class FrameResult:
    time: float
    tracks: tuple[TrackedObject, ...]
    events: tuple[AnalyticsEvent, ...]


@dataclass(frozen=True)
class CountingSettings:
    line_margin: float = 0.1  # box heights each side of a line where the side stays as it was
    zone_margin: float = 0.1  # box heights outside a zone before a track has left it
    min_margin_px: float = 2.0  # floor of both margins, pixels
    end_tolerance: float = 0.05  # a crossing this far (share of the line) beyond its ends still counts
    once_per_direction: bool = False


@dataclass
class _LineState:
    side: int = 0  # settled side: -1 (backward side), +1 (forward side), 0 not yet known
    last_point: Point | None = None
    counted: set[str] = field(default_factory=set)


@dataclass
class _ZoneState:
    inside: bool = False
    entered_at: float = 0.0
    loiter_reported: bool = False


@dataclass(frozen=True)
class _PixelRules:
    zones: tuple[tuple[ZoneRule, tuple[Point, ...]], ...]
    lines: tuple[tuple[LineRule, Point, Point], ...]


def _applies(classes: frozenset[str] | None, class_name: str) -> bool:
    return classes is None or class_name in classes


class CameraAnalytics:
    """Tracks, zones and lines of one camera; not thread-safe (one caller per camera)."""

    def __init__(
        self,
        zones: Sequence[ZoneRule] = (),
        lines: Sequence[LineRule] = (),
        *,
        tracker_settings: TrackerSettings | None = None,
        counting_settings: CountingSettings | None = None,
    ) -> None:
        self.tracker = Tracker(tracker_settings)
        self.counting = counting_settings or CountingSettings()
        self._zones: tuple[ZoneRule, ...] = ()
        self._lines: tuple[LineRule, ...] = ()
        self._pixels: dict[tuple[int, int], _PixelRules] = {}
        self._line_state: dict[tuple[int, str], _LineState] = {}
        self._zone_state: dict[tuple[int, str], _ZoneState] = {}
        self._class: dict[int, str] = {}
        self._last_seen: dict[int, float] = {}
        self._line_counts: dict[str, Counter[tuple[str, str]]] = {}  # (class, direction)
        self._zone_counts: dict[str, Counter[tuple[str, str]]] = {}  # (class, event type)
        self.configure(zones, lines)

    def configure(self, zones: Sequence[ZoneRule], lines: Sequence[LineRule]) -> None:
        """New zones and lines, tracks kept. A zone keeps who is inside it by name (a moved zone's
        occupants leave it, or others enter it, on the next samples); a line whose geometry
        changed forgets which side each track was on. Counts are kept by name while the name stays."""
        zones, lines = tuple(zones), tuple(lines)
        for kind, names in (("zone", [z.name for z in zones]), ("line", [li.name for li in lines])):
            if len(set(names)) != len(names):
                raise ValueError(f"{kind} names must be unique: {names}")
        old_lines = {li.name: li for li in self._lines}
        changed = {li.name for li in lines if old_lines.get(li.name) != li}
        zone_names = {z.name for z in zones}
        self._line_state = {k: v for k, v in self._line_state.items() if k[1] not in changed}
        self._zone_state = {k: v for k, v in self._zone_state.items() if k[1] in zone_names}
        self._line_counts = {li.name: self._line_counts.get(li.name, Counter()) for li in lines}
        self._zone_counts = {z.name: self._zone_counts.get(z.name, Counter()) for z in zones}
        self._zones, self._lines = zones, lines
        self._pixels = {}

    def reset(self) -> list[AnalyticsEvent]:
        """A reconnect: every track is forgotten (ids keep growing, so none is reused). Returns the
        `zone_exited` events of the tracks that were inside zones, at the time each was last seen."""
        removed = self.tracker.reset()
        return self._forget(removed)

    def update(self, t: float, frame_hw: tuple[int, int], detections: Sequence[Detection]) -> FrameResult:
        """One sample: `t` in seconds (stream time; not decreasing), the frame's (height, width),
        its detections in that frame's pixels."""
        boxes = np.array([d.box for d in detections], dtype=np.float64).reshape(-1, 4)
        scores = np.array([d.score for d in detections], dtype=np.float64)
        classes = np.array([d.class_id for d in detections], dtype=np.int64)
        step = self.tracker.update(t, boxes, scores, classes)
        rules = self._rules(frame_hw)
        events: list[AnalyticsEvent] = []
        tracks = []
        for tr in step.tracks:
            name = CLASS_NAMES[tr.class_id]
            self._class[tr.track_id] = name
            self._last_seen[tr.track_id] = t
            tracks.append(TrackedObject(tr.track_id, name, tr.score, tr.box))
            point = geometry.reference_point(tr.box)
            height = tr.box[3] - tr.box[1]
            events += self._lines_for(rules, tr.track_id, name, point, height, t)
            events += self._zones_for(rules, tr.track_id, name, point, height, t)
        events += self._loitering(t)
        events += self._forget(step.removed)
        return FrameResult(t, tuple(tracks), tuple(events))

    def _rules(self, frame_hw: tuple[int, int]) -> _PixelRules:
        found = self._pixels.get(frame_hw)
        if found is None:
            if len(self._pixels) > 8:  # frame sizes of one camera: a handful at most
                self._pixels.clear()
            found = _PixelRules(
                zones=tuple((z, geometry.to_pixels(z.points, frame_hw)) for z in self._zones),
                lines=tuple(
                    (li, *geometry.to_pixels((li.a, li.b), frame_hw))  # type: ignore[misc]
                    for li in self._lines
                ),
            )
            self._pixels[frame_hw] = found
        return found

    def _margin(self, share: float, height: float) -> float:
        return max(self.counting.min_margin_px, share * height)

    def _lines_for(
        self, rules: _PixelRules, track_id: int, name: str, point: Point, height: float, t: float
    ) -> Iterable[AnalyticsEvent]:
        margin = self._margin(self.counting.line_margin, height)
        for rule, a, b in rules.lines:
            if not _applies(rule.classes, name):
                continue
            state = self._line_state.setdefault((track_id, rule.name), _LineState())
            direction = self._line_step(state, a, b, point, margin)
            if direction is None:
                continue
            if self.counting.once_per_direction and direction in state.counted:
                continue
            state.counted.add(direction)
            self._line_counts[rule.name][(name, direction)] += 1
            yield AnalyticsEvent("line_crossed", track_id, name, t, line=rule.name, direction=direction)

    def _line_step(
        self, state: _LineState, a: Point, b: Point, point: Point, margin: float
    ) -> Direction | None:
        """Move a track's state on one line to its new point; the direction if it crossed."""
        distance = geometry.signed_distance(a, b, point)
        previous, state.last_point = state.last_point, point
        if abs(distance) <= margin:
            return None  # in the band: the side stays as it was
        new_side = 1 if distance > 0 else -1
        old_side, state.side = state.side, new_side
        if old_side == 0 or old_side == new_side:
            return None
        # Where the path met the line: between the last point and this one when they are on
        # opposite sides, else (the last one was in the band) this point's projection.
        where = point
        if previous is not None:
            before = geometry.signed_distance(a, b, previous)
            if before * distance < 0:
                k = before / (before - distance)
                where = geometry.lerp(previous, point, k)
        tolerance = self.counting.end_tolerance
        if not -tolerance <= geometry.along(a, b, where) <= 1 + tolerance:
            return None  # round the end of the segment
        return "forward" if new_side > 0 else "backward"

    def _zones_for(
        self, rules: _PixelRules, track_id: int, name: str, point: Point, height: float, t: float
    ) -> Iterable[AnalyticsEvent]:
        margin = self._margin(self.counting.zone_margin, height)
        for rule, polygon in rules.zones:
            if not _applies(rule.classes, name):
                continue
            key = (track_id, rule.name)
            state = self._zone_state.get(key)
            inside = geometry.point_in_polygon(point, polygon)
            if state is None or not state.inside:
                if inside:
                    self._zone_state[key] = _ZoneState(inside=True, entered_at=t)
                    self._zone_counts[rule.name][(name, "zone_entered")] += 1
                    yield AnalyticsEvent("zone_entered", track_id, name, t, zone=rule.name)
            elif not inside and geometry.distance_to_polygon(point, polygon) > margin:
                del self._zone_state[key]
                yield self._exit(track_id, rule.name, state, t)

    def _exit(self, track_id: int, zone: str, state: _ZoneState, t: float) -> AnalyticsEvent:
        name = self._class.get(track_id, "")
        self._zone_counts[zone][(name, "zone_exited")] += 1
        dwell = max(0.0, t - state.entered_at)
        return AnalyticsEvent("zone_exited", track_id, name, t, zone=zone, dwell_s=dwell)

    def _loitering(self, t: float) -> Iterable[AnalyticsEvent]:
        limits = {z.name: z.loiter_seconds for z in self._zones if z.loiter_seconds is not None}
        for (track_id, zone), state in self._zone_state.items():
            limit = limits.get(zone)
            if limit is None or state.loiter_reported or t - state.entered_at < limit:
                continue
            state.loiter_reported = True
            name = self._class.get(track_id, "")
            self._zone_counts[zone][(name, "loitering")] += 1
            yield AnalyticsEvent("loitering", track_id, name, t, zone=zone, dwell_s=t - state.entered_at)

    def _forget(self, removed: Iterable[int]) -> list[AnalyticsEvent]:
        """Drop every state of tracks the tracker forgot; they leave their zones when last seen."""
        gone = set(removed)
        if not gone:
            return []
        events = [
            self._exit(track_id, zone, state, self._last_seen.get(track_id, state.entered_at))
            for (track_id, zone), state in sorted(self._zone_state.items())
            if track_id in gone
        ]
        self._zone_state = {k: v for k, v in self._zone_state.items() if k[0] not in gone}
        self._line_state = {k: v for k, v in self._line_state.items() if k[0] not in gone}
        for track_id in gone:
            self._class.pop(track_id, None)
            self._last_seen.pop(track_id, None)
        return events

    def state_size(self) -> int:
        """Entries held for tracks (for the bounded-memory check)."""
        return len(self._line_state) + len(self._zone_state) + len(self._class) + len(self._last_seen)

    def summary(self) -> dict[str, Any]:
        """Counts since the start (per rule name, per class) and the current occupancy of each zone."""
        lines: dict[str, Any] = {}
        for line in self._lines:
            counts = self._line_counts[line.name]
            per_class: dict[str, dict[str, int]] = {}
            for (cls, direction), n in sorted(counts.items()):
                per_class.setdefault(cls, {"forward": 0, "backward": 0})[direction] = n
            lines[line.name] = {
                "forward": sum(v["forward"] for v in per_class.values()),
                "backward": sum(v["backward"] for v in per_class.values()),
                "classes": per_class,
            }
        return {"lines": lines, "zones": {z.name: self._zone_summary(z.name) for z in self._zones}}

    def _zone_summary(self, zone: str) -> dict[str, Any]:
        per_class: dict[str, dict[str, int]] = {}

        def row(cls: str) -> dict[str, int]:
            return per_class.setdefault(cls, dict.fromkeys(_ZONE_FIGURES, 0))

        for (cls, kind), n in self._zone_counts[zone].items():
            row(cls)[kind.removeprefix("zone_")] = n
        for (track_id, name), state in self._zone_state.items():
            if name == zone and state.inside:
                row(self._class.get(track_id, ""))["occupancy"] += 1
        totals = {k: sum(v[k] for v in per_class.values()) for k in _ZONE_FIGURES}
        return {**totals, "classes": dict(sorted(per_class.items()))}


_ZONE_FIGURES = ("entered", "exited", "loitering", "occupancy")
