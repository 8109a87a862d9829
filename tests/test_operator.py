"""The operator on the real local control plane: kubectl in, pool objects and truthful status out.

The operator runs as a host process here (tests stop and start it), but with the chart's rights
only: the chart's ServiceAccount, ClusterRole and binding, and a token of that ServiceAccount."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from kubernetes import client

from pantau.contract import ANNOTATION_CREDENTIALS_SITES, LABEL_CREDENTIALS
from pantau_dev.chart import Tools, operator_kubeconfig
from pantau_dev.faultproxy import FaultProxy
from pantau_dev.net import free_port
from pantau_dev.procs import ProcessRecord, ProcessTable, wait_for
from pantau_dev.settings import REPO_ROOT
from pantau_dev.stack import KWOK_TAINT, DevStack

pytestmark = pytest.mark.integration
GROUP, VERSION = "pantau.io", "v1alpha1"


# Ingest pods on kwok's nodes are ready and never report: a Camera served as well as it can be here
# is Ready=Unknown with this reason (a real pod's report would decide it).
SERVED = "NoReport"


class Operator:
    """`pantau operator` as a real process, restartable, under the chart's ServiceAccount."""

    def __init__(
        self, stack: DevStack, tmp: Path, server: str | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.table = ProcessTable(tmp / "pids", tmp / "logs")
        self.port = free_port()
        tools = Tools(stack.settings, stack.kubeconfig)
        kubeconfig = operator_kubeconfig(tools, stack.status(), "pantau-host-operator", tmp / "kubeconfig")
        if server is not None:  # another way to the API server (a fault proxy): same certificate names
            config = yaml.safe_load(kubeconfig.read_text())
            config["clusters"][0]["cluster"]["server"] = server
            kubeconfig.write_text(yaml.safe_dump(config))
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "PANTAU_RESYNC_INTERVAL": "2",
            "PANTAU_DEBOUNCE": "0.2",
            "PANTAU_LIVENESS_HOST": "127.0.0.1",
            "PANTAU_LIVENESS_PORT": str(self.port),
            "PANTAU_STATUS_NETWORKS": '["127.0.0.0/8"]',
            **(env or {}),
        }
        self.record: ProcessRecord | None = None

    def start(self) -> None:
        pantau = str(Path(sys.executable).parent / "pantau")
        self.record = self.table.spawn("operator", [pantau, "operator"], env=self.env)
        wait_for(self.healthy, timeout=60, what="operator /healthz", record=self.record)

    def healthy(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        self.table.stop("operator", grace=15)

    def kill(self) -> None:
        """SIGKILL, as an OOM kill or a node failure would end it: no cleanup of any kind."""
        assert self.record is not None
        process = self.record.process()
        assert process is not None
        process.kill()
        process.wait(10)

    def log(self) -> str:
        return Path(self.record.log).read_text() if self.record else ""


@pytest.fixture(scope="module")
def crds(kubectl: list[str]) -> None:
    for f in sorted((REPO_ROOT / "crds").glob("*.yaml")):
        subprocess.run([*kubectl, "apply", "--server-side", "-f", str(f)], check=True, capture_output=True)
    subprocess.run(
        [
            *kubectl,
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "crd/sites.pantau.io",
            "crd/cameras.pantau.io",
        ],
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="module")
def operator(dev_stack: DevStack, crds: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    op = Operator(dev_stack, tmp_path_factory.mktemp("operator"))
    op.start()
    yield op
    op.stop()


def apply(kubectl: list[str], namespace: str, *docs: dict[str, Any]) -> None:
    done = subprocess.run(
        [*kubectl, "apply", "-n", namespace, "-f", "-"],
        input=yaml.safe_dump_all(docs),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def site(name: str, **ingest: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Site",
        "metadata": {"name": name},
        "spec": {
            "displayName": name.title(),
            "region": "Kota Bengkulu",
            # Fake nodes (tainted): pool pods become Running/Ready without running anything.
            "placement": {
                "nodeSelector": {"type": "kwok"},
                "tolerations": [{"key": KWOK_TAINT["key"], "operator": "Exists", "effect": "NoSchedule"}],
            },
            "ingest": {"minPods": 1, "maxPods": 4, **ingest},
        },
    }


def camera(name: str, site_name: str, fps: float = 5, secret: str | None = None) -> dict[str, Any]:
    source: dict[str, Any] = {"url": f"rtsp://127.0.0.1:8554/{name}", "protocol": "rtsp"}
    if secret:
        source["credentialsSecretRef"] = {"name": secret}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Camera",
        "metadata": {"name": name},
        "spec": {"siteRef": {"name": site_name}, "source": source, "sampling": {"fps": fps}},
    }


def secret(name: str, consent: bool = True, sites: str | None = None) -> dict[str, Any]:
    """A camera login; `consent`: labelled for Cameras to use; `sites`: only those Sites' Cameras."""
    metadata: dict[str, Any] = {"name": name, "labels": {LABEL_CREDENTIALS: "true"} if consent else {}}
    if sites is not None:
        metadata["annotations"] = {ANNOTATION_CREDENTIALS_SITES: sites}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "stringData": {"username": "viewer", "password": "not-a-real-password"},
    }


class Objects:
    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.core, self.apps, self.rbac = (
            client.CoreV1Api(api),
            client.AppsV1Api(api),
            client.RbacAuthorizationV1Api(api),
        )
        self.policy = client.PolicyV1Api(api)
        self.ns = namespace

    def camera(self, name: str) -> dict[str, Any]:
        found = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, "cameras", name)
        return cast(dict[str, Any], found)

    def site(self, name: str) -> dict[str, Any]:
        found = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, "sites", name)
        return cast(dict[str, Any], found)

    def condition(self, obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
        return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), None)

    def ready(self, kind: str, name: str, reason: str | None = None) -> dict[str, Any] | None:
        obj = self.camera(name) if kind == "camera" else self.site(name)
        c = self.condition(obj, "Ready")
        if c is None:
            return None
        if reason is not None:
            return obj if c["reason"] == reason else None
        return obj if c["status"] == "True" else None

    def role_secrets(self, pool: str) -> list[str]:
        role = self.rbac.read_namespaced_role(pool, self.ns)
        return sorted(
            n for r in role.rules if "secrets" in (r.resources or []) for n in (r.resource_names or [])
        )


