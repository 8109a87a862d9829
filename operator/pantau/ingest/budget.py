"""An ingest pod's side of its Site's uplink budget (Site spec.uplink): what each camera sends, measured,
and the plan (pantau.ingest.uplink) that keeps the pod within the budget.

The cameras tell it what they ask for (priority, fps) and what they send (each frame and event, in bytes);
every `REPLAN` seconds the pod replans, and each camera reads its setting (quality, scale, fps) from here.
A pod serves one Site, and shares its Site's link with the Site's other pods: it plans for its share of
the budget, in proportion to the cameras it reads of the Site's cameras (Site status.cameras.total).
Without an uplink there is no plan: frames go to Triton as raw pixels, as they always did.
"""

from __future__ import annotations

from dataclasses import dataclass

from pantau.contract import UplinkReport
from pantau.ingest import uplink
from pantau.models.site import Uplink

REPLAN = 2.0  # seconds between plans
# Triton requests a pod keeps outstanding while its Site has an uplink: each spends a WAN round trip
# (200-400 ms) on the wire, so the 2 that keep a CPU Triton's instances busy on a LAN would cap a pod at
# 2 frames per round trip. 8 carry 20 frames a second over 400 ms; Triton queues what it cannot run yet.
WAN_IN_FLIGHT = 8
# Bytes of one frame at the reference setting before the camera has sent any: 0.2 bytes per pixel of
# its picture, a little above what the PETS09 street scene measured (0.17 at quality 80).
PRIOR_BYTES_PER_PIXEL = 0.2
UNSEEN_PIXELS = 416 * 312  # a 4:3 picture in the bundled detector's 416 px square, until one is seen
# What a gRPC inference request adds to the JPEG (HTTP/2 frame, protobuf fields, the metadata with the
# traceparent), bytes; counted with each frame so the plan reserves it.
REQUEST_OVERHEAD = 400


@dataclass(frozen=True)
class _Ask:
    priority: int
    fps: float
    pixels: int  # of the picture sent at scale 1.0; 0 until its first sample


class UplinkBudget:
    def __init__(self, settings: Uplink | None = None, *, share: float = 1.0) -> None:
        self.settings = settings
        self.share = share
        self.meter = uplink.ByteMeter()
        self.plan: uplink.UplinkPlan | None = None
        self._asks: dict[str, _Ask] = {}

    @property
    def active(self) -> bool:
        return self.settings is not None

    @property
    def budget_bps(self) -> float | None:
        """This pod's share of the Site's bandwidth, bits per second."""
        return None if self.settings is None else self.settings.bits_per_second * self.share

    def configure(self, settings: Uplink | None, share: float = 1.0) -> None:
        """The Site's uplink (None: removed) and this pod's share of it (0..1]; planned again at once."""
        if not 0 < share <= 1:
            raise ValueError(f"a pod's share of its Site's uplink must be above 0 and at most 1, got {share}")
        changed = (settings, share) != (self.settings, self.share)
        self.settings, self.share = settings, share
        if changed:
            self.replan()

    def ask(self, camera: str, priority: int, fps: float, pixels: int = 0) -> None:
        """What `camera` asks for; `pixels` of its picture once known (for the estimate before any frame)."""
        before = self._asks.get(camera)
        pixels = pixels or (before.pixels if before else 0)
        self._asks[camera] = _Ask(priority, fps, pixels)
        if before is None or before.priority != priority or before.fps != fps:
            self.replan()

    def forget(self, camera: str) -> None:
        self._asks.pop(camera, None)
        self.meter.forget(camera)

    def frame_sent(self, camera: str, nbytes: int, setting: uplink.Setting) -> None:
        self.meter.add_frame(camera, nbytes + REQUEST_OVERHEAD, setting.quality, setting.scale)

    def event_bytes_sent(self, nbytes: int) -> None:
        self.meter.add_event(nbytes)

    def setting(self, camera: str) -> uplink.Setting | None:
        """How `camera` sends now; None: no budget (raw pixels at its own fps)."""
        if self.plan is None:
            return None
        return self.plan.settings.get(camera) or uplink.Setting(uplink.REF_QUALITY, 1.0, self._fps(camera))

    def replan(self) -> uplink.UplinkPlan | None:
        s, budget = self.settings, self.budget_bps
        if s is None or budget is None or not self._asks:
            self.plan = None
            return None
        measured = self.meter.frame_bytes()
        prior = {
            name: (ask.pixels or UNSEEN_PIXELS) * PRIOR_BYTES_PER_PIXEL + REQUEST_OVERHEAD
            for name, ask in self._asks.items()
        }
        demands = [
            uplink.CameraDemand(
                name=name,
                priority=ask.priority,
                fps=ask.fps,
                frame_bytes=measured.get(name) or prior[name],
            )
            for name, ask in sorted(self._asks.items())
        ]
        self.plan = uplink.plan(
            demands,
            budget,
            self.meter.event_bytes_per_s(),
            quality_floor=s.quality_floor,
            scale_floor=s.scale_floor,
            min_fps=s.min_fps,
            headroom=s.headroom_percent / 100,
        )
        return self.plan

    def report(self, camera: str) -> UplinkReport | None:
        """The camera's part of the plan, for /status (and so for the Camera's status)."""
        plan, setting = self.plan, self.setting(camera)
        if plan is None or setting is None:
            return None
        ask = self._asks.get(camera)
        asked = ask.fps if ask else setting.fps
        limited = setting.fps < asked or setting.quality < uplink.REF_QUALITY or setting.scale < 1.0
        return UplinkReport(
            quality=setting.quality,
            scale=round(setting.scale, 3),
            fps=round(setting.fps, 3),
            asked_fps=asked,
            limited=limited,
            stage=plan.stage,
            budget_bps=self.budget_bps or 0.0,
            sent_bps=round(self.meter.bytes_per_s() * 8, 1),
            message=plan.message,
        )

    def _fps(self, camera: str) -> float:
        ask = self._asks.get(camera)
        return ask.fps if ask else 1.0
