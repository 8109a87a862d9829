"""The chart's own Triton on the stack's node, as a CPU-only cluster would run it: the local Triton
image (`make images`), the model repository written by the init container from a download checked
against its SHA-256, readiness on the detector being loaded, and `helm test` asking the Triton
Service for the model through cluster DNS."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest

from pantau.triton.client import ClientSettings, Detector
from pantau_dev.chart import Release, Tools, local_values
from pantau_dev.images import TRITON, built_image
from pantau_dev.stack import DevStack, StackInfo

pytestmark = pytest.mark.e2e

MODEL = "yolox_nano.onnx"


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def model_download(stack_info: StackInfo, shared_dir: Path) -> Iterator[tuple[str, str]]:
    """The detector served over HTTP on the node's address, where the init container fetches it:
    (URL, SHA-256)."""
    models = shared_dir / "models"
    server = ThreadingHTTPServer((stack_info.host_ip, 0), partial(_Quiet, directory=str(models)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    digest = hashlib.sha256((models / MODEL).read_bytes()).hexdigest()
    yield f"http://{stack_info.host_ip}:{server.server_port}/{MODEL}", digest
    server.shutdown()
    server.server_close()


def _triton_values(dev_stack: DevStack, model_download: tuple[str, str]) -> dict[str, object]:
    url, sha256 = model_download
    image = built_image(dev_stack.settings, TRITON)
    return {
        "enabled": True,
        "address": "",
        "image": {"repository": image.repository, "tag": image.tag, "pullPolicy": "Never"},
        "target": "cpu",
        "model": {"name": "yolox", "file": MODEL, "url": url, "sha256": sha256},
        # Two cores here: a small request, so the operator and ingest pods still fit beside it.
        "resources": {"requests": {"cpu": "200m", "memory": "512Mi"}, "limits": {"memory": "3Gi"}},
    }


def test_chart_triton_loads_the_detector_and_helm_test_passes(
    dev_stack: DevStack, stack_info: StackInfo, model_download: tuple[str, str]
) -> None:
    tools = Tools(dev_stack.settings, dev_stack.kubeconfig)
    release = Release(tools, name="tri", namespace="pantau-triton-system")
    values = local_values(
        stack_info,
        dev_stack.settings,
        triton=_triton_values(dev_stack, model_download),
        operator={"watchNamespaces": ["pantau-triton-sites"]},
    )
    try:
        release.install(values, timeout="300s")  # --wait: Triton Ready means the detector is loaded
        selector = "app.kubernetes.io/instance=tri,app.kubernetes.io/component=triton"
        pod = tools.kubectl(
            "get", "pods", "-n", release.namespace, "-l", selector, "-o", "jsonpath={.items[0].status.podIP}"
        ).stdout
        ready = httpx.get(f"http://{pod}:8000/v2/models/yolox/ready", timeout=10)
        assert ready.status_code == 200
        # The operator hands the ingest pods the chart's Triton Service, not the stack's.
        env = tools.kubectl(
            "get", "deploy", "tri-pantau-operator", "-n", release.namespace, "-o",
            "jsonpath={.spec.template.spec.containers[0].env[?(@.name=='PANTAU_TRITON_ADDRESS')].value}",
        ).stdout  # fmt: skip
        assert env.startswith(f"tri-pantau-triton.{release.namespace}.svc"), env
        result = tools.helm("test", release.name, "-n", release.namespace, "--timeout", "120s")
        assert re.search(r"Phase:\s+Succeeded", result.stdout), result.stdout
    finally:
        if release.installed():
            release.uninstall()


# ----- scaling: the operator on Triton's own metrics, or an HPA -----

SCALED = "tris-pantau-triton"


def _replicas(tools: Tools, namespace: str) -> int:
    return int(
        tools.kubectl("get", "deploy", SCALED, "-n", namespace, "-o", "jsonpath={.spec.replicas}").stdout
    )


def _operator_logs(tools: Tools, namespace: str) -> str:
    return tools.kubectl("logs", "deploy/tris-pantau-operator", "-n", namespace).stdout


async def _drive(address: str, done: Callable[[], bool], seconds: float) -> int:
    """Real detection requests to one Triton pod, four batches in flight, until `done()` (asked
    about every second, off the event loop) or about `seconds` pass; the frames detected."""
    frame = np.random.default_rng(7).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    detected = 0
    async with await Detector.connect(ClientSettings(url=address, max_batch=4)) as detector:
        prepared = detector.prepare(frame)

        async def worker() -> None:
            nonlocal detected
            while True:
                await detector.detect(prepared)
                detected += 1

        workers = [asyncio.create_task(worker()) for _ in range(16)]
        try:
            for _ in range(int(seconds)):
                if await asyncio.to_thread(done):
                    break
                await asyncio.sleep(1.0)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
    return detected


def test_the_operator_scales_the_chart_triton_under_load_and_leaves_it_to_an_hpa(
    dev_stack: DevStack, stack_info: StackInfo, model_download: tuple[str, str]
) -> None:
    """Operator-driven scaling with a tiny target: real requests to the one Triton pod make the
    operator set two replicas through the scale subresource. Then an HPA targets the Deployment and,
    under the same load, the operator leaves one replica alone for several of its passes."""
    tools = Tools(dev_stack.settings, dev_stack.kubeconfig)
    release = Release(tools, name="tris", namespace="pantau-triton-scale")
    autoscaling = {
        "enabled": True,
        "minReplicas": 1,
        "maxReplicas": 2,
        "targetUtilization": 0.05,
        "interval": 2,
    }
    values = local_values(
        stack_info,
        dev_stack.settings,
        triton={**_triton_values(dev_stack, model_download), "autoscaling": autoscaling},
        operator={"watchNamespaces": ["pantau-triton-scale-sites"]},
    )
    ns = release.namespace
    try:
        release.install(values, timeout="300s")
        assert _replicas(tools, ns) == 1
        selector = "app.kubernetes.io/instance=tris,app.kubernetes.io/component=triton"
        pod = tools.kubectl(
            "get", "pods", "-n", ns, "-l", selector, "-o", "jsonpath={.items[0].status.podIP}"
        ).stdout
        detected = asyncio.run(_drive(f"{pod}:8001", lambda: _replicas(tools, ns) == 2, seconds=120))
        assert detected > 0
        assert _replicas(tools, ns) == 2
        events = json.loads(tools.kubectl("get", "events", "-n", ns, "-o", "json").stdout)["items"]
        scaled = [e for e in events if e["reason"] == "TritonScaled"]
        assert scaled, [e["reason"] for e in events]
        assert scaled[0]["involvedObject"]["name"] == SCALED
        assert "1 -> 2" in scaled[0]["message"]

        # An SRE's HPA (KEDA makes one too): from now on the replicas are not the operator's.
        hpa = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "sre-triton", "namespace": ns},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": SCALED},
                "minReplicas": 1,
                "maxReplicas": 2,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": 90},
                        },
                    }
                ],
            },
        }
        tools.kubectl("apply", "-f", "-", stdin=json.dumps(hpa))
        deadline = time.monotonic() + 30
        while "HPA sre-triton targets it" not in (logs := _operator_logs(tools, ns)):
            assert time.monotonic() < deadline, logs[-3000:]
            time.sleep(0.5)
        tools.kubectl("scale", "deploy", SCALED, "-n", ns, "--replicas=1")
        # Ten of the operator's passes under load: without the HPA it would scale up again at once.
        asyncio.run(_drive(f"{pod}:8001", lambda: _replicas(tools, ns) != 1, seconds=20))
        assert _replicas(tools, ns) == 1
    finally:
        tools.kubectl("delete", "hpa", "sre-triton", "-n", ns, "--ignore-not-found", check=False)
        if release.installed():
            release.uninstall()
