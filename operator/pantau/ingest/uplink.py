"""How an ingest pod keeps what it sends within its Site's uplink budget: per camera, the JPEG quality,
the resolution and the sampled fps to use. Pure: no I/O; `ByteMeter` takes its clock from the caller.

Why. A district office reaches Triton and the event sinks over a WAN link of a few Mbit/s. Sending more
than the link carries does not fail loudly: queues grow, frames arrive late, and every camera's events
are delayed alike. So the pod plans its bytes against a budget, and gives up detail in the order that
costs analytics least: first JPEG quality (the detector barely notices quality 60 against 80), then
resolution (small far-away people are lost), then frames (events arrive later and short ones are
missed), and frames of the least important cameras first.

The steps of `plan`, in order. Target: `headroom` x the budget, in bytes per second. Event bytes (as
measured) are reserved first: they are the product, frames are the means.

0. Every camera at REF_QUALITY, full scale and its asked fps. If that fits, stage "none".
1. Quality, the same for all cameras: the highest integer quality from REF_QUALITY down to
   `quality_floor` that fits, at full scale and asked fps.
2. Resolution, the same for all cameras, at the quality floor: the largest scale from 1.0 down to
   `scale_floor` that fits, on a grid of SCALE_STEP from the floor.
3. Frame rate, at both floors: cameras in order of priority, lowest first (ties by name), each cut to
   `min_fps` (a camera asking for less keeps its ask) until the rest fits; the last one cut only to the
   highest fps that fits, on a grid of FPS_STEP from its floor.

If even both floors at `min_fps` do not fit, the plan is that (every camera at its floors), flagged
`limited`, and its message names the budget that would fit. Whenever a fit exists the predicted bytes
are at most the target: every step tests a candidate setting by computing its bytes, never by inverting
the model, so rounding cannot push a plan over. Every step searches a grid that does not depend on the
budget, so a larger budget never lowers any camera's quality, scale or fps.

The size model, `frame_size`. A frame's JPEG bytes are its bytes at the reference setting times a
quality factor times a scale factor, both measured (below) and interpolated linearly between points.
The bytes at the reference setting are measured per camera: `ByteMeter` divides observed frame sizes
by the two factors. Scale costs less than its pixels (scale**2) predict: a smaller frame packs more
detail per pixel, so at scale 0.5 the frame keeps about a third of its bytes, not a quarter; the table
holds what was measured, rounded up, so the model errs towards more bytes.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

# The setting at which a camera's `frame_bytes` is measured, and the most a plan ever sends.
REF_QUALITY: Final = 80
MAX_QUALITY: Final = 95  # libjpeg's advice: above 95 the bytes grow fast for nothing visible
MIN_SCALE: Final = 0.125  # the smallest scale the model was measured at
SCALE_STEP: Final = 0.001  # resolution of the scale a plan chooses (0.64 px of a 640 px letterbox)
FPS_STEP: Final = 0.001  # resolution of a cut camera's fps

# JPEG quality (libjpeg's 1..95 scale) -> bytes relative to quality 80 at the same resolution.
# Measured once: 20 frames of /work/shared/footage/vtest.avi (768x576, every 40th frame) encoded with
# libjpeg-turbo 3.1 (OpenCV's imencode, IMWRITE_JPEG_QUALITY, 4:2:0), mean bytes over the frames,
# divided by the mean at quality 80 (75,837 bytes). FFmpeg's mjpeg encoder (PyAV's "mjpeg", FFmpeg
# 8.1) has no such quality, only a quantiser scale 1..31 (qmin = qmax); on the same frames its sizes
# lie on this curve: qscale 1 -> 1.905 (quality ~94), 2 -> 1.295 (~88), 3 -> 1.025 (~81),
# 5 -> 0.760 (~67), 8 -> 0.521 (~40), 13 -> 0.375 (~25), 31 -> 0.228 (~17).
QUALITY_FACTORS: Final[tuple[tuple[int, float], ...]] = (
    (1, 0.124),
    (5, 0.149),
    (10, 0.208),
    (15, 0.269),
    (20, 0.326),
    (25, 0.380),
    (30, 0.430),
    (35, 0.479),
    (40, 0.517),
    (45, 0.562),
    (50, 0.600),
    (55, 0.638),
    (60, 0.686),
    (65, 0.742),
    (70, 0.808),
    (75, 0.882),
    (80, 1.000),
    (85, 1.165),
    (90, 1.439),
    (95, 1.990),
)

# Resolution scale (both sides) -> bytes relative to scale 1.0 at the same quality. Measured on the
# same frames, resized with INTER_AREA: libjpeg-turbo at quality 80 and 40 and PyAV's mjpeg at qscale
# 8 agree within 0.02 at each point; the table holds the largest of the three, rounded up to 0.01.
SCALE_FACTORS: Final[tuple[tuple[float, float], ...]] = (
    (0.125, 0.05),
    (0.25, 0.11),
    (0.375, 0.20),
    (0.5, 0.33),
    (0.625, 0.44),
    (0.75, 0.60),
    (0.875, 0.76),
    (1.0, 1.0),
)

Stage = Literal["none", "quality", "resolution", "fps"]

# At most this many cut cameras are named in a plan's message; the rest are counted.
_NAMED_IN_MESSAGE: Final = 5


@dataclass(frozen=True)
class CameraDemand:
    """What one camera would send with no budget, and how much it matters."""

    name: str
    priority: int  # 0..100: a higher priority keeps its fps longer
    fps: float  # the sampling rate the camera asks for
    frame_bytes: float  # measured bytes of one frame at REF_QUALITY and scale 1.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("CameraDemand.name must be the camera's name, got an empty string")
        if not 0 <= self.priority <= 100:
            raise ValueError(
                f"CameraDemand.priority of {self.name!r} must be within 0..100 (higher keeps its fps "
                f"longer), got {self.priority}"
            )
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(
                f"CameraDemand.fps of {self.name!r} must be a finite rate above 0 frames per second, "
                f"got {self.fps}"
            )
        if not (math.isfinite(self.frame_bytes) and self.frame_bytes > 0):
            raise ValueError(
                f"CameraDemand.frame_bytes of {self.name!r} must be a finite number of bytes above 0 "
                f"(one frame at quality {REF_QUALITY}, scale 1.0; see ByteMeter), got {self.frame_bytes}"
            )


@dataclass(frozen=True)
class Setting:
    """How one camera's frames are to be sent."""

    quality: int  # JPEG quality, 1..95
    scale: float  # resolution factor of both sides (1.0: the full letterbox size)
    fps: float  # sampled frames per second


