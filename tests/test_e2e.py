"""End to end, from kubectl apply to traces: the demo's setup (same code as `pantau demo`) on the
session's stack, checked the way a platform engineer and an SRE would check it."""

from __future__ import annotations

import json
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from pantau.contract import LABEL_CREDENTIALS
from pantau_dev.demo.run import Demo
from pantau_dev.procs import wait_for
from pantau_dev.receiver import EventReceiver
from pantau_dev.stack import DevStack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def demo(dev_stack: DevStack) -> Iterator[Demo]:
    run = Demo(dev_stack, namespace="pantau-e2e")
    run.start()
    yield run
    run.stop()


def camera(demo: Demo, name: str) -> dict[str, Any]:
    return json.loads(demo.kubectl("get", "camera", name, "-o", "json").stdout)  # type: ignore[no-any-return]


def copy_of(demo: Demo, name: str, new_name: str) -> str:
    """One of the demo's Cameras (as `pantau demo` renders demo/cameras.yaml) under another name."""
    doc = next(d for d in yaml.safe_load_all(demo.render_cameras()) if d["metadata"]["name"] == name)
    doc["metadata"]["name"] = new_name
    return yaml.safe_dump(doc)


def ingest_pods(demo: Demo) -> dict[str, tuple[str, int]]:
    """pod name -> (uid, restarts)"""
    pods = {}
    for p in demo.objects("pods"):
        restarts = sum(c.get("restartCount", 0) for c in p.get("status", {}).get("containerStatuses", []))
        pods[p["metadata"]["name"]] = (p["metadata"]["uid"], restarts)
    return pods