@pytest.fixture
def objs(api: client.ApiClient, namespace: str) -> Objects:
    return Objects(api, namespace)


def test_site_and_cameras_become_a_pool_with_truthful_status(
    operator: Operator, kubectl: list[str], namespace: str, objs: Objects
) -> None:
    apply(
        kubectl,
        namespace,
        secret("gate-creds"),
        site("alun-alun"),
        camera("cam-a", "alun-alun", secret="gate-creds"),
        camera("cam-b", "alun-alun"),
    )
    wait_for(
        lambda: objs.ready("camera", "cam-a", reason=SERVED) and objs.ready("camera", "cam-b", reason=SERVED),
        timeout=60,
        what="cameras Ready",
    )
    pool = "alun-alun-ingest"
    sts = objs.apps.read_namespaced_stateful_set(pool, namespace)
    site_uid = objs.site("alun-alun")["metadata"]["uid"]
    owned: list[Any] = [
        sts,
        objs.core.read_namespaced_service_account(pool, namespace),
        objs.core.read_namespaced_service(pool, namespace),
        objs.rbac.read_namespaced_role(pool, namespace),
        objs.rbac.read_namespaced_role_binding(pool, namespace),
        objs.policy.read_namespaced_pod_disruption_budget(pool, namespace),
    ]
    for obj in owned:
        assert [(o.kind, o.uid, o.controller) for o in obj.metadata.owner_references] == [
            ("Site", site_uid, True)
        ]
    assert objs.role_secrets(pool) == ["gate-creds"]

    cam = objs.camera("cam-a")
    shard = cam["metadata"]["labels"]["pantau.io/shard"]
    assert shard.startswith(f"{pool}-")
    assert cam["status"]["pod"] == shard
    assert cam["status"]["observedGeneration"] == cam["metadata"]["generation"]
    # The pods are kwok's: ready, and never reporting. Whether the cameras stream is unknown, and
    # status says so rather than Ready.
    cam = wait_for(lambda: objs.ready("camera", "cam-a", reason=SERVED), timeout=30, what="NoReport")
    assert {c["type"]: (c["status"], c["reason"]) for c in cam["status"]["conditions"]} == {
        "Assigned": ("True", "Assigned"),
        "Streaming": ("Unknown", "NoReport"),
        "Ready": ("Unknown", "NoReport"),
    }

    wait_for(lambda: objs.ready("site", "alun-alun"), timeout=30, what="site Ready")
    status = objs.site("alun-alun")["status"]
    assert status["cameras"]["total"] == 2
    assert status["cameras"]["ready"] == 0
    assert status["pods"] == {"desired": 1, "ready": 1}

    # kubectl get shows the columns platform engineers read.
    out = subprocess.run(
        [*kubectl, "get", "cameras", "-n", namespace], capture_output=True, text=True, check=True
    )
    header, *rows = out.stdout.splitlines()
    assert header.split()[:4] == ["NAME", "SITE", "READY", "STREAMING"]
    assert any(r.split()[0] == "cam-a" and "Unknown" in r and shard in r for r in rows), out.stdout