@dataclass(frozen=True)
class UplinkPlan:
    """The settings per camera and what they are predicted to send."""

    settings: Mapping[str, Setting]  # camera name -> setting
    bytes_per_s: float  # predicted, frames and events together
    limited: bool  # some camera is below its asked fps, or below REF_QUALITY or full scale
    stage: Stage  # the furthest step of `plan` used
    message: str  # one line for a status condition


def quality_factor(quality: int) -> float:
    """Bytes of a frame at `quality` relative to REF_QUALITY (QUALITY_FACTORS, interpolated)."""
    if not 1 <= quality <= MAX_QUALITY:
        raise ValueError(f"quality is a JPEG quality: it must be within 1..{MAX_QUALITY}, got {quality}")
    return _interpolate(QUALITY_FACTORS, quality)


def scale_factor(scale: float) -> float:
    """Bytes of a frame at `scale` relative to full size (SCALE_FACTORS, interpolated)."""
    if not MIN_SCALE <= scale <= 1.0:
        raise ValueError(f"scale must be within {MIN_SCALE}..1.0 (1.0: full letterbox size), got {scale}")
    return _interpolate(SCALE_FACTORS, scale)


def frame_size(frame_bytes: float, quality: int, scale: float) -> float:
    """Predicted bytes of a frame that has `frame_bytes` at REF_QUALITY and scale 1.0, sent at
    `quality` and `scale` (see the module docstring for the model)."""
    if not (math.isfinite(frame_bytes) and frame_bytes >= 0):
        raise ValueError(
            f"frame_bytes must be a finite number of bytes >= 0 (one frame at quality {REF_QUALITY}, "
            f"scale 1.0), got {frame_bytes}"
        )
    return frame_bytes * quality_factor(quality) * scale_factor(scale)