def test_cameras_become_ready_and_streaming_within_60_s(demo: Demo) -> None:
    def all_streaming() -> bool:
        cams = {c["metadata"]["name"]: c.get("status", {}) for c in demo.objects("cameras")}
        return all(cams.get(n, {}).get("streaming") for n in ("simpang-lima", "test-pattern", "pasar-manna"))

    wait_for(all_streaming, timeout=60, what="cameras streaming", interval=1)
    for name in ("simpang-lima", "test-pattern", "pasar-manna"):
        ready = next(c for c in camera(demo, name)["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True", (name, ready)
    table = demo.kubectl("get", "cameras").stdout
    header = table.splitlines()[0].split()
    assert header == ["NAME", "SITE", "READY", "STREAMING", "REASON", "FPS", "POD", "AGE"]


def test_broken_camera_tells_why(demo: Demo) -> None:
    def refused() -> dict[str, Any] | None:
        status = camera(demo, "pelabuhan").get("status", {})
        return status if status.get("reason") == "ConnectionRefused" else None

    status = wait_for(refused, timeout=60, what="pelabuhan: ConnectionRefused", interval=1)
    assert status["streaming"] is False
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ConnectionRefused")
    row = next(r for r in demo.kubectl("get", "cameras").stdout.splitlines() if r.startswith("pelabuhan"))
    assert "ConnectionRefused" in row


def events_of(demo: Demo, camera_name: str) -> list[dict[str, Any]]:
    found = []
    for pod in demo.objects("pods"):
        for line in demo.pod_log(pod["metadata"]["name"]).splitlines():
            if line.startswith("{") and f'"camera":"{demo.namespace}/{camera_name}"' in line.replace(" ", ""):
                found.append(json.loads(line))
    return found


def test_persons_on_footage_are_in_events_and_traces(demo: Demo) -> None:
    with_people = wait_for(
        lambda: [
            e for e in events_of(demo, "simpang-lima") if any(d["class"] == "person" for d in e["detections"])
        ],
        timeout=60,
        what="events with persons",
    )
    event = with_people[-1]
    trace_id = event["traceparent"].split("-")[1]
    assert demo.info.jaeger_query

    def trace() -> dict[str, Any] | None:
        resp = httpx.get(f"{demo.info.jaeger_query}/api/traces/{trace_id}", timeout=5)
        return resp.json() if resp.status_code == 200 else None

    spans = wait_for(trace, timeout=60, what="trace in Jaeger")["data"][0]["spans"]
    root = next(s for s in spans if not s.get("references"))
    tags = {t["key"]: t["value"] for t in root["tags"]}
    assert tags["pantau.site"] == "kota-bengkulu"
    assert tags["pantau.camera"] == f"{demo.namespace}/simpang-lima"
    assert tags["pantau.frame_id"] == event["frame_id"]
    assert tags["pantau.detections"] == len(event["detections"])
    assert f"{root['spanID']}" in event["traceparent"]


def test_camera_added_at_runtime_streams_without_restarting_the_pool(demo: Demo) -> None:
    wait_for(
        lambda: camera(demo, "simpang-lima").get("status", {}).get("streaming"), timeout=60, what="streaming"
    )
    before = ingest_pods(demo)
    demo.kubectl("apply", "-f", "-", stdin=copy_of(demo, "simpang-lima", "simpang-lima-2"))
    wait_for(
        lambda: camera(demo, "simpang-lima-2").get("status", {}).get("streaming"),
        timeout=60,
        what="the new camera streaming",
        interval=1,
    )
    after = ingest_pods(demo)
    for pod, (uid, restarts) in before.items():
        assert after[pod] == (uid, restarts), f"pod {pod} was restarted"


def test_deleted_camera_stops_streaming_within_10_s(demo: Demo) -> None:
    demo.kubectl("apply", "-f", "-", stdin=copy_of(demo, "test-pattern", "pattern-gone"))
    wait_for(
        lambda: demo.pod_reports().get("pattern-gone", {}).get("state") == "Streaming",
        timeout=60,
        what="pattern-gone streaming",
        interval=1,
    )
    demo.kubectl("delete", "camera", "pattern-gone", "--wait=false")
    deleted = time.monotonic()
    wait_for(
        lambda: "pattern-gone" not in demo.pod_reports(), timeout=10, what="stream stopped", interval=0.5
    )
    assert time.monotonic() - deleted <= 10


def test_password_protected_camera_works_and_its_password_is_nowhere(demo: Demo) -> None:
    wait_for(
        lambda: camera(demo, "pasar-manna").get("status", {}).get("streaming"), timeout=60, what="streaming"
    )
    assert events_of(demo, "pasar-manna")
    assert password_leaks(demo) == []


def password_leaks(demo: Demo) -> list[str]:
    """Where the camera's password (current or rotated out) shows, in any form: every log of the
    stack, statuses, Events, pods (their env), ConfigMaps, StatefulSets, the ingest pods' traces in
    Jaeger and what they serve."""
    needles = {
        form for pw in (demo.password, *demo.old_passwords) for form in (pw, urllib.parse.quote(pw, safe=""))
    }

    def leaks(text: str, where: str) -> list[str]:
        return [f"{where}" for n in needles if n in text]

    found: list[str] = []
    # Every log of the stack: control plane, node, operator and ingest pods (the kubelet's pod
    # logs), cameras, Triton, Jaeger.
    for path in Path(demo.stack.state).rglob("*.log"):
        found += leaks(path.read_text(errors="replace"), str(path))
    for kind in ("cameras", "sites", "events", "pods", "configmaps", "statefulsets"):
        found += leaks(demo.kubectl("get", kind, "-o", "json").stdout, kind)
    assert demo.info.jaeger_query
    traces = httpx.get(
        f"{demo.info.jaeger_query}/api/traces",
        params={"service": "pantau-ingest", "limit": "2000", "lookback": "1h"},
        timeout=30,
    )
    assert traces.status_code == 200
    assert traces.json()["data"], "no traces to search"
    found += leaks(traces.text, "jaeger")
    found += leaks(json.dumps(demo.pod_reports()), "/status")
    return found


def test_fps_change_reaches_the_ingest_pod_without_restarting_it(demo: Demo) -> None:
    wait_for(
        lambda: camera(demo, "test-pattern").get("status", {}).get("streaming"), timeout=60, what="streaming"
    )
    before = ingest_pods(demo)
    pod = camera(demo, "test-pattern")["status"]["pod"]
    marker = "camera test-pattern: streaming from"
    starts = demo.pod_log(pod).count(marker)
    demo.kubectl("patch", "camera", "test-pattern", "--type=merge", "-p", '{"spec":{"sampling":{"fps":2}}}')
    # The pod's watch delivers the new spec and the camera's session restarts with the new rate.
    wait_for(lambda: demo.pod_log(pod).count(marker) > starts, timeout=30, what="the pod took the new fps")
    wait_for(
        lambda: demo.pod_reports().get("test-pattern", {}).get("state") == "Streaming",
        timeout=30,
        what="streaming again",
    )
    assert ingest_pods(demo) == before  # no pod was restarted or replaced


def test_a_secret_missing_a_key_or_its_consent_is_told_and_the_pod_streams_on(demo: Demo) -> None:
    """Labelled but without a password key: SecretKeyMissing from the ingest pod (not AuthFailed from a
    login-less try). Unlabelled: SecretNotPermitted from the operator, and the pod, refused the
    Secret by RBAC, keeps streaming its other cameras."""
    secrets = [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "half-login", "labels": {LABEL_CREDENTIALS: "true"}},
            "stringData": {"username": "viewer"},
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "no-consent"},
            "stringData": {"username": "viewer", "password": "not-the-demo-password"},
        },
    ]
    url = f"rtsp://{demo.info.host_ip}:{demo.rtsp_port}/pattern"
    cameras = [
        {
            "apiVersion": "pantau.io/v1alpha1",
            "kind": "Camera",
            "metadata": {"name": name},
            "spec": {
                "siteRef": {"name": "kota-bengkulu"},
                "source": {
                    "url": url,
                    "protocol": "rtsp",
                    "maxSessions": 4,
                    "credentialsSecretRef": {"name": secret},
                },
                "sampling": {"fps": 1},
            },
        }
        for name, secret in (("half-cam", "half-login"), ("plain-cam", "no-consent"))
    ]
    items = {"apiVersion": "v1", "kind": "List", "items": secrets + cameras}
    demo.kubectl("apply", "-f", "-", stdin=json.dumps(items))
    try:

        def ready(name: str) -> dict[str, Any]:
            conditions = camera(demo, name).get("status", {}).get("conditions", [])
            return next((c for c in conditions if c["type"] == "Ready"), {})

        missing = wait_for(
            lambda: (r := ready("half-cam")).get("reason") == "SecretKeyMissing" and r,
            timeout=90,
            what="half-cam SecretKeyMissing",
        )
        assert missing["status"] == "False"
        assert "'password'" in missing["message"]
        refused = wait_for(
            lambda: (r := ready("plain-cam")).get("reason") == "SecretNotPermitted" and r,
            timeout=60,
            what="plain-cam SecretNotPermitted",
        )
        assert LABEL_CREDENTIALS in refused["message"]
        # The pod serving them (kota-bengkulu's pool) still streams its other cameras.
        wait_for(
            lambda: demo.pod_reports().get("test-pattern", {}).get("state") == "Streaming",
            timeout=30,
            what="test-pattern still streaming",
        )
    finally:
        demo.kubectl("delete", "camera", "half-cam", "plain-cam", "--ignore-not-found")
        demo.kubectl("delete", "secret", "half-login", "no-consent", "--ignore-not-found")