def test_camera_without_site_is_told_then_recovers(
    operator: Operator, kubectl: list[str], namespace: str, objs: Objects
) -> None:
    apply(kubectl, namespace, camera("lonely", "pasar-baru"))
    cam = wait_for(
        lambda: objs.ready("camera", "lonely", reason="SiteNotFound"), timeout=30, what="SiteNotFound"
    )
    assert objs.condition(cam, "Ready")["status"] == "False"
    assert "pasar-baru" in objs.condition(cam, "Ready")["message"]
    # Kopf posts Events from a queue of its own, a moment after the status patch.
    wait_for(
        lambda: (
            "SiteNotFound"
            in {
                e.reason
                for e in objs.core.list_namespaced_event(
                    namespace, field_selector="involvedObject.name=lonely"
                ).items
            }
        ),
        timeout=15,
        what="a SiteNotFound Event",
    )

    apply(kubectl, namespace, site("pasar-baru"))
    wait_for(
        lambda: objs.ready("camera", "lonely", reason=SERVED),
        timeout=60,
        what="served once its Site exists",
    )


def test_secret_not_found_then_found(
    operator: Operator, kubectl: list[str], namespace: str, objs: Objects
) -> None:
    apply(kubectl, namespace, site("simpang"), camera("cam-s", "simpang", secret="late-creds"))
    wait_for(
        lambda: objs.ready("camera", "cam-s", reason="SecretNotFound"), timeout=60, what="SecretNotFound"
    )
    apply(kubectl, namespace, secret("late-creds"))
    wait_for(
        lambda: objs.ready("camera", "cam-s", reason=SERVED),
        timeout=60,
        what="served after the Secret appears",
    )


