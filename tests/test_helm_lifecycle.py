"""The chart's life on the local stack, as an SRE lives it: helm install, upgrade (only the operator
rolls; Cameras keep their pods and the ingest pods keep running), rollback, two replicas in peering
(kill the active one: the standby takes over), `helm test`, uninstall (no pods left, CRDs kept). The
operator and its ingest pods run from the product image on the stack's node, the operator under the
chart's ServiceAccount only."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pantau_dev.chart import Release, Tools, local_values
from pantau_dev.demo.run import load_detector
from pantau_dev.net import free_port
from pantau_dev.procs import wait_for
from pantau_dev.stack import DevStack

pytestmark = pytest.mark.e2e

SITES = "pantau-life"  # the namespace of the Site and Cameras
POOL = "alun-alun-ingest"


class Life:
    def __init__(self, stack: DevStack) -> None:
        self.stack = stack
        self.tools = Tools(stack.settings, stack.kubeconfig)
        self.release = Release(self.tools, name="life", namespace="pantau-life-system")
        self.info = stack.status()

    def values(self, **overrides: Any) -> dict[str, Any]:
        operator = {"watchNamespaces": [SITES], **overrides.pop("operator", {})}
        return local_values(self.info, self.stack.settings, operator=operator, **overrides)

    def get(self, kind: str, name: str = "", namespace: str = SITES) -> Any:
        scope = ["-n", namespace] if namespace else []
        args = ["get", kind, *([name] if name else []), *scope, "-o", "json"]
        return json.loads(self.tools.kubectl(*args).stdout)

    def apply(self, *docs: dict[str, Any]) -> None:
        self.tools.kubectl(
            "apply",
            "-n",
            SITES,
            "-f",
            "-",
            stdin=json.dumps({"kind": "List", "apiVersion": "v1", "items": list(docs)}),
        )

    def try_apply(self, *docs: dict[str, Any]) -> bool:
        """Apply; False only when the admission webhook could not be reached (any other error raises)."""
        try:
            self.apply(*docs)
        except RuntimeError as error:
            if "failed calling webhook" in str(error):
                return False
            raise
        return True

    def ingest_pods(self) -> dict[str, tuple[str, int]]:
        """pod name -> (uid, restarts) of the Site's pool."""
        pods = self.get("pods", namespace=SITES)["items"]
        return {
            p["metadata"]["name"]: (
                p["metadata"]["uid"],
                sum(c.get("restartCount", 0) for c in p.get("status", {}).get("containerStatuses", [])),
            )
            for p in pods
        }

    def shards(self) -> dict[str, str]:
        return {
            c["metadata"]["name"]: c["metadata"].get("labels", {}).get("pantau.io/shard", "")
            for c in self.get("cameras")["items"]
        }

    def operator_uids(self) -> list[str]:
        return sorted(p["metadata"]["uid"] for p in self.release.operator_pods())

    def operator_log(self, pod: str) -> str:
        return self.tools.kubectl("logs", "-n", self.release.namespace, pod, check=False).stdout

    def operator_pid(self, pod: str) -> int:
        """The operator container's process on the node (for a signal a test sends it)."""
        status = self.get("pod", pod, namespace=self.release.namespace)["status"]
        return self.stack.node.container_pid(status["containerStatuses"][0]["containerID"])


def site() -> dict[str, Any]:
    return {
        "apiVersion": "pantau.io/v1alpha1",
        "kind": "Site",
        "metadata": {"name": "alun-alun"},
        "spec": {
            "displayName": "Alun-alun",
            "region": "Kota Bengkulu",
            "ingest": {"minPods": 1, "maxPods": 2},
            "cameraDefaults": {"fps": 1},
        },
    }


def camera(name: str, host: str, port: int) -> dict[str, Any]:
    # Nothing listens on the port: the camera's status says ConnectionRefused, which proves the whole
    # chain (operator under its ServiceAccount, ingest pod, its report) without a stream's CPU.
    return {
        "apiVersion": "pantau.io/v1alpha1",
        "kind": "Camera",
        "metadata": {"name": name},
        "spec": {
            "siteRef": {"name": "alun-alun"},
            "source": {"url": f"rtsp://{host}:{port}/{name}", "protocol": "rtsp"},
        },
    }


def reason(life: Life, name: str) -> str | None:
    status: dict[str, Any] = life.get("camera", name).get("status", {})
    found: str | None = status.get("reason")
    return found


@pytest.fixture(scope="module")
def life(dev_stack: DevStack) -> Iterator[Life]:
    run = Life(dev_stack)
    load_detector(dev_stack)  # ingest pods start their cameras once Triton has the detector
    run.tools.kubectl("create", "namespace", SITES)
    yield run
    if run.release.installed():
        run.release.uninstall()
    run.tools.kubectl("delete", "namespace", SITES, "--wait=false", check=False)


def test_install_runs_the_operator_under_its_service_account(life: Life) -> None:
    started = time.monotonic()
    life.release.install(life.values())
    (pod,) = life.release.operator_pods()
    assert pod["spec"]["serviceAccountName"] == "life-pantau-operator"
    host = life.info.host_ip
    life.apply(site(), camera("gerbang", host, free_port(host)), camera("menara", host, free_port(host)))
    wait_for(
        lambda: reason(life, "gerbang") == "ConnectionRefused",
        timeout=90,
        what="the ingest pod's report on the Camera",
    )
    ready_s = time.monotonic() - started
    print(f"\nhelm install -> first Camera status from its ingest pod: {ready_s:.1f} s")
    assert life.get("statefulset", POOL)["spec"]["replicas"] >= 1


