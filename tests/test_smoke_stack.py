"""Smoke tests: each real component of the local stack does its job."""

from __future__ import annotations

import json
import subprocess
import textwrap
import uuid
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import yaml
from kubernetes import client
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from tritonclient import grpc as triton_grpc

from pantau_dev.procs import wait_for
from pantau_dev.settings import DevSettings
from pantau_dev.stack import KWOK_TAINT, DevStack, StackInfo

pytestmark = pytest.mark.smoke

WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.smoke.pantau.io"},
    "spec": {
        "group": "smoke.pantau.io",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["fps"],
                                "properties": {"fps": {"type": "integer", "minimum": 1, "maximum": 30}},
                            }
                        },
                    }
                },
            }
        ],
    },
}


def run_kubectl(kubectl: list[str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*kubectl, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


def test_status_json_has_the_documented_keys(dev_stack: DevStack) -> None:
    out = subprocess.run(
        [str(Path(dev_stack.settings.python_bin_dir) / "pantau"), "dev", "status", "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={"PANTAU_DEV_STATE_DIR": str(dev_stack.state), "PATH": "/usr/bin:/bin"},
    )
    info = json.loads(out.stdout)
    for key in (
        "kubeconfig",
        "triton_grpc",
        "triton_http",
        "jaeger_otlp_grpc",
        "jaeger_otlp_http",
        "jaeger_query",
        "log_dir",
        "state_dir",
        "node",
        "host_ip",
        "pod_subnet",
    ):
        assert info[key], key
    components = {n: alive for n, alive in info["processes"].items() if not n.startswith("pod-")}
    assert set(components) == {
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kwok",
        "containerd",
        "kubelet",
        "kube-proxy",
        "coredns",
        "triton",
        "jaeger",
    }
    assert all(components.values()), components
    # Every listener of the stack is on the node's bridge address, which only this machine has.
    assert info["host_ip"] == str(next(DevSettings().real_node_subnet.hosts()))
    for key in ("triton_grpc", "triton_http", "jaeger_otlp_grpc", "jaeger_query", "api_server"):
        assert f"{info['host_ip']}:" in info[key]


def test_crd_established_and_invalid_object_rejected(kubectl: list[str]) -> None:
    applied = run_kubectl(kubectl, "apply", "-f", "-", stdin=json.dumps(WIDGET_CRD))
    assert applied.returncode == 0, applied.stderr
    waited = run_kubectl(
        kubectl, "wait", "--for=condition=Established", "--timeout=30s", "crd/widgets.smoke.pantau.io"
    )
    assert waited.returncode == 0, waited.stderr

    def widget(fps: int) -> str:
        return yaml.safe_dump(
            {
                "apiVersion": "smoke.pantau.io/v1",
                "kind": "Widget",
                "metadata": {"name": f"w{fps}", "namespace": "default"},
                "spec": {"fps": fps},
            }
        )

    good = run_kubectl(kubectl, "apply", "-f", "-", stdin=widget(10))
    assert good.returncode == 0, good.stderr
    bad = run_kubectl(kubectl, "apply", "-f", "-", stdin=widget(99))
    assert bad.returncode != 0
    assert "spec.fps" in bad.stderr, bad.stderr
    assert "less than or equal to 30" in bad.stderr, bad.stderr


def test_deployment_runs_on_kwok_nodes(api: client.ApiClient, namespace: str, stack_info: StackInfo) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    labels = {"app": "fake"}
    apps.create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "fake"},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "nodeSelector": {"type": "kwok"},
                        "tolerations": [{"key": KWOK_TAINT["key"], "operator": "Exists"}],
                        "containers": [{"name": "c", "image": "registry.invalid/fake:1"}],
                    },
                },
            },
        },
    )
    wait_for(
        lambda: (
            (apps.read_namespaced_deployment(namespace=namespace, name="fake").status.ready_replicas or 0)
            == 3
        ),
        timeout=60,
        what="3 ready replicas",
    )
    pods = core.list_namespaced_pod(namespace, label_selector="app=fake").items
    assert len(pods) == 3
    assert {p.status.phase for p in pods} == {"Running"}
    assert {p.spec.node_name for p in pods} <= set(stack_info.kwok_nodes)


def test_garbage_collection_deletes_owned_configmap(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    core.create_namespaced_config_map(
        namespace,
        {
            "metadata": {
                "name": "child",
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
                ],
            }
        },
    )
    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")

    def child_gone() -> bool:
        names = {cm.metadata.name for cm in core.list_namespaced_config_map(namespace).items}
        return "child" not in names

    wait_for(child_gone, timeout=60, what="garbage collection of the child ConfigMap")