def test_cameras_sharing_a_source_count_against_its_session_budget(
    operator: Operator, kubectl: list[str], namespace: str, objs: Objects
) -> None:
    """Two Camera objects on one camera stream (the same URL, once with its default port spelled out)
    are two sessions: with maxSessions 1 the second by name gets no pod and says why; raising the budget
    on both gives it its session."""
    first, second = camera("gate-a", "terminal"), camera("gate-b", "terminal")
    first["spec"]["source"] |= {"url": "rtsp://10.0.0.9/gate", "maxSessions": 1}
    second["spec"]["source"] |= {"url": "rtsp://10.0.0.9:554/gate", "maxSessions": 1}
    apply(kubectl, namespace, site("terminal"), first, second)
    refused = wait_for(
        lambda: objs.ready("camera", "gate-b", reason="SessionLimit"), timeout=60, what="SessionLimit"
    )
    assert "spec.source.maxSessions" in objs.condition(refused, "Ready")["message"]
    assert not refused["status"].get("pod")
    wait_for(lambda: objs.ready("camera", "gate-a", reason=SERVED), timeout=60, what="the first one served")
    for cam in (first, second):
        cam["spec"]["source"]["maxSessions"] = 2
    apply(kubectl, namespace, first, second)
    wait_for(
        lambda: objs.ready("camera", "gate-b", reason=SERVED), timeout=60, what="served within 2 sessions"
    )


def can_read(stack: DevStack, namespace: str, account: str, secret_name: str) -> bool:
    """Whether a pod running as `account` could read the Secret: a real token of that
    ServiceAccount, a real GET, the API server's RBAC deciding."""
    kubectl = Tools(stack.settings, stack.kubeconfig).kubectl
    token = kubectl("create", "token", account, "-n", namespace, "--duration=10m").stdout.strip()
    info = stack.status()
    resp = httpx.get(
        f"{info.api_server}/api/v1/namespaces/{namespace}/secrets/{secret_name}",
        headers={"Authorization": f"Bearer {token}"},
        verify=ssl.create_default_context(cafile=info.ca_file),
        timeout=10,
    )
    assert resp.status_code in (200, 403), resp.text
    return resp.status_code == 200


def test_a_secret_serves_only_the_sites_it_consents_to(
    operator: Operator, dev_stack: DevStack, kubectl: list[str], namespace: str, objs: Objects
) -> None:
    """Unlabelled, or labelled for another Site: the Camera is told how to permit it and no pool may
    read it; once labelled for the Site, that Site's pool (and only it) may."""
    apply(
        kubectl,
        namespace,
        secret("plain", consent=False),
        secret("for-pasar", sites="pasar"),
        site("kota"),
        site("pasar"),
        camera("k-plain", "kota", secret="plain"),
        camera("k-pasar", "kota", secret="for-pasar"),
        camera("p-pasar", "pasar", secret="for-pasar"),
    )
    for name in ("k-plain", "k-pasar"):
        wait_for(
            lambda n=name: objs.ready("camera", n, reason="SecretNotPermitted"),  # type: ignore[misc]
            timeout=60,
            what=f"{name} SecretNotPermitted",
        )
    wait_for(lambda: objs.ready("camera", "p-pasar", reason=SERVED), timeout=60, what="p-pasar served")
    message = objs.condition(objs.camera("k-plain"), "Ready")["message"]
    assert f"label it {LABEL_CREDENTIALS}=true" in message
    assert objs.role_secrets("kota-ingest") == []
    assert objs.role_secrets("pasar-ingest") == ["for-pasar"]
    # Real tokens of the pools' ServiceAccounts against the real API server's RBAC.
    assert can_read(dev_stack, namespace, "pasar-ingest", "for-pasar")
    assert not can_read(dev_stack, namespace, "kota-ingest", "for-pasar")
    assert not can_read(dev_stack, namespace, "kota-ingest", "plain")
    assert not can_read(dev_stack, namespace, "pasar-ingest", "plain")

    # Consent given: labelled, for any Site.
    apply(kubectl, namespace, secret("plain"))
    wait_for(
        lambda: objs.ready("camera", "k-plain", reason=SERVED),
        timeout=60,
        what="k-plain served once permitted",
    )
    wait_for(lambda: objs.role_secrets("kota-ingest") == ["plain"], timeout=30, what="plain in kota's Role")
    assert can_read(dev_stack, namespace, "kota-ingest", "plain")
    assert not can_read(dev_stack, namespace, "kota-ingest", "for-pasar")


