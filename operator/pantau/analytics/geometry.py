"""Plane geometry of zones and lines, in image coordinates (x right, y down).

Rules are written in normalised coordinates (0..1 of the frame's width and height) and applied to
the pixels of the frame they are used on. An object's position is the bottom centre of its box:
where its feet (or wheels) touch the ground, which is what a zone or a line drawn on the ground
means."""

from __future__ import annotations

import math
from collections.abc import Sequence

Point = tuple[float, float]
Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels


def to_pixels(points: Sequence[Point], frame_hw: tuple[int, int]) -> tuple[Point, ...]:
    """Normalised points -> pixel points of a frame of (height, width)."""
    height, width = frame_hw
    return tuple((x * width, y * height) for x, y in points)


def reference_point(box: Box) -> Point:
    """The bottom centre of a box."""
    x1, _, x2, y2 = box
    return ((x1 + x2) / 2, y2)


def side(a: Point, b: Point, p: Point) -> float:
    """cross(B - A, P - A). With y pointing down, a point is on the "forward" side of the line A->B
    when this is > 0, on the "backward" side when < 0, on the line when 0."""
    return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])


def signed_distance(a: Point, b: Point, p: Point) -> float:
    """`side` divided by |B - A|: the distance in pixels from the (infinite) line, with its sign."""
    length = math.dist(a, b)
    return side(a, b, p) / length if length > 0 else 0.0


def along(a: Point, b: Point, p: Point) -> float:
    """Where the projection of P falls on the segment: 0 at A, 1 at B (outside 0..1 beyond the ends)."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    squared = dx * dx + dy * dy
    return ((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / squared if squared > 0 else 0.0


def lerp(p: Point, q: Point, k: float) -> Point:
    """The point a share `k` of the way from P to Q."""
    return (p[0] + k * (q[0] - p[0]), p[1] + k * (q[1] - p[1]))


def point_in_polygon(p: Point, polygon: Sequence[Point]) -> bool:
    """Even-odd rule (a ray to the right counts the edges it crosses). Points exactly on an edge may
    fall either way: zones add a margin for those (see `distance_to_polygon`)."""
    x, y = p
    inside = False
    n = len(polygon)
    for i in range(n):
        (x1, y1), (x2, y2) = polygon[i], polygon[(i + 1) % n]
        if (y1 > y) != (y2 > y):
            x_cross = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
            if x < x_cross:
                inside = not inside
    return inside


def distance_to_segment(p: Point, a: Point, b: Point) -> float:
    t = min(1.0, max(0.0, along(a, b, p)))
    return math.dist(p, (a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])))


def distance_to_polygon(p: Point, polygon: Sequence[Point]) -> float:
    """Distance from P to the nearest edge of the polygon."""
    n = len(polygon)
    return min(distance_to_segment(p, polygon[i], polygon[(i + 1) % n]) for i in range(n))
