"""The Node object of the agent and what keeps it Ready: a Lease renewed every 10 s and the
Ready condition's heartbeat refreshed every 30 s, well inside the node lifecycle controller's
grace period, so kube-controller-manager never marks the node NotReady or taints it."""

from __future__ import annotations

import logging
import platform
import threading
import time

from pantau_dev.nodeagent.kube import JSON, ApiError, Kube, micro_time, rfc3339

log = logging.getLogger(__name__)

KUBELET_VERSION = "v1.36.3-pantau-local"
LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION = 40
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
RESOURCES = {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "100Gi"}
CONDITIONS = [
    # type, status, reason, message
    ("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
    ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
    ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
    ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
]


def node_labels(name: str) -> dict[str, str]:
    return {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "pantau.io/local-node": "true",
        "type": "local",
    }


class NodeKeeper:
    def __init__(
        self,
        kube: Kube,
        name: str,
        host_ip: str,
        stop: threading.Event,
        lease_interval: float = 10.0,
        status_interval: float = 30.0,
    ) -> None:
        self.kube = kube
        self.name = name
        self.host_ip = host_ip
        self.stop = stop
        self.lease_interval = lease_interval
        self.status_interval = status_interval
        self._transitions: dict[str, tuple[str, str]] = {}
        self._uid = ""

    def register(self) -> None:
        """Create the Node (or adopt an existing one) and report it Ready."""
        path = f"/api/v1/nodes/{self.name}"
        try:
            node = self.kube.post(
                "/api/v1/nodes",
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {"name": self.name, "labels": node_labels(self.name)},
                },
            )
            log.info("registered node %s", self.name)
        except ApiError as exc:
            if exc.status != 409:
                raise
            # Ours from an earlier run: refresh the labels; kwok must never claim it.
            node = self.kube.patch(
                path, {"metadata": {"labels": node_labels(self.name), "annotations": {KWOK_ANNOTATION: None}}}
            )
            log.info("node %s exists; adopting it", self.name)
        self._uid = node["metadata"]["uid"]
        for cond in node.get("status", {}).get("conditions", []):
            self._transitions[cond["type"]] = (cond["status"], cond.get("lastTransitionTime") or rfc3339())
        self.post_status()
        self.renew_lease()

    def post_status(self) -> None:
        now = rfc3339()
        conditions = []
        for ctype, value, reason, message in CONDITIONS:
            prev = self._transitions.get(ctype)
            since = prev[1] if prev is not None and prev[0] == value else now
            self._transitions[ctype] = (value, since)
            conditions.append(
                {
                    "type": ctype,
                    "status": value,
                    "reason": reason,
                    "message": message,
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": since,
                }
            )
        status: JSON = {
            "capacity": RESOURCES,
            "allocatable": RESOURCES,
            "conditions": conditions,
            "addresses": [
                {"type": "InternalIP", "address": self.host_ip},
                {"type": "Hostname", "address": self.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": platform.release(),
                "osImage": "pantau local node agent",
                "containerRuntimeVersion": "pantau-local://0.1",
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }
        # Merge patch replaces lists whole: addresses and conditions are ours alone.
        self.kube.patch(f"/api/v1/nodes/{self.name}/status", {"status": status})

    def renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{self.name}"
        spec = {
            "holderIdentity": self.name,
            "leaseDurationSeconds": LEASE_DURATION,
            "renewTime": micro_time(),
        }
        try:
            self.kube.patch(path, {"spec": spec})
        except ApiError as exc:
            if exc.status != 404:
                raise
            self.kube.post(
                f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases",
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {
                        "name": self.name,
                        "namespace": LEASE_NAMESPACE,
                        "ownerReferences": [
                            {"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": self._uid}
                        ],
                    },
                    "spec": spec,
                },
            )

    def run(self) -> None:
        last_status = time.monotonic()
        while not self.stop.wait(self.lease_interval):
            try:
                self.renew_lease()
                if time.monotonic() - last_status >= self.status_interval:
                    try:
                        self.post_status()
                    except ApiError as exc:
                        if exc.status != 404:
                            raise
                        log.warning("node %s was deleted; registering it again", self.name)
                        self.register()
                    last_status = time.monotonic()
            except Exception:
                log.exception("node heartbeat failed; retrying in %.0f s", self.lease_interval)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="node-heartbeat", daemon=True)
        thread.start()
        return thread
