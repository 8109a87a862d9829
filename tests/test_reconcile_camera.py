"""The pure Camera decisions: orphans, the pod-coming rule, what an ingest report means."""

from __future__ import annotations

from datetime import timedelta

import pytest

from pantau.reconcile.assignment import CameraLoad, assign
from pantau.reconcile.camera import (
    POD_START_GRACE,
    PoolView,
    plan_camera,
    plan_orphan_camera,
    pod_coming,
    report_facts,
    report_verdict,
)
from pantau.reconcile.facts import ObjectFacts, PodFacts
from pantau.reconcile.status import Verdict
from tests.cases_reconcile import NOW, POOL, cam, ready_condition, report

POD = f"{POOL}-0"


def pool(pods: dict[str, bool] | None = None, created: str | None = "2026-11-29T09:00:00Z") -> PoolView:
    facts = {name: PodFacts(ok, "10.1.0.1") for name, ok in (pods or {}).items()}
    loads = [CameraLoad(key=n, cost=1.0) for n in ("a", "lonely", "moved")]
    return PoolView("alun", POOL, 1, assign(loads, 1), facts, created, frozenset())


# ----- a Camera whose Site is missing -----


def test_orphan_camera_is_not_ready_and_told_once() -> None:
    plan = plan_orphan_camera(cam("lonely"), "pasar", site_exists=False, deleted=False, now=NOW)
    assert plan is not None
    assert plan.label is None
    assert plan.status is not None
    assert plan.status["reason"] == "SiteNotFound"
    assert ready_condition(plan.status)["message"] == "Site 'pasar' does not exist in namespace ns"
    assert [(e.kind, e.name, e.uid, e.type, e.reason) for e in plan.events] == [
        ("Camera", "lonely", "uid-lonely", "Warning", "SiteNotFound")
    ]
    again = plan_orphan_camera(
        cam("lonely", status=plan.status),
        "pasar",
        site_exists=False,
        deleted=False,
        now=NOW + timedelta(minutes=5),
    )
    assert again is not None
    assert again.status == plan.status
    assert again.events == []


def test_orphan_camera_is_told_again_when_the_reason_changes() -> None:
    first = plan_orphan_camera(cam("lonely"), "pasar", site_exists=False, deleted=False, now=NOW)
    assert first is not None
    assert first.status is not None
    broken = ObjectFacts("ns", "lonely", "uid-lonely", 2, None, error="source.url: bad", status=first.status)
    plan = plan_orphan_camera(broken, "pasar", site_exists=False, deleted=False, now=NOW)
    assert plan is not None
    assert plan.status is not None
    assert plan.status["reason"] == "InvalidSpec"
    assert [(e.reason, e.message) for e in plan.events] == [("InvalidSpec", "source.url: bad")]


@pytest.mark.parametrize(("exists", "deleted"), [(True, False), (False, True), (True, True)])
def test_no_orphan_plan_for_a_camera_with_a_site_or_gone(exists: bool, deleted: bool) -> None:
    assert plan_orphan_camera(cam("a"), "alun", site_exists=exists, deleted=deleted, now=NOW) is None


# ----- the pod-coming rule -----

NOT_READY = Verdict(False, "PodNotReady", "ingest pod is not ready yet")


def test_pod_coming_while_the_pool_is_being_created() -> None:
    assert pod_coming(POD, NOT_READY, pool(created=None), NOW)
    assert pod_coming(POD, NOT_READY, pool(created=""), NOW)


def test_pod_coming_in_a_young_pool_only() -> None:
    young = (NOW - timedelta(seconds=POD_START_GRACE - 1)).isoformat().replace("+00:00", "Z")
    old = (NOW - timedelta(seconds=POD_START_GRACE + 1)).isoformat().replace("+00:00", "Z")
    assert pod_coming(POD, NOT_READY, pool(created=young), NOW)
    assert not pod_coming(POD, NOT_READY, pool(created=old), NOW)


def test_a_pod_that_exists_or_another_reason_is_not_coming() -> None:
    assert not pod_coming(POD, NOT_READY, pool({POD: False}, created=None), NOW)
    assert not pod_coming(POD, Verdict(False, "SecretNotFound", "x"), pool(created=None), NOW)
    assert not pod_coming(None, NOT_READY, pool(created=None), NOW)


def test_a_coming_pods_camera_gets_its_label_but_no_status_yet() -> None:
    plan = plan_camera(cam("a"), pool(created=None), None, NOW)
    assert plan.label == POD
    assert plan.status is None
    assert not plan.ready


# ----- what an ingest pod's report means -----


def test_backoff_with_auth_failed_makes_the_camera_not_ready() -> None:
    plan = plan_camera(cam("a"), pool({POD: True}), report("a", "Backoff", reason="AuthFailed"), NOW)
    assert plan.status is not None
    ready = ready_condition(plan.status)
    assert (ready["status"], ready["reason"], plan.status["reason"]) == ("False", "AuthFailed", "AuthFailed")
    assert ready["message"] == "camera is backoff"
    assert not plan.ready