def test_site_change_reaches_running_pods_without_a_rollout(demo: Demo) -> None:
    """New event sinks and camera defaults on the Site reach its pods while they run: the same pods,
    no restart, the StatefulSet's template untouched, and the new sink receives the events with the
    Authorization header its consenting Secret holds (never its URL)."""
    site = "kota-bengkulu"
    token = f"Bearer kantor-{uuid.uuid4().hex}"
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "kantor-token", "labels": {LABEL_CREDENTIALS: "true"}},
        "stringData": {"token": token},
    }
    demo.kubectl("apply", "-f", "-", stdin=json.dumps(secret))
    wait_for(
        lambda: camera(demo, "simpang-lima").get("status", {}).get("streaming"), timeout=60, what="streaming"
    )
    pool = f"{site}-ingest"
    sts_before = json.loads(demo.kubectl("get", "statefulset", pool, "-o", "json").stdout)
    pods_before = ingest_pods(demo)
    original = json.loads(demo.kubectl("get", "site", site, "-o", "json").stdout)["spec"]
    with EventReceiver(demo.info.host_ip) as receiver:
        change = {
            "eventSinks": [
                *original["eventSinks"],
                {
                    "name": "kantor",
                    "type": "webhook",
                    "url": receiver.url,
                    "headerSecretRef": {"name": "kantor-token"},
                },
            ],
            "cameraDefaults": {**original.get("cameraDefaults", {}), "classes": ["person"]},
        }
        demo.kubectl("patch", "site", site, "--type", "merge", "-p", json.dumps({"spec": change}))
        try:
            events = wait_for(
                lambda: [e for e in receiver.received if e["site"] == site][:3] or None,
                timeout=60,
                what="events at the new webhook sink",
                interval=1,
            )
            assert all(e["camera"].startswith(f"{demo.namespace}/") for e in events)
            # The new defaults apply too: from now on only persons are published.
            count = len(receiver.received)
            wait_for(lambda: len(receiver.received) >= count + 5, timeout=60, what="more events", interval=1)
            later = receiver.received[count:]
            assert {d["class"] for e in later for d in e["detections"]} <= {"person"}
            # The pool's Role names the token's Secret a moment after the pod first reads the Site:
            # the pod looks again within seconds and sends the header from then on.
            wait_for(lambda: token in receiver.authorizations, timeout=30, what="the token sent", interval=1)
        finally:
            demo.kubectl("patch", "site", site, "--type", "merge", "-p", json.dumps({"spec": original}))
    sts_after = json.loads(demo.kubectl("get", "statefulset", pool, "-o", "json").stdout)
    assert sts_after["spec"]["template"] == sts_before["spec"]["template"]
    assert sts_after["status"].get("updateRevision") == sts_before["status"].get("updateRevision")
    after = ingest_pods(demo)
    for pod, (uid, restarts) in pods_before.items():
        assert after[pod] == (uid, restarts), f"pod {pod} was restarted"
        assert token.split()[1] not in demo.pod_log(pod), "the sink's token is in a pod log"


