"""The pure Site plan: pool, assignments, statuses and events from observed facts."""

from __future__ import annotations

import copy
from datetime import timedelta

from pantau.contract import ANNOTATION_CREDENTIALS_SITES, LABEL_CREDENTIALS
from pantau.reconcile.facts import ObjectFacts, SecretFacts
from pantau.reconcile.site import camera_cost, plan_site
from tests.cases_reconcile import NOW, POOL, SETTINGS, cam, observe, ready_condition, report, site
from tests.test_builders import KINDS


def test_plan_assigns_every_camera_and_builds_the_pool() -> None:
    cameras = [cam(f"c{i}", secret="creds" if i % 2 else None) for i in range(10)]
    pods = {f"{POOL}-0": True, f"{POOL}-1": True}
    plan = plan_site(observe(site(), cameras, pods, frozenset({"creds"})), SETTINGS, NOW)
    assert [c["kind"] for c in plan.children] == KINDS
    # The pool's pods may reach exactly these cameras (one address, one rule).
    egress = plan.children[6]["spec"]["egress"]
    assert {
        "to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}],
        "ports": [{"port": 554, "protocol": "TCP"}],
    } in egress
    replicas = plan.children[4]["spec"]["replicas"]
    assert replicas == 2  # 10 cameras, 8 per pod by default
    assert set(plan.camera_labels.values()) == {f"{POOL}-0", f"{POOL}-1"}
    for name, status in plan.camera_status.items():
        assert status["pod"] == plan.camera_labels[name]
        assert ready_condition(status)["reason"] == "NoReport"  # the pods are ready, not reporting yet
        assert status["reason"] == "NoReport"
    assert plan.site_status["cameras"] == {"total": 10, "ready": 0, "streaming": 0, "failed": 0}
    assert plan.site_status["pods"] == {"desired": 2, "ready": 2}
    rules = plan.children[1]["rules"]
    assert [r.get("resourceNames") for r in rules if "secrets" in r["resources"]] == [["creds"]]
    assert plan.unseen == frozenset()


def test_missing_secret_paused_and_pod_not_ready_are_reasons() -> None:
    cameras = [cam("a", secret="gone"), cam("b", paused=True), cam("c")]
    plan = plan_site(observe(site(), cameras, {f"{POOL}-0": False}), SETTINGS, NOW)
    assert plan.camera_status["a"]["reason"] == "SecretNotFound"
    assert plan.camera_status["b"]["reason"] == "Paused"
    assert plan.camera_labels["b"] is None
    assert plan.camera_status["c"]["reason"] == "PodNotReady"
    assert [(e.name, e.reason) for e in plan.events] == [("a", "SecretNotFound")]
    assert plan.site_status["cameras"]["failed"] == 1


def test_a_secret_is_used_only_with_its_consent_for_the_site() -> None:
    """Unlabelled, or labelled for other Sites: the Camera is told how to permit it, and no Role
    names the Secret; labelled for this Site (or any): the Role names it."""
    cameras = [cam("a", secret="plain"), cam("b", secret="elsewhere"), cam("c", secret="ours"), cam("d")]
    secrets = {
        "plain": SecretFacts.of({"name": "plain"}),
        "elsewhere": SecretFacts.of(
            {"labels": {LABEL_CREDENTIALS: "true"}, "annotations": {ANNOTATION_CREDENTIALS_SITES: "x, y"}}
        ),
        "ours": SecretFacts.of(
            {"labels": {LABEL_CREDENTIALS: "true"}, "annotations": {ANNOTATION_CREDENTIALS_SITES: "y,alun"}}
        ),
    }
    plan = plan_site(observe(site(), cameras, {f"{POOL}-0": True}, secrets), SETTINGS, NOW)
    a, b = ready_condition(plan.camera_status["a"]), ready_condition(plan.camera_status["b"])
    assert (a["status"], a["reason"]) == ("False", "SecretNotPermitted")
    assert f"label it {LABEL_CREDENTIALS}=true" in a["message"]
    assert b["reason"] == "SecretNotPermitted"
    assert f"add 'alun' to its {ANNOTATION_CREDENTIALS_SITES} annotation" in b["message"]
    assert ready_condition(plan.camera_status["c"])["reason"] == "NoReport"  # permitted; no report yet
    rules = plan.children[1]["rules"]
    assert [r.get("resourceNames") for r in rules if "secrets" in r["resources"]] == [["ours"]]
    assert sorted((e.name, e.reason) for e in plan.events) == [
        ("a", "SecretNotPermitted"),
        ("b", "SecretNotPermitted"),
    ]
    assert plan.site_status["cameras"]["failed"] == 2


