"""The local node agent on a real control plane: pods bound to `pantau-local` run as local
processes with their own loopback address, downward-API env, ServiceAccount credentials (RBAC
enforced), probes, restarts and graceful deletion."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client

from pantau_dev.net import free_port
from pantau_dev.procs import ProcessTable, wait_for
from pantau_dev.stack import DevStack

pytestmark = pytest.mark.smoke

LOCAL = {"kubernetes.io/hostname": "pantau-local"}
JSON = dict[str, Any]


@pytest.fixture(scope="module")
def agent_stack(dev_stack: DevStack) -> DevStack:
    return dev_stack


@pytest.fixture(scope="module")
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture
def ns(namespace: str) -> str:
    return namespace


def pod(name: str, containers: list[JSON], **spec: Any) -> client.V1Pod:
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"nodeSelector": LOCAL, "containers": containers, **spec},
    }
    return client.V1Pod.model_validate(manifest)


def read(core: client.CoreV1Api, ns: str, name: str) -> JSON:
    obj: JSON = core.api_client.sanitize_for_serialization(core.read_namespaced_pod(name, ns))
    return obj


def phase(core: client.CoreV1Api, ns: str, name: str, want: str) -> JSON | None:
    obj = read(core, ns, name)
    return obj if obj.get("status", {}).get("phase") == want else None


def ready(core: client.CoreV1Api, ns: str, name: str) -> JSON | None:
    obj = read(core, ns, name)
    conditions = obj.get("status", {}).get("conditions") or []
    return obj if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions) else None


def container_log(stack: DevStack, ns: str, pod_name: str, container: str) -> str:
    path = stack.settings.log_dir / "pods" / f"pod-{ns}-{pod_name}-{container}.log"
    return path.read_text() if path.exists() else ""


def gone(core: client.CoreV1Api, ns: str, name: str) -> bool:
    try:
        core.read_namespaced_pod(name, ns)
    except client.ApiException as exc:
        return bool(exc.status == 404)
    return False


def test_pod_runs_on_its_loopback_address(agent_stack: DevStack, core: client.CoreV1Api, ns: str) -> None:
    port = free_port()
    pod_ip_env = {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
    core.create_namespaced_pod(
        ns,
        pod(
            "web",
            [
                {
                    "name": "web",
                    "image": "python",
                    "command": ["python", "-m", "http.server", str(port), "--bind", "$(POD_IP)"],
                    "env": [pod_ip_env],
                    "readinessProbe": {"httpGet": {"path": "/", "port": port}, "periodSeconds": 1},
                }
            ],
        ),
    )
    refs = {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace", "NODE_NAME": "spec.nodeName"}
    core.create_namespaced_pod(
        ns,
        pod(
            "env",
            [
                {
                    "name": "main",
                    "image": "python",
                    "command": [
                        "python",
                        "-c",
                        "import os; print('ENV', *(os.environ[k] for k in "
                        "('POD_NAME', 'POD_NAMESPACE', 'NODE_NAME', 'POD_IP')))",
                    ],
                    "env": [{"name": k, "valueFrom": {"fieldRef": {"fieldPath": v}}} for k, v in refs.items()]
                    + [pod_ip_env],
                }
            ],
            restartPolicy="Never",
        ),
    )

    web = wait_for(lambda: ready(core, ns, "web"), timeout=60, what="pod web Ready")
    ip = web["status"]["podIP"]
    assert web["spec"]["nodeName"] == "pantau-local"
    assert re.fullmatch(r"127\.0\.0\.\d+", ip)
    assert ip != "127.0.0.1"
    assert httpx.get(f"http://{ip}:{port}/", timeout=5).status_code == 200

    env = wait_for(lambda: phase(core, ns, "env", "Succeeded"), timeout=60, what="pod env Succeeded")
    assert env["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    env_ip = env["status"]["podIP"]
    assert env_ip != ip
    assert f"ENV env {ns} pantau-local {env_ip}" in container_log(agent_stack, ns, "env", "main")

    # Deletion: SIGTERM reaches the server, then the pod object goes away.
    settings = agent_stack.settings
    record = ProcessTable(settings.pid_dir, settings.log_dir / "pods").get(f"pod-{ns}-web-web")
    assert record is not None
    assert record.alive()
    assert web["status"]["containerStatuses"][0]["containerID"] == f"pantau-local://{record.pid}"
    core.delete_namespaced_pod("web", ns)
    wait_for(lambda: gone(core, ns, "web"), timeout=60, what="pod web deleted")
    assert not record.alive()


def test_pod_acts_as_its_service_account(agent_stack: DevStack, core: client.CoreV1Api, ns: str) -> None:
    rbac = client.RbacAuthorizationV1Api(core.api_client)
    for sa in ("nobody", "reader"):
        meta = client.V1ObjectMeta(name=sa)
        core.create_namespaced_service_account(ns, client.V1ServiceAccount(metadata=meta))
    rbac.create_namespaced_role(
        ns,
        client.V1Role.model_validate(
            {
                "metadata": {"name": "pod-reader"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
            }
        ),
    )
    rbac.create_namespaced_role_binding(
        ns,
        client.V1RoleBinding.model_validate(
            {
                "metadata": {"name": "reader"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
                "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}],
            }
        ),
    )
    script = textwrap.dedent("""\
        from kubernetes import client, config
        config.load_incluster_config()  # token, CA and API address as in a cluster
        ns = open("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read()
        api = client.CoreV1Api()
        for what, call in (("secrets", api.list_namespaced_secret), ("pods", api.list_namespaced_pod)):
            try:
                call(ns)
                print("RBAC", what, "allowed")
            except client.ApiException as exc:
                print("RBAC", what, exc.status)
        """)
    for sa in ("nobody", "reader"):
        core.create_namespaced_pod(
            ns,
            pod(
                sa,
                [{"name": "main", "image": "python", "command": ["python", "-c", script]}],
                serviceAccountName=sa,
                restartPolicy="Never",
            ),
        )
    for sa in ("nobody", "reader"):
        wait_for(
            lambda s=sa: phase(core, ns, s, "Succeeded"),  # type: ignore[misc]
            timeout=90,
            what=f"pod {sa} Succeeded",
        )
    nobody = container_log(agent_stack, ns, "nobody", "main")
    reader = container_log(agent_stack, ns, "reader", "main")
    assert "RBAC secrets 403" in nobody, nobody
    assert "RBAC pods 403" in nobody, nobody
    assert "RBAC secrets 403" in reader, reader
    assert "RBAC pods allowed" in reader, reader


def test_crashing_container_backs_off(core: client.CoreV1Api, ns: str) -> None:
    core.create_namespaced_pod(
        ns,
        pod("crash", [{"name": "main", "image": "python", "command": ["sh", "-c", "echo crashing; exit 1"]}]),
    )

    def crash_looping() -> JSON | None:
        status: JSON = read(core, ns, "crash")["status"]["containerStatuses"][0]
        last = (status.get("lastState") or {}).get("terminated") or {}
        waiting = (status.get("state") or {}).get("waiting") or {}
        looping = waiting.get("reason") == "CrashLoopBackOff"
        return status if status["restartCount"] >= 1 and last.get("exitCode") == 1 and looping else None

    status = wait_for(crash_looping, timeout=60, what="CrashLoopBackOff")
    assert status["ready"] is False
    assert read(core, ns, "crash")["status"]["phase"] == "Running"


def test_failing_liveness_probe_restarts_container(core: client.CoreV1Api, ns: str) -> None:
    port = free_port()
    core.create_namespaced_pod(
        ns,
        pod(
            "live",
            [
                {
                    "name": "main",
                    "image": "python",
                    "command": ["python", "-m", "http.server", str(port), "--bind", "$(POD_IP)"],
                    "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                    # http.server answers 404 here: the container is alive but fails its liveness probe.
                    "livenessProbe": {
                        "httpGet": {"path": "/healthz", "port": port},
                        "initialDelaySeconds": 1,
                        "periodSeconds": 1,
                        "failureThreshold": 2,
                    },
                }
            ],
            terminationGracePeriodSeconds=5,
        ),
    )

    def restarted() -> JSON | None:
        status = read(core, ns, "live")["status"].get("containerStatuses") or [{}]
        return status[0] if status[0].get("restartCount", 0) >= 1 else None

    status = wait_for(restarted, timeout=60, what="liveness restart")
    assert status["lastState"]["terminated"]["exitCode"] in (137, 143)


def test_node_is_local_and_kwok_nodes_are_left_alone(
    agent_stack: DevStack, core: client.CoreV1Api, ns: str
) -> None:
    node = core.api_client.sanitize_for_serialization(core.read_node("pantau-local"))
    assert "kwok.x-k8s.io/node" not in (node["metadata"].get("annotations") or {})
    assert node["metadata"]["labels"]["pantau.io/local-node"] == "true"
    lease = client.CoordinationV1Api(core.api_client).read_namespaced_lease("pantau-local", "kube-node-lease")
    assert lease.spec.holder_identity == "pantau-local"
    # A pod on a kwok node is kwok's: it runs there without a local process.
    core.create_namespaced_pod(
        ns, pod("fake", [{"name": "main", "image": "python"}], nodeSelector={"type": "kwok"})
    )
    fake = wait_for(lambda: phase(core, ns, "fake", "Running"), timeout=60, what="kwok pod Running")
    assert fake["spec"]["nodeName"].startswith("kwok-node-")
    pids = Path(agent_stack.settings.pid_dir)
    assert not list(pids.glob(f"pod-{ns}-fake-*.json"))
