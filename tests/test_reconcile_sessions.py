"""A source's session budget (spec.source.maxSessions) is shared by the Cameras that read it."""

from __future__ import annotations

from pantau.reconcile.sessions import over_budget, source_key
from pantau.reconcile.site import plan_site
from tests.cases_reconcile import NOW, POOL, SETTINGS, cam, observe, ready_condition, site

SAME = "rtsp://10.0.0.9/Streaming/Channels/101"


def test_source_key_ignores_case_and_default_ports_but_not_paths() -> None:
    assert source_key("RTSP://Cam.Local/a") == source_key("rtsp://cam.local:554/a")
    assert source_key("https://cam.local/snap.jpg") == source_key("https://cam.local:443/snap.jpg")
    assert source_key("rtsp://cam.local/a") != source_key("rtsp://cam.local/b")
    assert source_key("http://cam.local/s?ch=1") != source_key("http://cam.local/s?ch=2")


def test_cameras_within_the_budget_all_get_a_session() -> None:
    cameras = [
        cam("a", url=SAME, max_sessions=2),
        cam("b", url=SAME.upper().replace("RTSP", "rtsp"), max_sessions=2),
    ]
    assert over_budget(cameras) == {}


def test_the_smallest_budget_of_a_source_holds_and_the_first_names_keep_it() -> None:
    cameras = [cam("c", url=SAME, max_sessions=3), cam("a", url=SAME), cam("b", url=SAME, max_sessions=3)]
    refused = over_budget(cameras)
    assert sorted(refused) == ["b", "c"]
    assert "session budget is 1" in refused["b"]
    assert "a hold the sessions" in refused["b"]


def test_a_camera_over_the_budget_gets_no_pod_and_says_why() -> None:
    pods = {f"{POOL}-0": True}
    cameras = [
        cam("a", url=SAME, secret="login-a"),
        cam("b", url=SAME, secret="login-b"),
        cam("other"),
    ]
    plan = plan_site(observe(site(), cameras, pods, secrets=frozenset({"login-a", "login-b"})), SETTINGS, NOW)
    assert plan.camera_labels == {"a": f"{POOL}-0", "b": None, "other": f"{POOL}-0"}
    refused = ready_condition(plan.camera_status["b"])
    assert refused["status"] == "False"
    assert refused["reason"] == "SessionLimit"
    assert "spec.source.maxSessions" in refused["message"]
    assert plan.camera_status["b"]["reason"] == "SessionLimit"
    # Nothing reads b, so its pool may not read its Secret; the user is told once.
    (role,) = [c for c in plan.children if c["kind"] == "Role"]
    secret_rules = [r for r in role["rules"] if r["resources"] == ["secrets"]]
    assert secret_rules[0]["resourceNames"] == ["login-a"]
    assert [(e.name, e.reason) for e in plan.events if e.type == "Warning"] == [("b", "SessionLimit")]
    assert plan.site_status["cameras"]["failed"] == 1


def test_raising_the_budget_gives_the_camera_its_session() -> None:
    pods = {f"{POOL}-0": True}
    cameras = [cam("a", url=SAME, max_sessions=2), cam("b", url=SAME, max_sessions=2)]
    plan = plan_site(observe(site(), cameras, pods), SETTINGS, NOW)
    assert plan.camera_labels == {"a": f"{POOL}-0", "b": f"{POOL}-0"}
    assert ready_condition(plan.camera_status["b"])["reason"] == "NoReport"  # ready pod, no report yet
