"""Camera spec and status, mirroring crds/cameras.pantau.io.yaml (tests/test_models.py keeps them in sync).

The CEL rules of the CRD are repeated here as validators, so the operator rejects what the API server
would (objects written before a rule existed, or tests that bypass the server)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Annotated, Final, Literal

from pydantic import AfterValidator, Field, model_validator

from pantau.models.conditions import ApiModel, Conditions, Generation
from pantau.models.limits import (
    CLASS_NAME_PATTERN,
    CREDENTIALS_IN_URL_PATTERN,
    DATA_KEY_PATTERN,
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    MAX_CLASSES,
    MAX_FPS,
    MAX_LINES,
    MAX_LOITER_SECONDS,
    MAX_PRIORITY,
    MAX_RESOLUTION,
    MAX_SESSIONS,
    MAX_URL,
    MAX_ZONE_POINTS,
    MAX_ZONES,
    MIN_LINE_LENGTH,
    MIN_RESOLUTION,
    MIN_ZONE_AREA,
    SCHEMES,
)
from pantau.redact import has_secret_query

_CREDENTIALS_IN_URL: Final = re.compile(CREDENTIALS_IN_URL_PATTERN)
SUPPORTED_SCHEMES: Final = tuple(f"{scheme}://" for scheme in SCHEMES)
PROTOCOL_SCHEMES: Final[dict[str, tuple[str, ...]]] = {
    "rtsp": ("rtsp://",),
    "rtsps": ("rtsps://",),
    "http-mjpeg": ("http://", "https://"),
    "http-snapshot": ("http://", "https://"),
    "file": ("file://",),
}
TLS_SCHEMES: Final = ("rtsps://", "https://")


def url_has_credentials(url: str) -> bool:
    return _CREDENTIALS_IN_URL.match(url) is not None


def _check_fps(value: float) -> float:
    if not 0 < value <= MAX_FPS:
        raise ValueError(
            f"fps must be above 0 and at most {MAX_FPS:g}: set it in that range, e.g. 5, "
            "or a fraction such as 0.2 for one frame every 5 seconds"
        )
    return value


def _check_secret_name(value: str) -> str:
    if not re.fullmatch(DNS_SUBDOMAIN_PATTERN, value):
        raise ValueError(
            "not a valid Secret name: use lower-case letters, digits, '-' and '.', "
            "starting and ending with a letter or digit"
        )
    return value


def _check_secret_key(value: str) -> str:
    if not re.fullmatch(DATA_KEY_PATTERN, value):
        raise ValueError("not a valid Secret key: give a non-empty key of letters, digits, '-', '_' or '.'")
    return value


def has_duplicates(values: Iterable[str]) -> bool:
    seen = list(values)
    return len(set(seen)) != len(seen)


def _check_unique(values: tuple[str, ...]) -> tuple[str, ...]:
    if has_duplicates(values):
        raise ValueError("each entry may appear only once: remove the duplicates")
    return values


Fps = Annotated[float, AfterValidator(_check_fps)]
Score = Annotated[float, Field(ge=0, le=1)]
DnsLabel = Annotated[str, Field(max_length=63, pattern=DNS_LABEL_PATTERN)]
SecretName = Annotated[str, Field(max_length=253), AfterValidator(_check_secret_name)]
SecretKey = Annotated[str, Field(max_length=253), AfterValidator(_check_secret_key)]
ClassName = Annotated[str, Field(max_length=32, pattern=CLASS_NAME_PATTERN)]
ClassNames = Annotated[tuple[ClassName, ...], Field(max_length=MAX_CLASSES), AfterValidator(_check_unique)]

SourceProtocol = Literal["rtsp", "rtsps", "http-mjpeg", "http-snapshot", "file"]
Transport = Literal["tcp", "udp"]


class SiteRef(ApiModel):
    name: Annotated[str, Field(max_length=253)]


class CredentialsSecretRef(ApiModel):
    name: SecretName
    username_key: SecretKey = "username"
    password_key: SecretKey = "password"  # noqa: S105 (the name of a key, not a password)


class CaSecretRef(ApiModel):
    name: SecretName
    key: SecretKey = "ca.crt"


class SourceTLS(ApiModel):
    insecure_skip_verify: bool = False
    server_name: Annotated[str, Field(max_length=253)] | None = None
    ca_secret_ref: CaSecretRef | None = None


class Resolution(ApiModel):
    width: Annotated[int, Field(ge=MIN_RESOLUTION, le=MAX_RESOLUTION)]
    height: Annotated[int, Field(ge=MIN_RESOLUTION, le=MAX_RESOLUTION)]


class Source(ApiModel):
    url: Annotated[str, Field(max_length=MAX_URL)]
    protocol: SourceProtocol
    transport: Transport | None = None
    resolution: Resolution | None = None
    max_sessions: Annotated[int, Field(ge=1, le=MAX_SESSIONS)] = 1
    credentials_secret_ref: CredentialsSecretRef | None = None
    tls: SourceTLS | None = None

    @model_validator(mode="after")
    def _check_url_and_options(self) -> Source:
        # Messages never quote the URL: a rejected one may hold a password.
        if url_has_credentials(self.url):
            raise ValueError(
                "the URL embeds a user name or password (user:pass@ or user@): remove them from "
                "spec.source.url and put them in a Secret named by spec.source.credentialsSecretRef"
            )
        if has_secret_query(self.url):
            raise ValueError(
                "the URL carries a credential in its query (password=, token=, key=, ...): remove it from "
                "spec.source.url and put the login in a Secret named by spec.source.credentialsSecretRef"
            )
        if not self.url.startswith(SUPPORTED_SCHEMES):
            raise ValueError(
                "unsupported URL scheme: spec.source.url must start with rtsp://, rtsps://, http://, "
                "https:// or file://"
            )
        schemes = PROTOCOL_SCHEMES[self.protocol]
        if not self.url.startswith(schemes):
            raise ValueError(
                f"the URL scheme does not match protocol {self.protocol}: spec.source.url must start "
                f"with {' or '.join(schemes)}, or set spec.source.protocol to match the URL"
            )
        if self.transport is not None and self.protocol not in ("rtsp", "rtsps"):
            raise ValueError(
                "transport applies to RTSP only: remove spec.source.transport or set "
                "spec.source.protocol to rtsp or rtsps"
            )
        if self.tls is not None and not self.url.startswith(TLS_SCHEMES):
            raise ValueError(
                "tls applies to rtsps:// and https:// URLs only: remove spec.source.tls or use a TLS URL"
            )
        return self


class Sampling(ApiModel):
    fps: Fps | None = None


class Detection(ApiModel):
    classes: ClassNames | None = None
    min_score: Score | None = None


def _check_point(value: tuple[float, float]) -> tuple[float, float]:
    if not all(0 <= c <= 1 for c in value):
        raise ValueError(
            "coordinates are normalised and must be between 0 and 1: "
            "divide pixel positions by the frame width and height"
        )
    return value


# [x, y]: x from 0 (left) to 1 (right), y from 0 (top) to 1 (bottom).
Point = Annotated[tuple[float, float], AfterValidator(_check_point)]


def _area(points: Sequence[tuple[float, float]]) -> float:
    """The polygon's area (shoelace), as a share of the picture."""
    pairs = zip(points, (*points[1:], points[0]), strict=True)
    return abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in pairs)) / 2