def test_unchanged_status_keeps_transition_times_and_tells_nothing_twice() -> None:
    first = plan_site(observe(site(), [cam("a", secret="gone")]), SETTINGS, NOW)
    again = plan_site(
        observe(site(), [cam("a", secret="gone", status=first.camera_status["a"])]),
        SETTINGS,
        NOW + timedelta(minutes=5),
    )
    assert again.camera_status["a"] == first.camera_status["a"]
    assert again.events == []


def test_plan_is_pure() -> None:
    cameras = [cam("a"), cam("b", fps=10)]
    before = copy.deepcopy(cameras)
    one = plan_site(observe(site(), cameras), SETTINGS, NOW)
    two = plan_site(observe(site(), list(reversed(cameras))), SETTINGS, NOW)
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


def test_invalid_site_spec_is_told_in_its_status_only() -> None:
    broken = ObjectFacts("ns", "alun", "site-uid", 4, None, error="ingest.maxPods: must be >= 1")
    plan = plan_site(observe(broken, [cam("a")], {f"{POOL}-0": True}), SETTINGS, NOW)
    assert plan.site_status == {
        "observedGeneration": 4,
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "InvalidSpec",
                "message": "ingest.maxPods: must be >= 1",
                "lastTransitionTime": "2026-11-29T10:00:00Z",
                "observedGeneration": 4,
            }
        ],
    }
    assert (plan.children, plan.camera_labels, plan.camera_status, plan.events) == ([], {}, {}, [])
    # Still invalid later: the transition time stays, so the status is not rewritten.
    later = ObjectFacts("ns", "alun", "site-uid", 4, None, error=broken.error, status=plan.site_status)
    again = plan_site(observe(later, [cam("a")]), SETTINGS, NOW + timedelta(minutes=5))
    assert again.site_status == plan.site_status


def test_a_pool_no_watch_shows_is_written_even_if_just_written() -> None:
    plan = plan_site(observe(site(), [cam("a")], pool_created=None), SETTINGS, NOW)
    assert plan.unseen == frozenset({("StatefulSet", POOL)})


def test_pods_of_a_longer_named_pool_are_not_this_pools() -> None:
    # Site "alun-ingest" has the pool "alun-ingest-ingest": its pod 0 is not "alun-ingest"'s pod.
    plan = plan_site(observe(site(), [cam("a")], {f"{POOL}-ingest-0": True}), SETTINGS, NOW)
    assert plan.site_status["pods"] == {"desired": 1, "ready": 0}


def test_overload_is_told_once() -> None:
    cameras = [cam(f"c{i}") for i in range(3)]
    plan = plan_site(observe(site(maxPods=1, podCapacity={"cameras": 2}), cameras), SETTINGS, NOW)
    assert [(e.kind, e.type, e.reason) for e in plan.events] == [("Site", "Warning", "OverCapacity")]
    assert plan.events[0].message == "3 cameras need more than 1 pods"
    loaded = ObjectFacts(
        "ns", "alun", "site-uid", 3, site(maxPods=1, podCapacity={"cameras": 2}).spec, status=plan.site_status
    )
    assert plan_site(observe(loaded, cameras), SETTINGS, NOW).events == []


def test_ingest_reports_become_reasons() -> None:
    reports = {
        "ok": report("ok", fps=2.0, frames_processed=10),
        "auth": report("auth", "Backoff", reason="AuthFailed", message="401 from the camera"),
        "triton": report("triton", reason="InferenceUnavailable", message="Triton is down"),
    }
    cameras = [cam(n) for n in reports]
    plan = plan_site(observe(site(), cameras, {f"{POOL}-0": True}), SETTINGS, NOW, reports)
    got = {
        n: (ready_condition(s)["status"], ready_condition(s)["reason"], s["streaming"])
        for n, s in plan.camera_status.items()
    }
    assert got == {
        "ok": ("True", "Streaming", True),
        "auth": ("False", "AuthFailed", False),
        "triton": ("False", "InferenceUnavailable", True),
    }
    assert plan.camera_status["auth"]["reason"] == "AuthFailed"
    assert plan.camera_status["triton"]["reason"] == "InferenceUnavailable"
    assert plan.camera_status["ok"]["framesProcessed"] == 10
    assert plan.site_status["cameras"]["ready"] == 1