ECHO_MODEL = textwrap.dedent("""
    import os
    import sys

    # The Python backend's embedded interpreter ignores PYTHONPATH; honour it to find numpy<2.
    sys.path.extend(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path)

    import numpy as np  # noqa: E402
    import triton_python_backend_utils as pb_utils  # noqa: E402


    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
                out = pb_utils.Tensor("OUT", (x * 2).astype(np.float32))
                responses.append(pb_utils.InferenceResponse([out]))
            return responses
""")

ECHO_CONFIG = """
name: "smoke_double"
backend: "python"
max_batch_size: 8
input [{ name: "IN", data_type: TYPE_FP32, dims: [ 4 ] }]
output [{ name: "OUT", data_type: TYPE_FP32, dims: [ 4 ] }]
instance_group [{ kind: KIND_CPU, count: 1 }]
"""


def test_triton_serves_a_python_backend_model(dev_stack: DevStack, stack_info: StackInfo) -> None:
    model_dir = dev_stack.model_repository / "smoke_double"
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(ECHO_CONFIG)
    (model_dir / "1" / "model.py").write_text(ECHO_MODEL)
    assert stack_info.triton_grpc
    triton = triton_grpc.InferenceServerClient(stack_info.triton_grpc)
    triton.load_model("smoke_double")
    assert triton.is_model_ready("smoke_double")

    data = np.arange(8, dtype=np.float32).reshape(2, 4)
    inp = triton_grpc.InferInput("IN", list(data.shape), "FP32")
    inp.set_data_from_numpy(data)
    result = triton.infer("smoke_double", [inp], outputs=[triton_grpc.InferRequestedOutput("OUT")])
    np.testing.assert_array_equal(result.as_numpy("OUT"), data * 2)
    triton.unload_model("smoke_double")
    triton.close()


def test_otlp_span_is_found_through_jaeger_query(stack_info: StackInfo) -> None:
    service = f"smoke-{uuid.uuid4().hex[:8]}"
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    assert stack_info.jaeger_otlp_grpc
    assert stack_info.jaeger_query
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=stack_info.jaeger_otlp_grpc, insecure=True))
    )
    with provider.get_tracer("smoke").start_as_current_span("smoke-span") as span:
        span.set_attribute("pantau.test", "yes")
        trace_id = f"{span.get_span_context().trace_id:032x}"
    provider.shutdown()

    def fetch() -> dict[str, object] | None:
        resp = httpx.get(f"{stack_info.jaeger_query}/api/traces/{trace_id}", timeout=5)
        return resp.json() if resp.status_code == 200 else None

    found = wait_for(fetch, timeout=30, what="trace in Jaeger")
    spans = found["data"][0]["spans"]
    assert [s["operationName"] for s in spans] == ["smoke-span"]
    tags = {t["key"]: t["value"] for t in spans[0]["tags"]}
    assert tags["pantau.test"] == "yes"


def test_up_is_idempotent(dev_stack: DevStack) -> None:
    before = {r.name: r.pid for r in dev_stack.procs.records() if r.alive()}
    dev_stack.up()
    after = {r.name: r.pid for r in dev_stack.procs.records() if r.alive()}
    assert {k: v for k, v in after.items() if k in before} == before


def test_down_stops_every_process(tmp_path: Path) -> None:
    """A second, small stack (no node: one per machine; test_real_node checks that one's `down`):
    after `down` no process it started (or their children) is left."""
    stack = DevStack(
        DevSettings(
            state_dir=tmp_path / "s", with_triton=False, with_jaeger=False, kwok_nodes=1, real_node=False
        )
    )
    try:
        stack.up()
        procs = [r.process() for r in stack.procs.records()]
        family = [p for p in procs if p is not None]
        family += [c for p in family for c in p.children(recursive=True)]
        assert len(family) >= 5  # etcd, API server, controller-manager, scheduler, kwok
    finally:
        stack.down()
    _, alive = psutil.wait_procs(family, timeout=5)
    assert alive == []
    assert stack.procs.records() == []


def test_binaries_report_their_pinned_versions(dev_stack: DevStack) -> None:
    s = dev_stack.settings
    v = s.versions
    checks = {
        (s.bin_dir("k8s") / "kube-apiserver", "--version"): v["k8s"],
        (s.bin_dir("k8s") / "kubectl", "version", "--client"): v["k8s"],
        (s.bin_dir("etcd") / "etcd", "--version"): v["etcd"].lstrip("v"),
        (s.bin_dir("kwok") / "kwok", "--version"): v["kwok"],
        (s.bin_dir("helm") / "helm", "version", "--short"): v["helm"],
    }
    for (binary, *args), expected in checks.items():
        out = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=30, check=True)
        assert expected in out.stdout + out.stderr, (binary, out.stdout, out.stderr)