def _cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _segments_cross(p: tuple[float, float], q: tuple[float, float], r: tuple[float, float],
                    s: tuple[float, float]) -> bool:  # fmt: skip
    """Whether segments pq and rs properly cross (touching ends do not count)."""
    d1, d2 = _cross(r, s, p), _cross(r, s, q)
    d3, d4 = _cross(p, q, r), _cross(p, q, s)
    return d1 * d2 < 0 and d3 * d4 < 0


def _self_crossing(points: Sequence[tuple[float, float]]) -> tuple[int, int] | None:
    """The first pair of non-adjacent edges that cross, by the index of their first point."""
    n = len(points)
    edges = [(points[i], points[(i + 1) % n]) for i in range(n)]
    for i in range(n):
        for j in range(i + 2, n):
            if i == 0 and j == n - 1:
                continue  # adjacent through the closing edge
            if _segments_cross(*edges[i], *edges[j]):
                return i, j
    return None


class Zone(ApiModel):
    """A named polygon; objects whose box's bottom centre is inside it are in the zone."""

    name: DnsLabel
    points: Annotated[tuple[Point, ...], Field(max_length=MAX_ZONE_POINTS)]
    classes: ClassNames | None = None
    loiter_seconds: Annotated[float, Field(ge=1, le=MAX_LOITER_SECONDS)] | None = None

    @model_validator(mode="after")
    def _check_polygon(self) -> Zone:
        if len(self.points) < 3:
            raise ValueError(
                "a zone is a polygon and needs at least 3 points: add points, "
                "or use spec.lines for a two-point segment"
            )
        crossing = _self_crossing(self.points)
        if crossing is not None:
            raise ValueError(
                f"the zone's edges {crossing[0]} and {crossing[1]} cross each other: list the points "
                "in order around the area (clockwise or anticlockwise)"
            )
        if _area(self.points) < MIN_ZONE_AREA:
            raise ValueError(
                f"the zone covers less than {MIN_ZONE_AREA:g} of the picture: spread its points so "
                "that it holds the objects' feet"
            )
        return self


