"""Ingest pods for real: Pantau installed with its chart, the operator's pool runs `pantau ingest` from
the product image on the stack's node, which reads an RTSP camera serving real footage (on the
node's address), sends frames to Triton, emits events and leaves traces."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from pantau_dev.cameras import RtspCameraServer, RtspMount
from pantau_dev.chart import Release, Tools, local_values
from pantau_dev.net import free_port
from pantau_dev.procs import ProcessTable, wait_for
from pantau_dev.stack import DevStack, StackInfo
from tests.test_inference_triton import model_path, triton_models  # noqa: F401 - shared fixtures

pytestmark = pytest.mark.integration
GROUP, VERSION = "pantau.io", "v1alpha1"
NAMESPACE = "pantau-pipeline"
SERVICE = "pipeline-ingest"  # the ingest pods' service.name, set through the chart
INTERVAL = 10  # seconds behind a Camera's status.analytics (the chart's smallest)
# A line down the middle of the PETS09 plaza, which people cross both ways (pantau bench analytics).
MIDDLE = {"name": "middle", "start": [0.5, 0.3], "end": [0.5, 0.95], "classes": ["person"]}


@pytest.fixture(scope="module")
def camera_server(
    stack_info: StackInfo, shared_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RtspCameraServer]:
    tmp = tmp_path_factory.mktemp("cams")
    table = ProcessTable(tmp / "pids", tmp / "logs")
    vtest = shared_dir / "footage" / "vtest.avi"
    mounts = [
        RtspMount(
            path="/vtest", source="file", file=vtest, fps=10, width=768, height=576, keyframe_interval=20
        ),
    ]
    host = stack_info.host_ip
    server = RtspCameraServer(table, "rtsp-ingest", free_port(host), mounts, tmp, host=host)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def namespace(dev_stack: DevStack, stack_info: StackInfo, triton_models: str) -> Iterator[str]:  # noqa: F811
    """Pantau installed with its chart, watching one namespace for this module's Site and Camera."""
    tools = Tools(dev_stack.settings, dev_stack.kubeconfig)
    release = Release(tools, name="pipeline", namespace="pantau-pipeline-system")
    tools.kubectl("create", "namespace", NAMESPACE)
    otel = {
        "endpoint": stack_info.jaeger_otlp_grpc or "",
        "serviceName": {"ingest": SERVICE},
        "resourceAttributes": {"deployment.environment.name": "pipeline-test"},
        "sampler": "parentbased_always_on",
    }
    release.install(
        local_values(
            stack_info,
            dev_stack.settings,
            operator={"watchNamespaces": [NAMESPACE], "analyticsInterval": INTERVAL},
            otel=otel,
        )
    )
    yield NAMESPACE
    tools.kubectl("delete", "sites", "--all", "-n", NAMESPACE, "--timeout=60s", check=False)
    release.uninstall()
    tools.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)