def test_deleting_a_camera_drops_its_secret_and_deleting_the_site_its_pool(
    operator: Operator, kubectl: list[str], namespace: str, objs: Objects
) -> None:
    apply(
        kubectl,
        namespace,
        secret("s1"),
        secret("s2"),
        site("terminal"),
        camera("c1", "terminal", secret="s1"),
        camera("c2", "terminal", secret="s2"),
    )
    pool = "terminal-ingest"
    wait_for(lambda: objs.role_secrets(pool) == ["s1", "s2"], timeout=60, what="both secrets in the Role")
    objs.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "cameras", "c2")
    wait_for(lambda: objs.role_secrets(pool) == ["s1"], timeout=30, what="s2 dropped from the Role")

    objs.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "sites", "terminal")

    def pool_gone() -> bool:
        return not objs.apps.list_namespaced_stateful_set(namespace).items and not any(
            r.metadata.name == pool for r in objs.rbac.list_namespaced_role(namespace).items
        )

    wait_for(pool_gone, timeout=60, what="garbage collection of the pool")
    # The Camera left behind no longer says Ready: its Site is gone, and it says so.
    cam = wait_for(
        lambda: objs.ready("camera", "c1", reason="SiteNotFound"), timeout=30, what="c1 SiteNotFound"
    )
    ready = objs.condition(cam, "Ready")
    assert ready is not None
    assert ready["status"] == "False"
    assert "shard" not in cam["status"]
    assert "pod" not in cam["status"]
    assert "pantau.io/shard" not in (cam["metadata"].get("labels") or {})


def test_drift_repair_and_fps_change_without_pool_restart(
    operator: Operator, kubectl: list[str], namespace: str, objs: Objects
) -> None:
    apply(kubectl, namespace, site("pantai"), camera("beach", "pantai", fps=2))
    wait_for(lambda: objs.ready("camera", "beach", reason=SERVED), timeout=60, what="camera served")
    pool = "pantai-ingest"
    sts = objs.apps.read_namespaced_stateful_set(pool, namespace)
    pods = {
        p.metadata.uid
        for p in objs.core.list_namespaced_pod(
            namespace, label_selector=f"app.kubernetes.io/instance={pool}"
        ).items
    }

    # fps change: the Camera changes, the pool does not (ingest pods watch Cameras themselves).
    apply(kubectl, namespace, camera("beach", "pantai", fps=4))
    wait_for(
        lambda: objs.camera("beach")["status"]["observedGeneration"] == 2, timeout=30, what="fps change seen"
    )
    after = objs.apps.read_namespaced_stateful_set(pool, namespace)
    assert after.metadata.generation == sts.metadata.generation
    now_pods = {
        p.metadata.uid
        for p in objs.core.list_namespaced_pod(
            namespace, label_selector=f"app.kubernetes.io/instance={pool}"
        ).items
    }
    assert now_pods == pods

    objs.apps.delete_namespaced_stateful_set(pool, namespace)
    wait_for(
        lambda: objs.apps.read_namespaced_stateful_set(pool, namespace).metadata.uid != sts.metadata.uid,
        timeout=10,
        what="pool workload recreated within 10 s",
        interval=0.5,
    )