class Line(ApiModel):
    """A segment from start (A) to end (B). Crossing it is `forward` when the bottom centre P of an
    object's box moves from where cross(B - A, P - A) < 0 to where it is > 0 (y down), else `backward`."""

    name: DnsLabel
    start: Point
    end: Point
    classes: ClassNames | None = None

    @model_validator(mode="after")
    def _check_length(self) -> Line:
        if self.start == self.end:
            raise ValueError("a line needs two different points: move spec.lines[].end away from start")
        if math.dist(self.start, self.end) < MIN_LINE_LENGTH:
            raise ValueError(
                f"the line is shorter than {MIN_LINE_LENGTH:g} of the picture: objects would flip sides "
                "on jitter; move spec.lines[].end away from start"
            )
        return self


class CameraSpec(ApiModel):
    site_ref: SiteRef
    paused: bool = False
    dedicated_pod: bool = False
    source: Source
    # With a Site uplink too thin for every camera, a higher priority keeps its fps longer (ties: by name).
    priority: Annotated[int, Field(ge=0, le=MAX_PRIORITY)] = 50
    sampling: Sampling | None = None
    detection: Detection | None = None
    zones: Annotated[tuple[Zone, ...], Field(max_length=MAX_ZONES)] = ()
    lines: Annotated[tuple[Line, ...], Field(max_length=MAX_LINES)] = ()

    @model_validator(mode="after")
    def _check_names(self) -> CameraSpec:
        for items, what in ((self.zones, "zone"), (self.lines, "line")):
            if has_duplicates(item.name for item in items):
                raise ValueError(
                    f"{what} names must be unique: rename or remove the duplicate entry in spec.{what}s"
                )
        return self


Tally = Annotated[int, Field(ge=0)]


class LineTally(ApiModel):
    forward: Tally | None = None
    backward: Tally | None = None


class ZoneTally(ApiModel):
    entered: Tally | None = None
    exited: Tally | None = None
    loitering: Tally | None = None
    occupancy: Tally | None = None


class AnalyticsStatus(ApiModel):
    """The zones' and lines' counts of the last completed interval."""

    interval_start: datetime
    interval_end: datetime
    lines: Annotated[dict[str, LineTally], Field(max_length=MAX_LINES)] | None = None
    zones: Annotated[dict[str, ZoneTally], Field(max_length=MAX_ZONES)] | None = None


class UplinkStatus(ApiModel):
    """How the ingest pod sends the camera under its Site's uplink budget."""

    limited: bool
    stage: Literal["none", "quality", "resolution", "fps"] | None = None
    quality: Annotated[int, Field(ge=1, le=100)]
    scale: Annotated[float, Field(ge=0, le=1)]
    fps: Annotated[float, Field(ge=0)]
    asked_fps: Annotated[float, Field(ge=0)] | None = None


class CameraStatus(ApiModel):
    observed_generation: Generation | None = None
    conditions: Conditions = ()
    shard: Annotated[str, Field(max_length=63)] | None = None
    pod: Annotated[str, Field(max_length=253)] | None = None
    streaming: bool | None = None
    reason: Annotated[str, Field(max_length=64, pattern=r"^[A-Z][A-Za-z0-9]*$")] | None = None
    fps: Annotated[float, Field(ge=0)] | None = None
    frames_processed: Annotated[int, Field(ge=0)] | None = None
    frames_dropped: Annotated[int, Field(ge=0)] | None = None
    last_frame_time: datetime | None = None
    detection_counts: (
        Annotated[dict[str, Annotated[int, Field(ge=0)]], Field(max_length=MAX_CLASSES)] | None
    ) = None
    analytics: AnalyticsStatus | None = None
    uplink: UplinkStatus | None = None
