"""The chart's own Triton on the stack's node, as a CPU-only cluster would run it: the local Triton
image (`make images`), the model repository written by the init container from a download checked
against its SHA-256, readiness on the detector being loaded, and `helm test` asking the Triton
Service for the model through cluster DNS."""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

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


def test_chart_triton_loads_the_detector_and_helm_test_passes(
    dev_stack: DevStack, stack_info: StackInfo, model_download: tuple[str, str]
) -> None:
    url, sha256 = model_download
    image = built_image(dev_stack.settings, TRITON)
    tools = Tools(dev_stack.settings, dev_stack.kubeconfig)
    release = Release(tools, name="tri", namespace="pantau-triton-system")
    values = local_values(
        stack_info,
        dev_stack.settings,
        triton={
            "enabled": True,
            "address": "",
            "image": {"repository": image.repository, "tag": image.tag, "pullPolicy": "Never"},
            "target": "cpu",
            "model": {"name": "yolox", "file": MODEL, "url": url, "sha256": sha256},
            # Two cores here: a small request, so the operator and ingest pods still fit beside it.
            "resources": {"requests": {"cpu": "200m", "memory": "512Mi"}, "limits": {"memory": "3Gi"}},
        },
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
