"""The stack's node (containerd + runc + CNI bridge + kubelet + kube-proxy + CoreDNS): pods from the
product image run with the securityContext they ask for, reach the API server, Services, each
other and the stack's services as in a cluster, and `down` leaves the host as it found it.

On the session's stack; the last test stops it, checks the host, and starts it again. Needs root,
the node's binaries (`make tools`) and the product image (`make images`).
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import textwrap
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
from kubernetes import client

from pantau_dev.images import PRODUCT, built_image
from pantau_dev.node import SYSCTLS, RealNode, kubepods_dirs, mounts_under, sysctl_get
from pantau_dev.procs import wait_for
from pantau_dev.stack import DevStack, StackInfo

pytestmark = pytest.mark.integration

NAMESPACE = "default"


def host_sysctls() -> dict[str, str | None]:
    return {k: sysctl_get(k) for k in SYSCTLS}


@pytest.fixture(scope="module")
def real_stack(dev_stack: DevStack) -> DevStack:
    assert os.geteuid() == 0, "the node needs root (cgroups, mounts, iptables, a bridge)"
    assert dev_stack.settings.real_node
    return dev_stack


@pytest.fixture(scope="module")
def product_image(real_stack: DevStack) -> str:
    return built_image(real_stack.settings, PRODUCT).ref


@pytest.fixture(scope="module")
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


def pod_spec(
    node: str,
    image: str,
    command: list[str],
    *,
    memory: str | None = None,
    container_security: dict[str, Any] | None = None,
    pod_security: dict[str, Any] | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main",
        "image": image,
        "imagePullPolicy": "Never",
        "command": command,
        "securityContext": container_security or {},
    }
    if memory:
        container["resources"] = {"limits": {"memory": memory}, "requests": {"memory": memory}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"rn-{uuid.uuid4().hex[:8]}"},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": False,
            "securityContext": pod_security or {},
            "containers": [container],
        },
    }


def create(core: client.CoreV1Api, pod: dict[str, Any]) -> str:
    core.create_namespaced_pod(NAMESPACE, pod)
    return str(pod["metadata"]["name"])


def container_status(core: client.CoreV1Api, name: str) -> Any:
    statuses = core.read_namespaced_pod(name, NAMESPACE).status.container_statuses
    return statuses[0] if statuses else None


def wait_phase(core: client.CoreV1Api, name: str, phases: set[str], timeout: float = 120) -> Any:
    def in_phase() -> Any:
        pod = core.read_namespaced_pod(name, NAMESPACE)
        return pod if str(pod.status.phase) in phases else None

    return wait_for(
        in_phase,
        timeout=timeout,
        what=f"pod {name} in {sorted(phases)}",
        interval=0.5,
    )


def run_kubectl(kubectl: list[str], *args: str) -> str:
    out = subprocess.run([*kubectl, *args], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, f"kubectl {' '.join(args)}: {out.stderr}"
    return out.stdout


RESTRICTED_SCRIPT = textwrap.dedent(
    """
    import errno, os
    print("uid", os.getuid())
    try:
        open("/x", "w")
        print("write ok")
    except OSError as exc:
        print("write", errno.errorcode[exc.errno])
    for line in open("/proc/self/status"):
        if line.startswith(("CapEff:", "NoNewPrivs:", "Seccomp:")):
            print(" ".join(line.split()))
    """
)


def test_restricted_pod_gets_its_security_context(
    real_stack: DevStack, core: client.CoreV1Api, kubectl: list[str], product_image: str
) -> None:
    pod = pod_spec(
        real_stack.node.name,
        product_image,
        ["python", "-c", RESTRICTED_SCRIPT],
        pod_security={"runAsUser": 1000, "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        container_security={
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    )
    name = create(core, pod)
    done = wait_phase(core, name, {"Succeeded", "Failed"})
    logs = run_kubectl(kubectl, "logs", "-n", NAMESPACE, name).splitlines()
    assert done.status.phase == "Succeeded", logs
    assert "uid 1000" in logs
    assert "write EROFS" in logs
    assert "CapEff: 0000000000000000" in logs
    assert "NoNewPrivs: 1" in logs
    assert "Seccomp: 2" in logs


def test_absent_image_is_never_pulled(real_stack: DevStack, core: client.CoreV1Api) -> None:
    name = create(core, pod_spec(real_stack.node.name, "localhost/absent:1", ["true"]))

    def waiting_reason() -> str | None:
        status = container_status(core, name)
        return status.state.waiting.reason if status is not None and status.state.waiting else None

    wait_for(
        lambda: waiting_reason() == "ErrImageNeverPull",
        timeout=120,
        what=f"pod {name} waiting with ErrImageNeverPull",
        interval=0.5,
    )


def test_memory_limit_is_enforced(
    real_stack: DevStack, core: client.CoreV1Api, kubectl: list[str], product_image: str
) -> None:
    script = "b = b'x' * (200 << 20)\nprint('survived', len(b))"
    name = create(
        core, pod_spec(real_stack.node.name, product_image, ["python", "-c", script], memory="64Mi")
    )
    done = wait_phase(core, name, {"Succeeded", "Failed"})
    status = done.status.container_statuses[0]
    terminated = status.state.terminated or (status.last_state and status.last_state.terminated)
    assert terminated is not None, status
    assert terminated.reason == "OOMKilled", status
    assert done.status.phase == "Failed"


def test_pod_network_is_the_bridge_subnet_only(
    real_stack: DevStack, core: client.CoreV1Api, kubectl: list[str], product_image: str
) -> None:
    node = real_stack.node
    name = create(
        core, pod_spec(node.name, product_image, ["python", "-c", "import time; time.sleep(600)"])
    )  # left running: `down` must delete it
    pod = wait_phase(core, name, {"Running"})
    subnet = real_stack.settings.real_node_subnet
    assert ipaddress.ip_address(pod.status.pod_ip) in subnet
    kubelet_port = core.read_node(node.name).status.daemon_endpoints.kubelet_endpoint.port
    probe = textwrap.dedent(
        f"""
        import socket
        socket.create_connection(("{node.node_ip}", {kubelet_port}), timeout=5).close()
        print("node reachable")
        for line in open("/proc/net/route").read().splitlines()[1:]:
            print("route", line.split()[0], line.split()[1])
        """
    )
    out = run_kubectl(kubectl, "exec", "-n", NAMESPACE, name, "--", "python", "-c", probe).splitlines()
    assert "node reachable" in out
    routes = [line for line in out if line.startswith("route ")]
    assert routes, out
    assert all(r.split()[2] != "00000000" for r in routes), f"a default route in the pod: {routes}"


NETWORK_SCRIPT = textwrap.dedent(
    """
    import os, socket, ssl, time, urllib.error, urllib.request
    def get(url, **kw):
        # A Service's rules follow its endpoints by a moment (kube-proxy syncs at most once a second):
        # a refused connection is tried again for up to 15 s, anything else is the answer.
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(url, timeout=10, **kw) as r:
                    return r.status
            except urllib.error.HTTPError as exc:
                return exc.code
            except OSError as exc:
                if "Connection refused" not in repr(exc) or time.monotonic() > deadline:
                    return repr(exc)
                time.sleep(0.5)
    print("dns kubernetes", socket.gethostbyname("kubernetes.default.svc.cluster.local"))
    print("dns web", socket.gethostbyname(os.environ["WEB"]))  # through the namespace's search path
    sa = "/var/run/secrets/kubernetes.io/serviceaccount"
    token = open(sa + "/token").read()
    ctx = ssl.create_default_context(cafile=sa + "/ca.crt")
    bearer = {"Authorization": "Bearer " + token}
    api = urllib.request.Request("https://kubernetes.default.svc/version", headers=bearer)
    print("api", get(api, context=ctx))
    print("service", get("http://" + os.environ["WEB"] + ":8080/"))
    print("triton", get(os.environ["TRITON"]))
    print("jaeger", get(os.environ["JAEGER"]))
    """
)


def test_pods_reach_the_api_server_services_each_other_and_the_stack(
    real_stack: DevStack,
    stack_info: StackInfo,
    core: client.CoreV1Api,
    kubectl: list[str],
    product_image: str,
) -> None:
    """Cluster DNS (CoreDNS behind the kube-dns Service), kube-proxy's Service rules, the API server
    through the `kubernetes` Service with the pod's ServiceAccount token, another pod by its
    Service's name, and Triton and Jaeger on the node's address."""
    web = f"web-{uuid.uuid4().hex[:6]}"
    server = pod_spec(
        real_stack.node.name, product_image, ["python", "-m", "http.server", "8080", "--directory", "/"]
    )
    server["metadata"] = {"name": web, "labels": {"app": web}}
    server["spec"]["containers"][0]["readinessProbe"] = {"tcpSocket": {"port": 8080}, "periodSeconds": 1}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": web},
        "spec": {"selector": {"app": web}, "ports": [{"port": 8080, "targetPort": 8080}]},
    }
    core.create_namespaced_service(NAMESPACE, service)
    create(core, server)
    probe = pod_spec(real_stack.node.name, product_image, ["python", "-c", NETWORK_SCRIPT])
    probe["spec"]["automountServiceAccountToken"] = True
    probe["spec"]["containers"][0]["env"] = [
        {"name": "WEB", "value": web},
        {"name": "TRITON", "value": f"{stack_info.triton_http}/v2/health/ready"},
        {"name": "JAEGER", "value": f"{stack_info.jaeger_query}/api/services"},
    ]
    try:
        wait_for(
            lambda: any(
                c.type == "Ready" and c.status == "True"
                for c in core.read_namespaced_pod(web, NAMESPACE).status.conditions or []
            ),
            timeout=120,
            what=f"pod {web} Ready",
        )
        name = create(core, probe)
        done = wait_phase(core, name, {"Succeeded", "Failed"})
        logs = run_kubectl(kubectl, "logs", "-n", NAMESPACE, name).splitlines()
        assert done.status.phase == "Succeeded", logs
        service_ip = core.read_namespaced_service(web, NAMESPACE).spec.cluster_ip
        kubernetes_ip = str(real_stack.settings.service_subnet[1])
        assert f"dns kubernetes {kubernetes_ip}" in logs
        assert f"dns web {service_ip}" in logs
        assert ipaddress.IPv4Address(service_ip) in real_stack.settings.service_subnet
        assert "api 200" in logs
        assert "service 200" in logs
        assert "triton 200" in logs
        assert "jaeger 200" in logs
    finally:
        core.delete_namespaced_service(web, NAMESPACE)


def stack_processes(stack: DevStack, node: RealNode) -> list[str]:
    """Processes of this stack's node still alive: by PID record, or naming its dirs or socket."""
    found = [r.name for r in stack.procs.records() if r.alive()]
    markers = (str(stack.state), str(node.run_dir))
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if any(m in cmd for m in markers):
            found.append(f"{proc.info['pid']}: {cmd[:200]}")
    return found


