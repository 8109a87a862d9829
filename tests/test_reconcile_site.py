"""The pure Site plan: pool, assignments, statuses and events from observed facts."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from pantau.builders.pool import PoolSettings
from pantau.models.camera import CameraSpec
from pantau.models.site import SiteSpec
from pantau.reconcile.site import ObjectFacts, camera_cost, camera_status_without_site, plan_site

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
SETTINGS = PoolSettings(
    default_image="pantau:test", triton_address="triton:8001", model="yolox", otlp_endpoint=None
)


def site(**ingest: Any) -> ObjectFacts:
    spec = SiteSpec.model_validate({"displayName": "Alun-alun", "region": "Kota Bengkulu", "ingest": ingest})
    return ObjectFacts("ns", "alun", "site-uid", 3, spec)


def cam(
    name: str, fps: float = 5, secret: str | None = None, status: dict[str, Any] | None = None, **spec: Any
) -> ObjectFacts:
    source: dict[str, Any] = {"url": f"rtsp://10.0.0.1/{name}", "protocol": "rtsp"}
    if secret:
        source["credentialsSecretRef"] = {"name": secret}
    body = {"siteRef": {"name": "alun"}, "source": source, "sampling": {"fps": fps}, **spec}
    return ObjectFacts("ns", name, f"uid-{name}", 1, CameraSpec.model_validate(body), status=status or {})


def ready(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Ready")


def test_plan_assigns_every_camera_and_builds_the_pool() -> None:
    cameras = [cam(f"c{i}", secret="creds" if i % 2 else None) for i in range(10)]
    plan = plan_site(
        site(), cameras, {"alun-ingest-0": True, "alun-ingest-1": True}, frozenset({"creds"}), SETTINGS, NOW
    )
    assert [c["kind"] for c in plan.children] == [
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Service",
        "StatefulSet",
        "PodDisruptionBudget",
    ]
    replicas = plan.children[4]["spec"]["replicas"]
    assert replicas == 2  # 10 cameras, 8 per pod by default
    assert set(plan.camera_labels.values()) == {"alun-ingest-0", "alun-ingest-1"}
    for name, status in plan.camera_status.items():
        assert status["pod"] == plan.camera_labels[name]
        assert ready(status)["reason"] == "PodReady"
        assert "reason" not in status
    assert plan.site_status["cameras"] == {"total": 10, "ready": 10, "streaming": 0, "failed": 0}
    assert plan.site_status["pods"] == {"desired": 2, "ready": 2}
    rules = plan.children[1]["rules"]
    assert [r.get("resourceNames") for r in rules if "secrets" in r["resources"]] == [["creds"]]


def test_missing_secret_paused_and_pod_not_ready_are_reasons() -> None:
    cameras = [cam("a", secret="gone"), cam("b", paused=True), cam("c")]
    plan = plan_site(site(), cameras, {}, frozenset(), SETTINGS, NOW)
    assert plan.camera_status["a"]["reason"] == "SecretNotFound"
    assert plan.camera_status["b"]["reason"] == "Paused"
    assert plan.camera_labels["b"] is None
    assert plan.camera_status["c"]["reason"] == "PodNotReady"
    assert [(e.name, e.reason) for e in plan.events] == [("a", "SecretNotFound")]
    assert plan.site_status["cameras"]["failed"] == 1


def test_unchanged_status_keeps_transition_times_and_tells_nothing_twice() -> None:
    first = plan_site(site(), [cam("a", secret="gone")], {}, frozenset(), SETTINGS, NOW)
    again = plan_site(
        site(),
        [cam("a", secret="gone", status=first.camera_status["a"])],
        {},
        frozenset(),
        SETTINGS,
        NOW + timedelta(minutes=5),
    )
    assert again.camera_status["a"] == first.camera_status["a"]
    assert again.events == []


def test_plan_is_pure() -> None:
    cameras = [cam("a"), cam("b", fps=10)]
    before = copy.deepcopy(cameras)
    one = plan_site(site(), cameras, {}, frozenset(), SETTINGS, NOW)
    two = plan_site(site(), list(reversed(cameras)), {}, frozenset(), SETTINGS, NOW)
    assert one == two
    assert cameras == before


def test_cost_is_fps_times_resolution() -> None:
    s = site().spec
    assert camera_cost(cam("a", fps=10).spec, s) == 10.0  # 1080p assumed
    small = cam(
        "b",
        fps=10,
        source={"url": "rtsp://h/x", "protocol": "rtsp", "resolution": {"width": 960, "height": 540}},
    )
    assert camera_cost(small.spec, s) == 2.5


def test_camera_without_site() -> None:
    status = camera_status_without_site(cam("lonely"), "pasar", NOW)
    assert status["reason"] == "SiteNotFound"
    assert "pasar" in ready(status)["message"]


def test_ingest_reports_become_reasons() -> None:
    pods = {"alun-ingest-0": True}
    reports = {
        "ok": {"state": "Streaming", "reason": None, "fps": 2.0, "frames_processed": 10},
        "auth": {"state": "Backoff", "reason": "AuthFailed", "message": "401 from the camera"},
        "triton": {"state": "Streaming", "reason": "TritonUnavailable", "message": "Triton is down"},
    }
    cameras = [cam(n) for n in reports]
    plan = plan_site(site(), cameras, pods, frozenset(), SETTINGS, NOW, reports)
    got = {n: (ready(s)["status"], ready(s)["reason"], s["streaming"]) for n, s in plan.camera_status.items()}
    assert got == {
        "ok": ("True", "Streaming", True),
        "auth": ("False", "AuthFailed", False),
        "triton": ("False", "TritonUnavailable", True),
    }
    assert plan.camera_status["auth"]["reason"] == "AuthFailed"
    assert plan.camera_status["ok"]["framesProcessed"] == 10