def test_a_killed_ingest_pod_streams_again_within_30_s(demo: Demo, record_property: Any) -> None:
    """The pod serving a camera is killed (deleted with no grace: its processes get SIGKILL): the
    camera says so while no pod reads it, and streams again, from the pod the StatefulSet recreates,
    within 30 s."""
    wait_for(
        lambda: camera(demo, "simpang-lima").get("status", {}).get("streaming"), timeout=60, what="streaming"
    )
    pod = camera(demo, "simpang-lima")["status"]["pod"]
    old_uid = next(p["metadata"]["uid"] for p in demo.objects("pods") if p["metadata"]["name"] == pod)
    killed = time.monotonic()
    demo.kubectl("delete", "pod", pod, "--grace-period=0", "--force", "--wait=false")

    def told() -> dict[str, Any] | None:
        status = camera(demo, "simpang-lima").get("status", {})
        return status if status.get("streaming") is not True else None

    wait_for(told, timeout=30, what="the camera no longer streaming", interval=0.5)

    def again() -> dict[str, Any] | None:
        status = camera(demo, "simpang-lima").get("status", {})
        pods = {p["metadata"]["name"]: p["metadata"]["uid"] for p in demo.objects("pods")}
        return status if status.get("streaming") is True and pods.get(pod) not in (None, old_uid) else None

    wait_for(again, timeout=30, what="streaming again from the recreated pod", interval=0.5)
    took = time.monotonic() - killed
    record_property("pod_killed_restream_s", round(took, 1))
    print(f"ingest pod {pod} killed: the camera streams again after {took:.1f} s")
    assert took <= 30


def test_a_rotated_password_reaches_new_sessions_without_a_pod_restart(
    demo: Demo, record_property: Any
) -> None:
    """The camera's owner rotates its password (on the camera, then in the Secret): the ingest pod
    opens a new session with the new password and streams again, from the same pod, never
    restarted."""
    wait_for(
        lambda: camera(demo, "pasar-manna").get("status", {}).get("streaming"), timeout=60, what="streaming"
    )
    pods = ingest_pods(demo)
    pod = camera(demo, "pasar-manna")["status"]["pod"]
    marker = "camera pasar-manna: streaming from"  # logged by each new session of the camera
    sessions = demo.pod_log(pod).count(marker)
    rotated = time.monotonic()
    demo.rotate_password()
    # The pod re-reads the camera's Secrets on every change of the Camera (its status, say) and every
    # 60 s; a changed login starts a new session with it. The camera accepts only the new password.
    wait_for(lambda: demo.pod_log(pod).count(marker) > sessions, timeout=90, what="a new session", interval=1)

    def streaming_again() -> bool:
        report = demo.pod_reports().get("pasar-manna", {})
        return report.get("state") == "Streaming" and report.get("frames_processed", 0) > 0

    wait_for(streaming_again, timeout=60, what="streaming with the new password", interval=1)
    took = time.monotonic() - rotated
    record_property("password_rotation_restream_s", round(took, 1))
    print(f"password rotated: pasar-manna streams again after {took:.1f} s, from {pod}")
    assert ingest_pods(demo) == pods  # no pod restarted or replaced


def test_after_every_fault_no_password_is_anywhere(demo: Demo) -> None:
    """Last of the module: after the kills, restarts, rotation and bad Secrets above, neither the
    current nor a rotated-out password shows in logs, Events, status, ConfigMaps, env, spans or events."""
    assert demo.old_passwords, "the rotation test ran first"
    for name in ("simpang-lima", "pasar-manna"):
        found = [json.dumps(e) for e in events_of(demo, name)]
        assert found
        for pw in (demo.password, *demo.old_passwords):
            assert not any(pw in e for e in found)
    assert password_leaks(demo) == []