def iptables_chains() -> list[str]:
    found = []
    for save in ("iptables-save", "ip6tables-save"):
        out = subprocess.run([save], capture_output=True, text=True, check=True, timeout=30).stdout
        found += [f"{save}: {line}" for line in out.splitlines() if "KUBE-" in line or "CNI-" in line]
    return found


def test_down_leaves_the_host_clean_and_up_starts_again(real_stack: DevStack) -> None:
    """Runs last in the module: stops the session's stack, compares the host with the node's
    baseline (taken before its first change), then starts the stack again for later modules."""
    node = real_stack.node
    baseline = json.loads(node.baseline_file.read_text())["sysctls"]
    real_stack.down()
    assert not kubepods_dirs(), "kubepods cgroups left"
    assert not list(Path("/sys/fs/cgroup").glob("*/kubepods*")), "kubepods cgroups left"
    assert iptables_chains() == []
    assert not Path(f"/sys/class/net/{node.bridge}").exists(), f"bridge {node.bridge} left"
    assert mounts_under([real_stack.state, node.run_dir]) == []
    assert not node.run_dir.exists()
    assert stack_processes(real_stack, node) == []
    assert {k: v for k, v in host_sysctls().items() if k in baseline} == baseline
    assert not node.active()
    real_stack.down()  # idempotent
    assert not node.active()
    real_stack.up()
    assert node.active()
