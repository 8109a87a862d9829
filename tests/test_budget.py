"""The ingest pod's uplink budget in a closed loop (simulated time): cameras send what their settings
give, the meter measures it, the pod replans; the Camera and Site status that the plan produces; and the
latency limit's stale frames."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opentelemetry.sdk.trace import TracerProvider

from pantau.contract import UplinkReport
from pantau.ingest import uplink
from pantau.ingest.budget import REPLAN, REQUEST_OVERHEAD, UplinkBudget
from pantau.ingest.events import JsonLinesSink
from pantau.ingest.pipeline import CameraWorker, PodContext
from pantau.ingest.sources import Sample
from pantau.models.camera import CameraSpec
from pantau.models.site import CameraDefaults, Uplink
from pantau.reconcile.assignment import Assignment, CameraLoad, assign
from pantau.reconcile.camera import PoolView, plan_camera, uplink_status, uplink_verdict
from pantau.reconcile.facts import ObjectFacts, PodFacts
from pantau.reconcile.site import site_status
from pantau.triton.client import ClientSettings, Detector
from tests.cases_reconcile import NOW, POOL, cam, report, site


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def budget(bandwidth: str, clock: Clock, **fields: Any) -> UplinkBudget:
    found = UplinkBudget(Uplink.model_validate({"bandwidth": bandwidth, **fields}))
    found.meter = uplink.ByteMeter(clock=clock)
    return found


def run(
    found: UplinkBudget, clock: Clock, cameras: dict[str, tuple[int, float, float]], seconds: float
) -> None:
    """Cameras (name -> priority, asked fps, true bytes of a frame at the reference setting) send what the
    plan allows for `seconds` of simulated time, replanning every REPLAN seconds as the pod does."""
    for name, (priority, fps, _) in cameras.items():
        found.ask(name, priority, fps, pixels=416 * 312)
    next_frame = dict.fromkeys(cameras, 0.0)
    next_plan, step = 0.0, 0.01
    while clock.now < seconds:
        if clock.now >= next_plan:
            found.replan()
            next_plan += REPLAN
        for name, (_, asked, true_bytes) in cameras.items():
            setting = found.setting(name)
            assert setting is not None
            if clock.now >= next_frame[name]:
                size = uplink.frame_size(true_bytes, setting.quality, setting.scale)
                found.frame_sent(name, round(size), setting)
                found.event_bytes_sent(600)  # its detection event
                next_frame[name] = clock.now + 1 / min(setting.fps, asked)
        clock.now += step


def test_without_an_uplink_there_is_no_plan_and_frames_go_as_pixels() -> None:
    found = UplinkBudget()
    found.ask("a", 50, 2.0)
    assert found.setting("a") is None
    assert found.report("a") is None
    assert not found.active


def test_the_loop_settles_within_the_budget_using_most_of_it() -> None:
    clock = Clock()
    found = budget("2M", clock)
    # Four busy cameras at 4 fps and ~40 kB a frame ask for ~5 Mbit/s.
    cameras = {f"cam-{i}": (50, 4.0, 40_000.0) for i in range(4)}
    run(found, clock, cameras, 120)
    sent = found.meter.bytes_per_s() * 8
    assert found.plan is not None
    assert found.plan.limited
    assert 0.75 * 2e6 <= sent <= 2e6, sent  # the headroom (90%) leaves the rest for headers
    report = found.report("cam-0")
    assert report is not None
    assert report.limited
    assert report.budget_bps == 2e6


def test_lower_priority_cameras_lose_fps_first() -> None:
    clock = Clock()
    found = budget("500k", clock, qualityFloor=40, scaleFloor=0.5)
    cameras = {"gate": (90, 4.0, 40_000.0), "yard": (10, 4.0, 40_000.0), "road": (50, 4.0, 40_000.0)}
    run(found, clock, cameras, 60)
    settings = {name: found.setting(name) for name in cameras}
    assert all(s is not None and s.quality == 40 and s.scale == 0.5 for s in settings.values())
    fps = {name: s.fps for name, s in settings.items() if s is not None}
    assert fps["gate"] >= fps["road"] >= fps["yard"]
    assert fps["yard"] < 4.0
    assert fps["gate"] == 4.0


def test_a_thin_pipe_cuts_quality_before_resolution_before_fps() -> None:
    clock = Clock()
    seen = []
    for bandwidth in ("20M", "1600k", "900k", "300k"):
        found = budget(bandwidth, clock)
        run(found, clock, {"a": (50, 4.0, 40_000.0), "b": (50, 4.0, 40_000.0)}, clock.now + 40)
        assert found.plan is not None
        seen.append(found.plan.stage)
    assert seen == ["none", "quality", "resolution", "fps"]


def test_a_pods_share_of_the_site_budget() -> None:
    found = UplinkBudget(Uplink.model_validate({"bandwidth": "4M"}))
    found.configure(found.settings, share=0.25)
    assert found.budget_bps == pytest.approx(1e6)
    with pytest.raises(ValueError, match="share"):
        found.configure(found.settings, share=0)


def test_the_request_overhead_is_counted_with_each_frame() -> None:
    clock = Clock()
    found = budget("2M", clock)
    found.ask("a", 50, 1.0)
    found.replan()
    setting = found.setting("a")
    assert setting is not None
    clock.now = 1.0
    found.frame_sent("a", 10_000, setting)
    clock.now = 10.0
    assert found.meter.bytes_per_s() == pytest.approx((10_000 + REQUEST_OVERHEAD) / 10)


# ----- status -----


def limited_report(name: str, fps: float = 0.5, quality: int = 40) -> Any:
    plan = UplinkReport(
        quality=quality,
        scale=0.5,
        fps=fps,
        asked_fps=2.0,
        limited=True,
        stage="fps",
        budget_bps=2e6,
        sent_bps=1.7e6,
        message="quality 40, scale 0.5",
    )
    return report(name, uplink=plan)


def test_a_limited_camera_is_degraded_with_its_effective_setting() -> None:
    pool = PoolView("alun", POOL, 1, _one_shard(["a"]), {f"{POOL}-0": PodFacts(True, "10.1.0.1")})
    plan = plan_camera(cam("a"), pool, limited_report("a"), NOW)
    assert plan.status is not None
    assert plan.status["uplink"] == {
        "limited": True,
        "stage": "fps",
        "quality": 40,
        "scale": 0.5,
        "fps": 0.5,
        "askedFps": 2.0,
    }
    degraded = next(c for c in plan.status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "UplinkLimited")
    assert "quality 40, scale 0.5, 0.5 fps" in degraded["message"]
    assert "spec.uplink.bandwidth" in degraded["message"]
    # The Site tells it too: how many cameras, and the one cut most.
    status, _ = site_status(_site(), [cam("a")], {"a": plan}, pool, NOW)
    condition = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert (condition["status"], condition["reason"]) == ("True", "UplinkLimited")
    assert "1 of 1 cameras" in condition["message"]
    assert "a, is sent at quality 40" in condition["message"]
    assert status["uplink"] == {"bandwidth": "2M", "limitedCameras": 1}


def test_small_moves_of_the_plan_do_not_rewrite_the_status() -> None:
    first = uplink_status(limited_report("a", fps=0.5), {})
    assert first is not None
    assert uplink_status(limited_report("a", fps=0.52), {"uplink": first}) == first
    moved = uplink_status(limited_report("a", fps=0.8), {"uplink": first})
    assert moved is not None
    assert moved["fps"] == 0.8


def test_a_camera_not_limited_and_a_site_without_uplink() -> None:
    within = {"limited": False, "quality": 80, "scale": 1.0, "fps": 2.0, "askedFps": 2.0}
    verdict = uplink_verdict(within, had_condition=False)
    assert verdict is not None
    assert (verdict.ok, verdict.reason) == (False, "WithinUplink")
    assert uplink_verdict(None, had_condition=False) is None
    cleared = uplink_verdict(None, had_condition=True)
    assert cleared is not None
    assert (cleared.ok, cleared.reason) == (False, "NotLimited")


def _one_shard(names: list[str]) -> Assignment:
    return assign([CameraLoad(key=n, cost=1.0) for n in names], 1)


def _site() -> ObjectFacts:
    found = site()
    return replace(
        found, spec=found.spec.model_copy(update={"uplink": Uplink.model_validate({"bandwidth": "2M"})})
    )


# ----- a frame too old for the uplink's latency limit -----


async def test_a_frame_older_than_the_uplinks_limit_is_dropped_as_stale(tmp_path: Path) -> None:
    """Site spec.uplink.maxLatencyMilliseconds: a sample that waited too long is not sent (it would only
    delay the ones behind it); it counts as a drop with the reason Stale, and nothing reaches Triton."""
    detector = Detector(ClientSettings(url="127.0.0.1:9"), input_size=416)  # never called: nothing listens
    ctx = PodContext(
        namespace="ns",
        site="alun",
        pod="alun-ingest-0",
        model="yolox",
        detector=detector,
        sink=JsonLinesSink(tmp_path / "events.jsonl"),
        tracer=TracerProvider().get_tracer("test"),
        defaults=CameraDefaults(),
        uplink=UplinkBudget(Uplink.model_validate({"bandwidth": "2M", "maxLatencyMilliseconds": 500})),
    )
    spec = CameraSpec.model_validate(
        {"siteRef": {"name": "alun"}, "source": {"url": "rtsp://10.0.0.1/a", "protocol": "rtsp"}}
    )
    worker = CameraWorker("a", "uid-a", spec, None, ctx)
    ctx.uplink.ask("a", 50, 1.0)
    old = Sample(
        image=np.zeros((416, 416, 3), np.uint8),
        orig_hw=(576, 768),
        captured_at=time.time() - 2.0,
        seq=0,
        keyframe=True,
        decode_seconds=0.01,
    )
    with ctx.tracer.start_as_current_span("frame") as root:
        assert await worker._infer(old, root) is None
    assert worker.stats.dropped == {"Stale": 1}
    assert worker.stats.reason == "Stale"
    assert "maxLatencyMilliseconds 500" in (worker.stats.message or "")
    assert ctx.uplink.meter.bytes_per_s() == 0  # nothing was sent
    await detector.aclose()
    await ctx.sink.aclose()