def test_restarting_the_operator_writes_nothing(
    operator: Operator, kubectl: list[str], namespace: str, objs: Objects, api: client.ApiClient
) -> None:
    apply(
        kubectl,
        namespace,
        secret("k"),
        site("restart"),
        *(camera(f"r{i}", "restart", secret="k") for i in range(6)),
    )
    wait_for(
        lambda: (
            all(objs.ready("camera", f"r{i}", reason=SERVED) for i in range(6))
            and objs.ready("site", "restart")
        ),
        timeout=60,
        what="converged",
    )

    def versions() -> dict[str, str]:
        found: dict[str, str] = {}
        for plural in ("sites", "cameras"):
            for o in objs.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)["items"]:
                found[f"{plural}/{o['metadata']['name']}"] = o["metadata"]["resourceVersion"]
        for kind, items in (
            ("sts", objs.apps.list_namespaced_stateful_set(namespace).items),
            ("role", objs.rbac.list_namespaced_role(namespace).items),
            ("sa", objs.core.list_namespaced_service_account(namespace).items),
            ("svc", objs.core.list_namespaced_service(namespace).items),
            ("pdb", objs.policy.list_namespaced_pod_disruption_budget(namespace).items),
            ("rb", objs.rbac.list_namespaced_role_binding(namespace).items),
        ):
            found |= {f"{kind}/{o.metadata.name}": str(o.metadata.resource_version) for o in items}
        return found

    # Quiet first: the last status writes of the convergence have landed.
    wait_for(lambda: versions() == versions(), timeout=30, what="quiet")
    before = versions()
    for attempt in range(1, 4):
        operator.stop()
        operator.start()
        # The operator logs when its first full pass over a Site is done: after it, any write it
        # wanted to make has been made.
        marker = f"site {namespace}/restart: first pass done"
        wait_for(
            lambda marker=marker, attempt=attempt: operator.log().count(marker) >= attempt,  # type: ignore[misc]
            timeout=60,
            what="first pass after restart",
        )
        assert versions() == before, "the operator wrote after a restart"


def test_operator_killed_mid_reconcile_of_500_cameras_converges_without_duplicates(
    operator: Operator, kubectl: list[str], namespace: str, objs: Objects, record_property: Any
) -> None:
    """500 Cameras over two Sites exist before the operator starts; it is SIGKILLed while it is
    labelling them, and started again. It converges: every Camera served by one pod of its own Site's
    pool, the status saying so, and exactly one of each pool object per Site: nothing twice, nothing
    left over."""
    operator.stop()
    sites = ("kill-a", "kill-b")
    capacity = {"podCapacity": {"cameras": 64, "fps": 1000}, "maxPods": 8}
    docs = [site(name, **capacity) for name in sites]
    docs += [camera(f"k{i:03d}", sites[i % 2], fps=1) for i in range(500)]
    apply(kubectl, namespace, *docs)

    def cameras() -> list[dict[str, Any]]:
        items = objs.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "cameras")["items"]
        return [c for c in items if c["metadata"]["name"].startswith("k")]

    def labelled() -> int:
        return sum(1 for c in cameras() if c["metadata"].get("labels", {}).get("pantau.io/shard"))

    operator.start()
    at_kill = wait_for(lambda: (n := labelled()) >= 25 and n, timeout=120, what="labelling under way")
    operator.kill()
    assert at_kill < 500, "the operator finished before it could be killed mid-reconcile"
    restarted = time.monotonic()
    operator.start()

    def converged() -> list[dict[str, Any]] | None:
        found = cameras()
        done = all(
            c["metadata"].get("labels", {}).get("pantau.io/shard")
            and c.get("status", {}).get("pod") == c["metadata"]["labels"]["pantau.io/shard"]
            and (objs.condition(c, "Ready") or {}).get("reason") == SERVED
            for c in found
        )
        return found if len(found) == 500 and done else None

    found = wait_for(converged, timeout=180, what="500 cameras served after the restart", interval=1)
    took = time.monotonic() - restarted
    record_property("operator_sigkill_converge_s", round(took, 1))
    print(f"operator SIGKILLed with {at_kill}/500 cameras labelled; converged {took:.1f} s after the restart")

    pools = {f"{name}-ingest" for name in sites}
    sts = {s.metadata.name: s for s in objs.apps.list_namespaced_stateful_set(namespace).items}
    assert pools <= set(sts)
    for kind, items in (
        ("role", objs.rbac.list_namespaced_role(namespace).items),
        ("rolebinding", objs.rbac.list_namespaced_role_binding(namespace).items),
        ("serviceaccount", objs.core.list_namespaced_service_account(namespace).items),
        ("service", objs.core.list_namespaced_service(namespace).items),
        ("pdb", objs.policy.list_namespaced_pod_disruption_budget(namespace).items),
    ):
        names = [str(o.metadata.name) for o in items if str(o.metadata.name).startswith("kill-")]
        assert sorted(names) == sorted(pools), (kind, names)
    for c in found:
        pool = f"{c['spec']['siteRef']['name']}-ingest"
        shard = c["metadata"]["labels"]["pantau.io/shard"]
        ordinal = int(shard.removeprefix(f"{pool}-"))
        assert 0 <= ordinal < int(sts[pool].spec.replicas), (c["metadata"]["name"], shard)
    for name in sites:
        assert objs.site(name)["status"]["cameras"]["total"] == 250