def plan(
    cameras: Sequence[CameraDemand],
    budget_bps: float,
    event_bytes_per_s: float,
    *,
    quality_floor: int = 40,
    scale_floor: float = 0.5,
    min_fps: float = 0.1,
    headroom: float = 0.9,
) -> UplinkPlan:
    """The settings that keep `cameras` and the events within `headroom` x `budget_bps` (bits per
    second); see the module docstring for the steps."""
    _check_plan(cameras, budget_bps, event_bytes_per_s, quality_floor, scale_floor, min_fps, headroom)
    target = headroom * budget_bps / 8
    ordered = sorted(cameras, key=lambda camera: (camera.priority, camera.name))
    asked = [camera.fps for camera in ordered]

    def total(quality: int, scale: float, fps: Sequence[float]) -> float:
        frames = sum(
            rate * frame_size(camera.frame_bytes, quality, scale)
            for camera, rate in zip(ordered, fps, strict=True)
        )
        return event_bytes_per_s + frames

    def fits(quality: int, scale: float, fps: Sequence[float]) -> bool:
        return total(quality, scale, fps) <= target

    if fits(REF_QUALITY, 1.0, asked):
        return _result(ordered, REF_QUALITY, 1.0, asked, total, "none", budget_bps)
    if fits(quality_floor, 1.0, asked):
        qualities = range(quality_floor, REF_QUALITY)  # REF_QUALITY itself does not fit
        quality = qualities[_last_fitting(len(qualities), lambda i: fits(qualities[i], 1.0, asked))]
        return _result(ordered, quality, 1.0, asked, total, "quality", budget_bps)
    if fits(quality_floor, scale_floor, asked):
        steps = _grid_size(scale_floor, 1.0, SCALE_STEP)  # 1.0 itself does not fit
        found = _last_fitting(
            steps, lambda step: fits(quality_floor, _on_grid(scale_floor, 1.0, SCALE_STEP, step), asked)
        )
        scale = _on_grid(scale_floor, 1.0, SCALE_STEP, found)
        return _result(ordered, quality_floor, scale, asked, total, "resolution", budget_bps)
    fps = _cut_fps(asked, min_fps, lambda rates: fits(quality_floor, scale_floor, rates))
    if fps is not None:
        return _result(ordered, quality_floor, scale_floor, fps, total, "fps", budget_bps)
    floors = [min(rate, min_fps) for rate in asked]
    predicted = total(quality_floor, scale_floor, floors)
    return _too_small(
        ordered, quality_floor, scale_floor, floors, predicted, budget_bps, headroom, event_bytes_per_s
    )