def test_upgrade_rolls_the_operator_and_nothing_else(life: Life) -> None:
    wait_for(lambda: all(life.shards().values()), timeout=30, what="every Camera on a shard")
    shards, pods = life.shards(), life.ingest_pods()
    generation = life.get("statefulset", POOL)["metadata"]["generation"]
    before = life.operator_uids()
    revision = life.release.revision()
    life.release.install(life.values(operator={"resyncInterval": 3}))
    assert life.release.revision() == revision + 1
    wait_for(lambda: life.operator_uids() not in ([], before), timeout=60, what="the operator rolled")
    # The new operator has made its first passes: a status it writes again proves it runs.
    wait_for(lambda: reason(life, "menara") == "ConnectionRefused", timeout=60, what="menara's status")
    assert life.shards() == shards
    assert life.ingest_pods() == pods
    assert life.get("statefulset", POOL)["metadata"]["generation"] == generation


def test_rollback_restores_the_previous_values(life: Life) -> None:
    revision = life.release.revision()
    life.release.rollback(revision - 1)
    assert life.release.revision() == revision + 1

    def resync() -> str | None:
        pods = life.release.operator_pods()
        env = (
            {e["name"]: e.get("value") for e in pods[0]["spec"]["containers"][0]["env"]}
            if len(pods) == 1
            else {}
        )
        return env.get("PANTAU_RESYNC_INTERVAL")

    wait_for(lambda: resync() == "2", timeout=60, what="the operator of the first revision")


def test_with_two_replicas_the_standby_takes_over_within_30_s(life: Life) -> None:
    life.release.install(life.values(operator={"replicas": 2}))
    wait_for(lambda: len(life.release.operator_pods()) == 2, timeout=60, what="two operator pods")

    def roles() -> tuple[str, str] | None:
        """(active, standby): both replicas are in the peering object, the higher priority acts."""
        names = {p["metadata"]["name"] for p in life.release.operator_pods()}
        peering = life.get("clusterkopfpeering", "life-pantau-operator", namespace="")
        peers = {pod: info["priority"] for pod, info in peering.get("status", {}).items() if pod in names}
        if len(peers) != 2:
            return None
        active, standby = sorted(peers, key=peers.__getitem__, reverse=True)
        return active, standby

    active, standby = wait_for(roles, timeout=60, what="one active operator and one paused")
    resumed = life.operator_log(standby).count("Resuming operations")  # a replica alone at first resumes too
    # The active one goes silent without a goodbye (SIGSTOP: a hung process or a lost node; a graceful
    # stop removes its peering entry and the standby resumes at once; a killed container would be
    # restarted in its pod). The standby must notice the silence by itself.
    pid = life.operator_pid(active)
    os.kill(pid, signal.SIGSTOP)
    try:
        silent = time.monotonic()
        host = life.info.host_ip
        # Both replicas check admission. Until the Service drops the silent one (its readiness asks
        # /healthz, which it no longer answers), a review sent to it times out: the API server
        # refuses the Camera, and a user applies it again.
        new = camera("gerbang-2", host, free_port(host))
        wait_for(lambda: life.try_apply(new), timeout=30, what="the Camera admitted by the live replica")
        admitted = time.monotonic() - silent
        wait_for(
            lambda: reason(life, "gerbang-2") is not None, timeout=45, what="the standby handling a Camera"
        )
        took_over = time.monotonic() - silent
    finally:
        os.kill(pid, signal.SIGKILL)
    assert life.operator_log(standby).count("Resuming operations") > resumed, "the standby did not resume"
    print(f"\nactive silent -> webhook answered: {admitted:.1f} s, standby took over: {took_over:.1f} s")
    assert took_over <= 30


def test_helm_test_passes(life: Life) -> None:
    """The chart's test hook: a pod that asks the operator's Service for /healthz by its DNS name."""
    wait_for(
        lambda: (
            all(
                c.get("ready")
                for p in life.release.operator_pods()
                for c in p["status"].get("containerStatuses", [])
            )
            and len(life.release.operator_pods()) == 2
        ),
        timeout=90,
        what="both operator pods ready",
    )
    result = life.tools.helm("test", life.release.name, "-n", life.release.namespace, "--timeout", "120s")
    assert re.search(r"Phase:\s+Succeeded", result.stdout), result.stdout


def test_uninstall_leaves_no_pods_and_keeps_the_crds(life: Life) -> None:
    # The documented order: Sites first, while the operator runs (it lets each go and the garbage
    # collector takes its pool), then the release.
    life.tools.kubectl("delete", "sites", "--all", "-n", SITES, "--timeout=60s")
    wait_for(lambda: not life.get("pods")["items"], timeout=60, what="the pool's pods gone")
    life.release.uninstall()
    wait_for(lambda: life.release.operator_pods() == [], timeout=60, what="the operator's pods gone")
    selector = "app.kubernetes.io/instance=life"
    left = life.tools.kubectl("get", "pods", "-A", "-l", selector, "-o", "name").stdout.split()
    assert left == []
    crds = life.tools.kubectl("get", "crd", "-o", "name").stdout.split()
    assert "customresourcedefinition.apiextensions.k8s.io/cameras.pantau.io" in crds
    assert "customresourcedefinition.apiextensions.k8s.io/sites.pantau.io" in crds