def apply(kubectl: list[str], namespace: str, *docs: dict[str, Any]) -> None:
    done = subprocess.run(
        [*kubectl, "apply", "-n", namespace, "-f", "-"],
        input=yaml.safe_dump_all(docs),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def get(kubectl: list[str], namespace: str, kind: str, name: str) -> dict[str, Any]:
    out = subprocess.run(
        [*kubectl, "get", "-n", namespace, kind, name, "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_ingest_pod_streams_real_footage_through_triton_with_traces_and_events(
    camera_server: RtspCameraServer,
    kubectl: list[str],
    namespace: str,
    dev_stack: DevStack,
    stack_info: StackInfo,
) -> None:
    site = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Site",
        "metadata": {"name": "kota"},
        "spec": {
            "displayName": "Kota",
            "region": "Kota Bengkulu",
            "ingest": {"minPods": 1, "maxPods": 1},
            "eventSinks": [{"name": "log", "type": "stdout"}],
        },
    }
    camera = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Camera",
        "metadata": {"name": "simpang"},
        "spec": {
            "siteRef": {"name": "kota"},
            "sampling": {"fps": 2},
            "source": {"url": camera_server.url("/vtest"), "protocol": "rtsp"},
        },
    }
    apply(kubectl, namespace, site, camera)

    def streaming() -> dict[str, Any] | None:
        obj = get(kubectl, namespace, "camera", "simpang")
        return obj if obj.get("status", {}).get("streaming") else None

    cam = wait_for(streaming, timeout=120, what="camera streaming (reported by the ingest pod)", interval=1)
    ready = next(c for c in cam["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Streaming")
    pod = cam["status"]["pod"]

    # Events: the pod's stdout sink writes one JSON line per processed frame.
    def events() -> list[dict[str, Any]]:
        logs = subprocess.run(
            [*kubectl, "logs", "-n", namespace, pod, "--all-containers"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        return [json.loads(line) for line in logs.splitlines() if line.startswith("{")]

    found = wait_for(
        lambda: [e for e in events() if any(d["class"] == "person" for d in e["detections"])],
        timeout=60,
        what="events with persons",
    )
    event = found[0]
    assert event["camera"] == f"{namespace}/simpang"
    assert event["site"] == "kota"
    trace_id = event["traceparent"].split("-")[1]

    assert stack_info.jaeger_query

    def trace() -> dict[str, Any] | None:
        resp = httpx.get(f"{stack_info.jaeger_query}/api/traces/{trace_id}", timeout=5)
        return resp.json() if resp.status_code == 200 else None

    data = wait_for(trace, timeout=60, what="the event's trace in Jaeger")["data"][0]
    spans = data["spans"]
    # The running pipeline's own spans: one root per frame, its four stages as its children.
    root = next(s for s in spans if not s.get("references"))
    assert root["operationName"] == "frame"
    children = {s["operationName"]: s for s in spans if s is not root}
    assert set(children) == {"read/decode", "infer", "analyse", "publish"}
    for child in children.values():
        assert [(r["refType"], r["spanID"]) for r in child["references"]] == [("CHILD_OF", root["spanID"])]
    infer_tags = {t["key"]: t["value"] for t in children["infer"]["tags"]}
    assert infer_tags["span.kind"] == "client"
    version, traced, parent, flags = event["traceparent"].split("-")
    assert (version, traced, parent) == ("00", trace_id, root["spanID"])
    assert int(flags, 16) & 1, "the frame was sampled"
    # What the chart set reached the pod: its service name, resource attributes and sampler.
    process = data["processes"][root["processID"]]
    assert process["serviceName"] == SERVICE
    resource = {t["key"]: t["value"] for t in process["tags"]}
    assert resource["deployment.environment.name"] == "pipeline-test"
    assert resource["pantau.site"] == "kota"
    assert resource["k8s.pod.name"] == pod
    tags = {t["key"]: t["value"] for t in root["tags"]}
    assert tags["pantau.camera"] == f"{namespace}/simpang"
    assert tags["pantau.site"] == "kota"
    assert tags["pantau.detections"] >= 1

    # Measured load, from the running pod's /status and /metrics (what the operator scales on).
    address = get(kubectl, namespace, "pod", pod)["status"]["podIP"]

    def measured() -> dict[str, Any] | None:
        report = httpx.get(f"http://{address}:8080/status", timeout=5).json()
        mine = next(c for c in report["cameras"] if c["name"] == "simpang")
        return report if mine["cpu_cores"] > 0 and report["cpu_cores"] > 0 else None

    report = wait_for(measured, timeout=60, what="the camera's CPU load measured", interval=1)
    mine = next(c for c in report["cameras"] if c["name"] == "simpang")
    assert mine["frames_sampled"] >= mine["frames_processed"] > 0
    assert 0 < mine["decode_lag_ms"] < 5000
    # One camera: its share is the whole process's (within rounding of the two samples).
    assert mine["cpu_cores"] <= report["cpu_cores"] + 1e-3
    assert mine["cpu_seconds"] > 0
    metrics = httpx.get(f"http://{address}:8080/metrics", timeout=5).text
    cpu = [line for line in metrics.splitlines() if line.startswith("pantau_camera_cpu_seconds_total{")]
    assert cpu
    assert float(cpu[0].split()[-1]) > 0
    assert any(line.startswith("pantau_frames_sampled_total{") for line in metrics.splitlines())


def test_tracks_cross_lines_and_zones_change_without_a_reconnect(
    camera_server: RtspCameraServer, kubectl: list[str], namespace: str
) -> None:
    """The running pipeline tracks people on the real footage: line_crossed events reach the sink with
    the frame's traceparent, /status and the Camera's status count them, a new zone applies to the
    running worker, and the Camera's status is written a few times a minute, not per crossing."""
    camera = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Camera",
        "metadata": {"name": "plaza"},
        "spec": {
            "siteRef": {"name": "kota"},
            "sampling": {"fps": 5},
            "source": {"url": camera_server.url("/vtest") + "?camera=plaza", "protocol": "rtsp"},
            "lines": [MIDDLE],
        },
    }
    apply(kubectl, namespace, camera)
    pod = wait_for(
        lambda: get(kubectl, namespace, "camera", "plaza").get("status", {}).get("pod"),
        timeout=120,
        what="the camera's pod",
        interval=1,
    )

    def crossings() -> list[dict[str, Any]]:
        logs = subprocess.run(
            [*kubectl, "logs", "-n", namespace, pod, "--all-containers"], capture_output=True, text=True
        ).stdout
        events = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
        return [e for e in events if e.get("type") == "line_crossed" and e["camera"].endswith("/plaza")]

    found = wait_for(crossings, timeout=120, what="a line_crossed event in the sink", interval=2)
    event = found[0]
    assert event["line"] == "middle"
    assert event["direction"] in {"forward", "backward"}
    assert event["class"] == "person"
    assert event["track_id"] >= 0
    assert len(event["traceparent"].split("-")) == 4
    address = get(kubectl, namespace, "pod", pod)["status"]["podIP"]

    def mine() -> dict[str, Any]:
        report = httpx.get(f"http://{address}:8080/status", timeout=5).json()
        return next(c for c in report["cameras"] if c["name"] == "plaza")

    counted = mine()["analytics"]["lines"]["middle"]
    assert counted["forward"] + counted["backward"] >= 1
    # The Camera's status: the counts of the last completed interval.
    status = wait_for(
        lambda: get(kubectl, namespace, "camera", "plaza")["status"].get("analytics"),
        timeout=3 * INTERVAL + 10,
        what="status.analytics",
        interval=1,
    )
    assert set(status) >= {"intervalStart", "intervalEnd", "lines", "zones"}
    assert set(status["lines"]["middle"]) == {"forward", "backward"}

    # A zone added to the running Camera: the same worker (its counters go on) applies it.
    before = mine()["frames_processed"]
    camera["spec"]["zones"] = [{"name": "plaza", "points": [[0.0, 0.3], [1.0, 0.3], [1.0, 1.0], [0.0, 1.0]]}]
    apply(kubectl, namespace, camera)
    zones = wait_for(
        lambda: mine()["analytics"]["zones"], timeout=30, what="the new zone in /status", interval=1
    )
    assert "plaza" in zones
    assert mine()["frames_processed"] >= before, "the camera's worker was restarted"

    # Status writes: a few a minute (interval counts, streaming facts), never one per frame or crossing.
    versions = set()
    started = time.monotonic()
    while time.monotonic() - started < 30:
        versions.add(get(kubectl, namespace, "camera", "plaza")["metadata"]["resourceVersion"])
        time.sleep(0.5)  # sampling the object, not waiting for a state
    writes_per_minute = (len(versions) - 1) * 2
    print(f"\nCamera status writes with analytics every {INTERVAL} s: {writes_per_minute} per minute")
    assert writes_per_minute <= 2 * (60 // INTERVAL) + 2