class ByteMeter:
    """What the pod sends, measured: bytes per second over the last `window` seconds (all, and events
    alone), and each camera's `frame_bytes` at the reference setting, for `plan`.

    A frame's size at the reference setting is its observed size divided by the model's quality and
    scale factors, so frames sent at any setting keep the estimate current; it is smoothed
    exponentially (weight `smoothing` for the newest frame) because one busy scene is not the camera.
    Until the meter has run for a whole window its rates are over the time it has run."""

    def __init__(
        self, window: float = 10.0, smoothing: float = 0.2, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not (math.isfinite(window) and window > 0):
            raise ValueError(f"window must be a finite number of seconds above 0, got {window}")
        if not (math.isfinite(smoothing) and 0 < smoothing <= 1):
            raise ValueError(
                f"smoothing is the newest frame's weight: it must be above 0 and at most 1 (1: no "
                f"smoothing), got {smoothing}"
            )
        self._window, self._smoothing, self._clock = window, smoothing, clock
        self._started = clock()
        self._sent: deque[tuple[float, int, bool]] = deque()  # (at, bytes, whether an event), oldest first
        self._frame_bytes: dict[str, float] = {}

    def add_event(self, nbytes: int) -> None:
        """Count `nbytes` of events (or anything else that is not a frame) sent now."""
        if nbytes < 0:
            raise ValueError(f"nbytes counts bytes sent: it must be >= 0, got {nbytes}")
        self._sent.append((self._clock(), nbytes, True))

    def add_frame(self, camera: str, nbytes: int, quality: int, scale: float) -> None:
        """Count a frame of `nbytes` sent now by `camera` at `quality` and `scale`, and update the
        camera's estimated bytes at the reference setting."""
        if nbytes <= 0:
            raise ValueError(f"nbytes is the size of a sent frame: it must be above 0, got {nbytes}")
        reference = nbytes / (quality_factor(quality) * scale_factor(scale))
        before = self._frame_bytes.get(camera)
        smoothed = reference if before is None else before + self._smoothing * (reference - before)
        self._frame_bytes[camera] = smoothed
        self._sent.append((self._clock(), nbytes, False))

    def bytes_per_s(self) -> float:
        """Everything sent, bytes per second over the window."""
        return self._rate(events_only=False)

    def event_bytes_per_s(self) -> float:
        """Events sent, bytes per second over the window: what `plan` reserves first."""
        return self._rate(events_only=True)

    def frame_bytes(self) -> dict[str, float]:
        """Camera -> estimated bytes of one of its frames at REF_QUALITY and scale 1.0."""
        return dict(self._frame_bytes)

    def forget(self, camera: str) -> None:
        """Drop a camera's estimate (it left the pod); its bytes already sent still count."""
        self._frame_bytes.pop(camera, None)

    def _rate(self, *, events_only: bool) -> float:
        now = self._clock()
        while self._sent and self._sent[0][0] <= now - self._window:
            self._sent.popleft()
        elapsed = min(self._window, now - self._started)
        if elapsed <= 0:
            return 0.0
        return sum(nbytes for _, nbytes, event in self._sent if event or not events_only) / elapsed


def _result(
    ordered: Sequence[CameraDemand],
    quality: int,
    scale: float,
    fps: Sequence[float],
    total: Callable[[int, float, Sequence[float]], float],
    stage: Stage,
    budget_bps: float,
) -> UplinkPlan:
    """The plan for a fitting setting, with its message."""
    predicted = total(quality, scale, fps)
    cut = [
        f"{camera.name} {_num(rate)} (asked {_num(camera.fps)})"
        for camera, rate in zip(ordered, fps, strict=True)
        if rate < camera.fps
    ]
    if len(cut) > _NAMED_IN_MESSAGE:
        cut = [*cut[:_NAMED_IN_MESSAGE], f"{len(cut) - _NAMED_IN_MESSAGE} more"]
    head = "no limit: " if stage == "none" else ""
    rates = f", fps: {', '.join(cut)}" if cut else ", asked fps"
    sent = f"; {_mbit(predicted * 8)} of {_mbit(budget_bps)} Mbit/s"
    return UplinkPlan(
        settings=_settings(ordered, quality, scale, fps),
        bytes_per_s=predicted,
        limited=stage != "none",
        stage=stage,
        message=f"{head}quality {quality}, scale {_num(scale)}{rates}{sent}",
    )


def _too_small(
    ordered: Sequence[CameraDemand],
    quality: int,
    scale: float,
    fps: Sequence[float],
    predicted: float,
    budget_bps: float,
    headroom: float,
    event_bytes_per_s: float,
) -> UplinkPlan:
    """The plan when nothing fits: everything at its floors, and the budget that would fit it."""
    needed_bps = predicted * 8 / headroom
    message = (
        f"budget {_mbit(budget_bps)} Mbit/s is too small for {len(ordered)} camera(s): at quality "
        f"{quality}, scale {_num(scale)} and at most {_num(max(fps, default=0.0))} fps they need "
        f"{_mbit(needed_bps)} Mbit/s (events {_mbit(event_bytes_per_s * 8)} Mbit/s, headroom "
        f"{headroom:.0%} included)"
    )
    limited = any(
        rate < camera.fps or quality < REF_QUALITY or scale < 1.0
        for camera, rate in zip(ordered, fps, strict=True)
    )
    return UplinkPlan(
        settings=_settings(ordered, quality, scale, fps),
        bytes_per_s=predicted,
        limited=limited,
        stage="fps",
        message=message,
    )


def _settings(
    ordered: Sequence[CameraDemand], quality: int, scale: float, fps: Sequence[float]
) -> dict[str, Setting]:
    pairs = sorted(zip(ordered, fps, strict=True), key=lambda pair: pair[0].name)
    return {camera.name: Setting(quality=quality, scale=scale, fps=rate) for camera, rate in pairs}


def _cut_fps(
    asked: Sequence[float], min_fps: float, fits: Callable[[Sequence[float]], bool]
) -> list[float] | None:
    """Step 3: the rates, in cut order, with the first cameras at their floor and the next one cut
    only as far as needed; None if even every camera at its floor does not fit."""
    fps = list(asked)
    for index, rate in enumerate(asked):
        floor = min(rate, min_fps)
        if floor == rate:
            continue  # asks for no more than the floor: nothing to cut
        fps[index] = floor
        if not fits(fps):
            continue

        def with_rate(step: int, index: int = index, floor: float = floor, rate: float = rate) -> list[float]:
            trial = list(fps)
            trial[index] = _on_grid(floor, rate, FPS_STEP, step)
            return trial

        steps = _grid_size(floor, rate, FPS_STEP)
        return with_rate(_last_fitting(steps, lambda step: fits(with_rate(step))))
    return None


def _grid_size(lo: float, hi: float, step: float) -> int:
    """How many points lo, lo + step, ... lie below hi (at least lo itself)."""
    return max(1, math.ceil((hi - lo) / step))


def _on_grid(lo: float, hi: float, step: float, index: int) -> float:
    # Never past hi, whatever the float division made of the grid's last point.
    return min(lo + index * step, hi)


def _last_fitting(count: int, fits: Callable[[int], bool]) -> int:
    """The largest index in [0, count) that fits, for a predicate true at 0 and monotone (true up to
    some index, false after): bisection, so a fine grid costs a few evaluations."""
    lo, hi = 0, count - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _interpolate(table: Sequence[tuple[float, float]], x: float) -> float:
    """Linear interpolation in a table of increasing x; x within the table's range."""
    index = bisect.bisect_left([point for point, _ in table], x)
    if table[index][0] == x:
        return table[index][1]
    (x0, y0), (x1, y1) = table[index - 1], table[index]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def _num(value: float) -> str:
    return f"{value:.3g}"


def _mbit(bits_per_s: float) -> str:
    return _num(bits_per_s / 1e6)


def _check_plan(
    cameras: Sequence[CameraDemand],
    budget_bps: float,
    event_bytes_per_s: float,
    quality_floor: int,
    scale_floor: float,
    min_fps: float,
    headroom: float,
) -> None:
    if not (math.isfinite(budget_bps) and budget_bps > 0):
        raise ValueError(
            f"budget_bps is the uplink's budget in bits per second: it must be finite and above 0 "
            f"(e.g. 2e6 for 2 Mbit/s), got {budget_bps}"
        )
    if not (math.isfinite(event_bytes_per_s) and event_bytes_per_s >= 0):
        raise ValueError(
            f"event_bytes_per_s must be a finite number >= 0 (ByteMeter.event_bytes_per_s), "
            f"got {event_bytes_per_s}"
        )
    if not 1 <= quality_floor <= REF_QUALITY:
        raise ValueError(f"quality_floor must be within 1..{REF_QUALITY}, got {quality_floor}")
    if not MIN_SCALE <= scale_floor <= 1.0:
        raise ValueError(f"scale_floor must be within {MIN_SCALE}..1.0, got {scale_floor}")
    if not (math.isfinite(min_fps) and min_fps > 0):
        raise ValueError(f"min_fps must be a finite rate above 0 frames per second, got {min_fps}")
    if not (math.isfinite(headroom) and 0 < headroom <= 1):
        raise ValueError(
            f"headroom is the share of the budget to plan for: it must be above 0 and at most 1 "
            f"(0.9 leaves 10% for bursts), got {headroom}"
        )
    counts = Counter(camera.name for camera in cameras)
    duplicates = sorted(name for name, count in counts.items() if count > 1)
    if duplicates:
        raise ValueError(
            f"camera names must be unique within a plan, got duplicates: {', '.join(duplicates)}"
        )