def test_api_server_restart_watches_resume_within_30_s(
    operator: Operator,
    kubectl: list[str],
    namespace: str,
    objs: Objects,
    dev_stack: DevStack,
    record_property: Any,
) -> None:
    """The API server is restarted under a running operator: its watches resume by themselves, and a
    Camera created right after the restart is served within 30 s."""
    apply(kubectl, namespace, site("api-restart"), camera("before", "api-restart"))
    wait_for(lambda: objs.ready("camera", "before", reason=SERVED), timeout=60, what="served before")
    down = dev_stack.restart("kube-apiserver")
    back = time.monotonic()
    apply(kubectl, namespace, camera("after", "api-restart"))
    wait_for(
        lambda: objs.ready("camera", "after", reason=SERVED), timeout=30, what="served after the restart"
    )
    took = time.monotonic() - back
    record_property("apiserver_restart_resume_s", round(took, 1))
    print(f"API server down and back in {down:.1f} s; a new Camera served {took:.1f} s after it was ready")
    assert operator.healthy()
    assert operator.record is not None
    assert operator.record.alive(), "the operator exited with the API server"


def test_a_watch_gone_silent_is_noticed_and_listed_again(
    operator: Operator,
    kubectl: list[str],
    namespace: str,
    objs: Objects,
    dev_stack: DevStack,
    tmp_path: Path,
    record_property: Any,
) -> None:
    """An operator reaches the API server through a fault proxy that then severs every open
    connection silently (no FIN, no RST: a NAT that forgot the flows). Its watches hear nothing; the
    inactivity timeout (10 s here, PANTAU_INACTIVITY_TIMEOUT) restarts them on new connections, and
    a Camera created meanwhile is served. Without it the watch would wait for its client timeout
    (330 s)."""
    operator.stop()  # this test runs an operator of its own, through the proxy
    api = urlsplit(dev_stack.status().api_server)
    table = ProcessTable(tmp_path / "pids", tmp_path / "logs")
    (tmp_path / "op").mkdir()
    try:
        with FaultProxy(table, "api-proxy", str(api.hostname), int(api.port or 443)) as proxy:
            env = {"PANTAU_INACTIVITY_TIMEOUT": "10"}
            silent = Operator(dev_stack, tmp_path / "op", server=f"https://{proxy.address}", env=env)
            try:
                silent.start()
                apply(kubectl, namespace, site("silence"), camera("heard", "silence"))
                wait_for(
                    lambda: objs.ready("camera", "heard", reason=SERVED), timeout=60, what="served first"
                )
                proxy.sever()
                severed = time.monotonic()
                apply(kubectl, namespace, camera("unheard", "silence"))
                wait_for(
                    lambda: objs.ready("camera", "unheard", reason=SERVED), timeout=120, what="served again"
                )
                took = time.monotonic() - severed
            finally:
                silent.stop()
    finally:
        operator.start()
    record_property("silent_watch_recovered_s", round(took, 1))
    print(f"every connection severed silently: a new Camera served {took:.1f} s later")
    assert took <= 60