def test_streaming_with_triton_unavailable_is_streaming_but_not_ready() -> None:
    got = report_verdict(report("a", reason="InferenceUnavailable", message="Triton is down"), POD)
    assert got == (
        Verdict(True, "Streaming", f"frames arrive at pod {POD}"),
        Verdict(False, "InferenceUnavailable", "Triton is down"),
    )
    plan = plan_camera(cam("a"), pool({POD: True}), report("a", reason="InferenceUnavailable"), NOW)
    assert plan.status is not None
    assert ready_condition(plan.status)["status"] == "False"
    assert plan.status["streaming"] is True


def test_a_report_without_a_reason_says_not_streaming() -> None:
    stopped = Verdict(False, "NotStreaming", "camera is starting")
    assert report_verdict(report("a", "Starting"), POD) == (stopped, stopped)


def test_a_report_is_not_read_while_the_pod_is_not_ready() -> None:
    plan = plan_camera(cam("a"), pool({POD: False}), report("a", "Backoff", reason="AuthFailed"), NOW)
    assert plan.status is not None
    assert ready_condition(plan.status)["reason"] == "PodNotReady"
    # Whatever the pod said before it went: no pod reads the camera now, so it is not streaming.
    streaming = {c["type"]: c for c in plan.status["conditions"]}["Streaming"]
    assert (streaming["status"], streaming["reason"]) == ("False", "PodNotReady")
    assert plan.status["streaming"] is False


def test_a_ready_pod_without_a_report_makes_the_camera_unknown_never_ready() -> None:
    was_ready = cam(
        "a",
        status={
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Streaming",
                    "message": "m",
                    "lastTransitionTime": "2026-11-29T09:00:00Z",
                }
            ]
        },
    )
    plan = plan_camera(was_ready, pool({POD: True}), None, NOW)
    assert plan.status is not None
    conditions = {c["type"]: c for c in plan.status["conditions"]}
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == ("Unknown", "NoReport")
    assert (conditions["Streaming"]["status"], conditions["Streaming"]["reason"]) == ("Unknown", "NoReport")
    assert POD in conditions["Ready"]["message"]
    assert plan.status["reason"] == "NoReport"
    assert "streaming" not in plan.status  # unknown: `kubectl get` shows <none>, not an old True
    assert not plan.ready
    assert not plan.failed  # nothing for the user to fix: the next report decides


def test_counters_are_written_when_streaming_flips_or_they_are_old() -> None:
    live = report("a", fps=2.345, frames_processed=7, frames_dropped={"queue": 2, "decode": 1})
    fresh = report_facts(live, {}, NOW)
    assert fresh == {
        "streaming": True,
        "fps": 2.35,
        "framesProcessed": 7,
        "framesDropped": 3,
        "detectionCounts": {},
    }
    written = {**fresh, "lastFrameTime": "2026-11-29T09:59:30Z"}
    assert report_facts(live, written, NOW) == written  # half a minute old: kept
    stamped = report("a", last_frame_time="2026-11-29T10:00:00.5Z", frames_processed=9)
    assert (
        report_facts(stamped, {**written, "lastFrameTime": "2026-11-29T09:58:00Z"}, NOW)["lastFrameTime"]
        == "2026-11-29T10:00:00Z"
    )


def test_insecure_tls_is_a_warning_condition_told_once_and_not_a_failure() -> None:
    url = "rtsps://10.0.0.1:322/a"
    insecure = cam("a", url=url, tls={"insecureSkipVerify": True})
    plan = plan_camera(insecure, pool({POD: True}), report("a"), NOW)
    assert plan.status is not None
    tls = {c["type"]: c for c in plan.status["conditions"]}["TLSVerified"]
    assert (tls["status"], tls["reason"]) == ("False", "InsecureSkipVerify")
    assert "spec.source.tls.caSecretRef" in tls["message"]
    assert ready_condition(plan.status)["status"] == "True"  # it streams: a warning, not a failure
    assert plan.ready
    assert ("Warning", "InsecureSkipVerify") in [(e.type, e.reason) for e in plan.events]
    told = cam("a", url=url, tls={"insecureSkipVerify": True}, status=plan.status)
    assert "InsecureSkipVerify" not in [
        e.reason for e in plan_camera(told, pool({POD: True}), report("a"), NOW).events
    ]

    verified = plan_camera(cam("a", url=url), pool({POD: True}), report("a"), NOW).status
    assert verified is not None
    assert {c["type"]: c["reason"] for c in verified["conditions"]}["TLSVerified"] == "Verified"
    plain = plan_camera(cam("a"), pool({POD: True}), report("a"), NOW).status
    assert plain is not None
    assert "TLSVerified" not in {c["type"] for c in plain["conditions"]}


def test_a_camera_that_moved_is_told() -> None:
    plan = plan_camera(cam("moved", labels={"pantau.io/shard": f"{POOL}-3"}), pool({POD: True}), None, NOW)
    assert [(e.type, e.reason, e.message) for e in plan.events] == [
        ("Normal", "Reassigned", f"moved from {POOL}-3 to {POD}")
    ]
