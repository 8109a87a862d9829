"""The local stack: a real control plane, a real node that runs pods (containerd + kubelet +
kube-proxy + CoreDNS, pantau_dev.node), kwok's fake nodes, Triton and Jaeger.

The API server, Triton and Jaeger listen on the node's bridge address (`StackInfo.host_ip`), where
pods reach them as they would a cluster's services. `DevStack.up()` starts whatever is not running
yet and waits until each part answers its own readiness check; `down()` stops every process it
started, by PID, and undoes the node's changes to the host. The CLI (`pantau dev up|down|status`)
and the pytest fixtures both drive this one class.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import ssl
import sysconfig
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml
from pydantic import BaseModel

from pantau_dev.net import free_port, http_ok, port_open
from pantau_dev.node import RealNode
from pantau_dev.pki import Pki
from pantau_dev.procs import ProcessRecord, ProcessTable, StackError, wait_for, write_json
from pantau_dev.settings import DevSettings

log = logging.getLogger(__name__)

KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
# Fake nodes are tainted: pods go to the real node unless they tolerate this (scale tests do).
KWOK_TAINT = {"key": KWOK_NODE_ANNOTATION, "value": "fake", "effect": "NoSchedule"}
ADMIN_USER = "pantau-admin"
# Client certificates: user -> groups. The built-in RBAC bootstrap policy already grants the
# controller-manager and scheduler users what they need; the admin is in system:masters.
CLIENTS = {
    ADMIN_USER: ["system:masters"],
    "system:kube-controller-manager": [],
    "system:kube-scheduler": [],
}
# Stop order for `down`: the control plane last.
STOP_LAST = ["kwok", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"]
PORT_NAMES = [
    "etcd_client",
    "etcd_peer",
    "apiserver",
    "controller_manager",
    "scheduler",
    "kwok_metrics",
    "triton_http",
    "triton_grpc",
    "triton_metrics",
    "jaeger_otlp_grpc",
    "jaeger_otlp_http",
    "jaeger_query",
    "jaeger_query_grpc",
]


class StackInfo(BaseModel):
    """How to reach the stack: what `pantau dev status --json` prints."""

    state_dir: str
    log_dir: str
    kubeconfig: str
    api_server: str
    ca_file: str
    node: str | None  # the Node that runs pods (None: control plane only)
    host_ip: str  # where pods reach the stack's services (the node's bridge address)
    pod_subnet: str | None
    kwok_nodes: list[str]
    triton_http: str | None
    triton_grpc: str | None
    triton_metrics: str | None
    model_repository: str | None
    jaeger_otlp_grpc: str | None
    jaeger_otlp_http: str | None
    jaeger_query: str | None
    processes: dict[str, bool]
    rss_mib: dict[str, float]


class DevStack:
    def __init__(self, settings: DevSettings) -> None:
        self.settings = settings
        self.state = settings.state_dir
        self.pki = Pki(self.state / "pki")
        self.procs = ProcessTable(settings.pid_dir, settings.log_dir)
        self.kubeconfig = self.state / "kubeconfig"
        self.model_repository = self.state / "models"
        self.node = RealNode(settings, self.pki, self.procs, ADMIN_USER)
        self.host_ip = self.node.node_ip if settings.real_node else "127.0.0.1"
        self._node_lock: int | None = None  # fd of the machine-wide real-node lock while this stack holds it

    # ----- public API -----

    def up(self) -> StackInfo:
        """Start what is not running (idempotent) and wait until all of it is ready."""
        self.state.mkdir(parents=True, exist_ok=True)
        self._check_binaries()
        real_node = self.settings.real_node
        if real_node:  # the bridge first: the API server, Triton and Jaeger listen on it
            self._lock_node()
            self.node.prepare()
            self.pki.ensure(CLIENTS | self.node.client_certs(), self.node.apiserver_ips())
        else:
            self.pki.ensure(CLIENTS, ["127.0.0.1"])
        ports = self._ports()
        self._write_kubeconfigs(ports)
        timeout = self.settings.start_timeout

        etcd = self._ensure("etcd", self._etcd_argv(ports))
        jaeger = self._ensure("jaeger", self._jaeger_argv(ports)) if self.settings.with_jaeger else None
        triton = (
            self._ensure("triton", self._triton_argv(ports), env=self.triton_env())
            if self.settings.with_triton
            else None
        )
        wait_for(
            lambda: http_ok(f"http://127.0.0.1:{ports['etcd_client']}/health"),
            timeout=timeout,
            what="etcd",
            record=etcd,
        )

        apiserver = self._ensure("kube-apiserver", self._apiserver_argv(ports))
        if real_node:  # containerd and its images while the API server starts
            self.node.start_runtime()
        wait_for(
            lambda: self._api_get("/readyz", ports).status_code == 200,
            timeout=timeout,
            what="kube-apiserver /readyz",
            record=apiserver,
        )

        kcm = self._ensure("kube-controller-manager", self._kcm_argv(ports))
        sched = self._ensure("kube-scheduler", self._scheduler_argv(ports))
        kwok = self._ensure("kwok", self._kwok_argv(ports))
        kubelet = self.node.start_kubelet(ports["apiserver"]) if real_node else None
        services = self.node.start_services(ports["apiserver"]) if real_node else None
        self._ensure_kwok_nodes(ports)
        for rec, port in ((kcm, ports["controller_manager"]), (sched, ports["scheduler"])):
            wait_for(
                lambda p=port: http_ok(f"https://127.0.0.1:{p}/healthz"),  # type: ignore[misc]
                timeout=timeout,
                what=f"{rec.name} /healthz",
                record=rec,
            )
        nodes = [(n, kwok) for n in self._kwok_node_names()]
        if kubelet is not None:
            nodes.append((self.node.name, kubelet))
        for node, rec in nodes:
            wait_for(
                lambda n=node: self._node_ready(n, ports),  # type: ignore[misc]
                timeout=timeout,
                what=f"node {node} Ready",
                record=rec,
            )
        # The namespace controller's "default" ServiceAccount: pods can't be created without it.
        wait_for(
            lambda: (
                self._api_get("/api/v1/namespaces/default/serviceaccounts/default", ports).status_code == 200
            ),
            timeout=timeout,
            what="default ServiceAccount",
            record=kcm,
        )
        if services is not None:
            proxy, dns = services
            wait_for(self.node.proxy_ready, timeout=timeout, what="kube-proxy /healthz", record=proxy)
            wait_for(self.node.dns_ready, timeout=timeout, what="CoreDNS /ready", record=dns)

        if jaeger is not None:
            wait_for(
                lambda: (
                    http_ok(f"http://{self.host_ip}:{ports['jaeger_query']}/api/services")
                    and port_open(self.host_ip, ports["jaeger_otlp_grpc"])
                ),
                timeout=timeout,
                what="jaeger",
                record=jaeger,
            )
        if triton is not None:
            wait_for(
                lambda: http_ok(f"http://{self.host_ip}:{ports['triton_http']}/v2/health/ready"),
                timeout=timeout,
                what="triton /v2/health/ready",
                record=triton,
            )
        return self.status()

    def restart(self, name: str, grace: float = 10.0) -> float:
        """Stop one of the stack's processes (SIGTERM, SIGKILL after `grace`) and bring the stack back
        up, waiting until all of it is ready again: a fault for the reliability tests. Returns the
        seconds until it was ready."""
        started = time.monotonic()
        self.procs.stop(name, grace=grace)
        self.up()
        return time.monotonic() - started

    def down(self, purge: bool = False) -> list[str]:
        """Stop every process of the stack, pods included; `purge` also deletes the state."""
        stopped = [r.name for r in self.procs.records() if r.alive()]
        try:
            # The real node first, whatever the settings say now: its pods are deleted through
            # the API server, and it undoes its changes to the host (a no-op when it never ran).
            self.node.stop(self._ports(create=False).get("apiserver"))
        finally:
            names = [r.name for r in self.procs.records()]
            middle = [n for n in names if n not in STOP_LAST]
            self.procs.stop_all(grace=10.0, order=middle + STOP_LAST)
            self._unlock_node()
        if purge and self.state.exists():
            shutil.rmtree(self.state)
        return stopped

    def _lock_node(self) -> None:
        """One real node per machine: its bridge, addresses and iptables chains are the host's, so a
        second stack starting one would take them from the first. Wait for the other to stop."""
        if self._node_lock is not None:
            return
        path = self.settings.cache_dir / "real-node.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            log.warning(
                "another stack with a real node runs on this machine (pid %s): waiting for it", holder
            )
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._node_lock = fd

    def _unlock_node(self) -> None:
        if self._node_lock is not None:
            os.close(self._node_lock)  # closing the descriptor releases the lock
            self._node_lock = None

    def status(self) -> StackInfo:
        ports = self._ports(create=False)
        s = self.settings

        def url(scheme: str, key: str) -> str | None:
            return f"{scheme}://{self.host_ip}:{ports[key]}" if key in ports else None

        return StackInfo(
            state_dir=str(self.state),
            log_dir=str(s.log_dir),
            kubeconfig=str(self.kubeconfig),
            api_server=url("https", "apiserver") or "",
            ca_file=str(self.pki.ca_cert),
            node=self.node.name if s.real_node else None,
            host_ip=self.host_ip,
            pod_subnet=str(s.real_node_subnet) if s.real_node else None,
            kwok_nodes=self._kwok_node_names(),
            triton_http=url("http", "triton_http") if s.with_triton else None,
            triton_grpc=f"{self.host_ip}:{ports['triton_grpc']}" if s.with_triton and ports else None,
            triton_metrics=url("http", "triton_metrics") if s.with_triton else None,
            model_repository=str(self.model_repository) if s.with_triton else None,
            jaeger_otlp_grpc=url("http", "jaeger_otlp_grpc") if s.with_jaeger else None,
            jaeger_otlp_http=url("http", "jaeger_otlp_http") if s.with_jaeger else None,
            jaeger_query=url("http", "jaeger_query") if s.with_jaeger else None,
            processes={r.name: r.alive() for r in self.procs.records()},
            rss_mib={r.name: round(_tree_rss(r) / 2**20, 1) for r in self.procs.records()},
        )

    # ----- plumbing -----

    def _check_binaries(self) -> None:
        missing = [str(p) for p in self._binaries() if not os.access(p, os.X_OK)]
        if missing:
            raise StackError(
                "stack binaries missing: "
                + ", ".join(missing)
                + "\nbuild them with `make tools` (tools/build.sh) and install Triton with `make triton`"
            )

    def _binaries(self) -> list[Path]:
        s = self.settings
        k8s = s.bin_dir("k8s")
        paths = [k8s / n for n in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")]
        paths += [s.bin_dir("etcd") / "etcd", s.bin_dir("kwok") / "kwok"]
        if s.with_jaeger:
            paths.append(s.bin_dir("jaeger") / "jaeger")
        if s.real_node:
            paths += self.node.binaries()
        if s.with_triton:
            paths.append(self._triton_home() / "bin" / "tritonserver")
        return paths

    def _ports(self, create: bool = True) -> dict[str, int]:
        path = self.state / "ports.json"
        if path.exists():
            ports: dict[str, int] = json.loads(path.read_text())
            if set(PORT_NAMES) <= ports.keys():
                return ports
        if not create:
            return {}
        ports = {name: free_port() for name in PORT_NAMES}
        write_json(path, ports)
        return ports

    def _ensure(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> ProcessRecord:
        running = self.procs.running(name)
        if running is not None:
            return running
        return self.procs.spawn(name, argv, env=env, cwd=self.state)

    def _write_kubeconfigs(self, ports: dict[str, int]) -> None:
        server = f"https://{self.host_ip}:{ports['apiserver']}"
        for user, path in (
            (ADMIN_USER, self.kubeconfig),
            ("system:kube-controller-manager", self.state / "kcm.kubeconfig"),
            ("system:kube-scheduler", self.state / "scheduler.kubeconfig"),
        ):
            file = user.replace("system:", "")
            config = {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "pantau-dev",
                        "cluster": {"server": server, "certificate-authority": str(self.pki.ca_cert)},
                    }
                ],
                "users": [
                    {
                        "name": file,
                        "user": {
                            "client-certificate": str(self.pki.cert(user)),
                            "client-key": str(self.pki.key(user)),
                        },
                    }
                ],
                "contexts": [
                    {
                        "name": "pantau-dev",
                        "context": {"cluster": "pantau-dev", "user": file, "namespace": "default"},
                    }
                ],
                "current-context": "pantau-dev",
            }
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            path.chmod(0o600)

    def _api_get(self, path: str, ports: dict[str, int]) -> httpx.Response:
        with httpx.Client(verify=_ssl_context(self.pki), timeout=5) as client:
            return client.get(f"https://{self.host_ip}:{ports['apiserver']}{path}")

    def _node_ready(self, name: str, ports: dict[str, int]) -> bool:
        resp = self._api_get(f"/api/v1/nodes/{name}", ports)
        if resp.status_code != 200:
            return False
        conditions = resp.json().get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def _kwok_node_names(self) -> list[str]:
        return [f"kwok-node-{i}" for i in range(self.settings.kwok_nodes)]

    def _ensure_kwok_nodes(self, ports: dict[str, int]) -> None:
        """Fake nodes for scale tests; kwok only manages nodes carrying its annotation."""
        with httpx.Client(verify=_ssl_context(self.pki), timeout=10) as client:
            base = f"https://{self.host_ip}:{ports['apiserver']}/api/v1/nodes"
            for name in self._kwok_node_names():
                node = _kwok_node(name)
                resp = client.post(base, json=node)
                if resp.status_code not in (201, 409):
                    raise StackError(f"creating node {name}: {resp.status_code} {resp.text}")

    # ----- command lines -----

    def _etcd_argv(self, p: dict[str, int]) -> list[str]:
        client, peer = f"http://127.0.0.1:{p['etcd_client']}", f"http://127.0.0.1:{p['etcd_peer']}"
        return [
            str(self.settings.bin_dir("etcd") / "etcd"),
            "--name=pantau-dev",
            f"--data-dir={self.state / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=pantau-dev={peer}",
            "--unsafe-no-fsync=true",  # test data: speed over durability
            "--log-level=warn",
        ]

    def _apiserver_argv(self, p: dict[str, int]) -> list[str]:
        pki, s = self.pki, self.settings
        # With the node, pods reach the API server through the `kubernetes` Service, whose
        # endpoint is the advertised address: the bridge's. Without it, loopback only (the
        # endpoint reconciler refuses a loopback address, so it is off).
        where = (
            [f"--advertise-address={self.host_ip}"]
            if s.real_node
            else ["--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none"]
        )
        return [
            str(s.bin_dir("k8s") / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{p['etcd_client']}",
            f"--bind-address={self.host_ip}",
            f"--secure-port={p['apiserver']}",
            *where,
            f"--tls-cert-file={pki.cert('apiserver')}",
            f"--tls-private-key-file={pki.key('apiserver')}",
            f"--cert-dir={self.state / 'apiserver-certs'}",
            f"--client-ca-file={pki.ca_cert}",
            *(self.node.apiserver_flags() if self.settings.real_node else ["--authorization-mode=RBAC"]),
            "--anonymous-auth=false",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            f"--service-cluster-ip-range={s.service_subnet}",
            "--allow-privileged=false",
            "--profiling=false",
            "--v=0",
        ]

    def _component_auth(self, kubeconfig: Path, port: int) -> list[str]:
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            "--leader-elect=false",
            "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
        ]

    def _kcm_argv(self, p: dict[str, int]) -> list[str]:
        return [
            str(self.settings.bin_dir("k8s") / "kube-controller-manager"),
            *self._component_auth(self.state / "kcm.kubeconfig", p["controller_manager"]),
            f"--service-account-private-key-file={self.pki.sa_key}",
            f"--root-ca-file={self.pki.ca_cert}",
            # Each controller acts as its own ServiceAccount, so RBAC applies to them as in a cluster.
            "--use-service-account-credentials=true",
            f"--cert-dir={self.state / 'kcm-certs'}",
            "--v=0",
        ]

    def _scheduler_argv(self, p: dict[str, int]) -> list[str]:
        return [
            str(self.settings.bin_dir("k8s") / "kube-scheduler"),
            *self._component_auth(self.state / "scheduler.kubeconfig", p["scheduler"]),
            f"--cert-dir={self.state / 'scheduler-certs'}",
            "--v=0",
        ]

    def _kwok_argv(self, p: dict[str, int]) -> list[str]:
        kwok = self.settings.bin_dir("kwok")
        return [
            str(kwok / "kwok"),
            f"--kubeconfig={self.kubeconfig}",
            f"--config={kwok / 'stages.yaml'}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
            "--node-lease-duration-seconds=40",
            # Fake pods get loopback addresses: nothing runs there, and anything that tries to
            # reach them (the operator's status poll) stays on this machine.
            "--cidr=127.64.0.0/16",
            "--node-ip=127.0.0.2",
            f"--server-address=127.0.0.1:{p['kwok_metrics']}",
        ]

    def _jaeger_argv(self, p: dict[str, int]) -> list[str]:
        config = {
            "service": {
                "extensions": ["jaeger_storage", "jaeger_query"],
                "pipelines": {
                    "traces": {
                        "receivers": ["otlp"],
                        "processors": ["batch"],
                        "exporters": ["jaeger_storage_exporter"],
                    }
                },
                "telemetry": {"metrics": {"level": "none"}},
            },
            "extensions": {
                "jaeger_storage": {"backends": {"mem": {"memory": {"max_traces": 100000}}}},
                "jaeger_query": {
                    "storage": {"traces": "mem"},
                    "http": {"endpoint": f"{self.host_ip}:{p['jaeger_query']}"},
                    "grpc": {"endpoint": f"{self.host_ip}:{p['jaeger_query_grpc']}"},
                },
            },
            "receivers": {
                "otlp": {
                    "protocols": {
                        "grpc": {"endpoint": f"{self.host_ip}:{p['jaeger_otlp_grpc']}"},
                        "http": {"endpoint": f"{self.host_ip}:{p['jaeger_otlp_http']}"},
                    }
                }
            },
            "processors": {"batch": {"timeout": "100ms"}},
            "exporters": {"jaeger_storage_exporter": {"trace_storage": "mem"}},
        }
        path = self.state / "jaeger.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return [str(self.settings.bin_dir("jaeger") / "jaeger"), f"--config={path}"]

    def _triton_home(self) -> Path:
        return self.settings.triton_dir / "pytriton" / "tritonserver"

    def _triton_backends(self) -> Path:
        """The wheel ships one Python-backend stub per interpreter version; Triton wants it
        beside the backend library, so lay out a backend directory with ours."""
        home, backends = self._triton_home(), self.state / "triton-backends"
        python = backends / "python"
        if not (python / "triton_python_backend_stub").exists():
            python.mkdir(parents=True, exist_ok=True)
            for f in ("libtriton_python.so", "triton_python_backend_utils.py"):
                shutil.copy2(home / "backends" / "python" / f, python / f)
            version = sysconfig.get_python_version()
            shutil.copy2(
                home / "python_backend_stubs" / version / "triton_python_backend_stub",
                python / "triton_python_backend_stub",
            )
        return backends

    def _triton_argv(self, p: dict[str, int]) -> list[str]:
        return self.triton_argv(self.host_ip, p["triton_http"], p["triton_grpc"], p["triton_metrics"])

    def triton_argv(self, host: str, http: int, grpc: int, metrics: int) -> list[str]:
        """The stack's Triton command on other addresses: a second server (in a network namespace of a
        test, say) over the same model repository. Its environment is `triton_env()`."""
        self.model_repository.mkdir(parents=True, exist_ok=True)
        return [
            str(self._triton_home() / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={self._triton_backends()}",
            # explicit: tests and the operator load models through the repository API;
            # "*" loads whatever the repository holds at start.
            "--model-control-mode=explicit",
            "--load-model=*",
            f"--http-address={host}",
            f"--http-port={http}",
            f"--grpc-address={host}",
            f"--grpc-port={grpc}",
            f"--metrics-address={host}",
            f"--metrics-port={metrics}",
            "--allow-sagemaker=false",
            "--allow-vertex-ai=false",
            "--allow-gpu-metrics=false",
            "--log-verbose=0",
        ]

    def triton_env(self) -> dict[str, str]:
        env = dict(os.environ)
        libs = [
            str(self.settings.triton_dir / "nvidia_pytriton.libs"),
            str(sysconfig.get_config_var("LIBDIR")),
        ]
        env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
        # Model code runs in the Python backend's embedded interpreter, whose stub is built for
        # numpy 1.x: it must import the wheel's numpy<2 from the Triton directory, never the
        # venv's numpy 2. That interpreter ignores PYTHONPATH, so model code reads it explicitly.
        env["PYTHONPATH"] = str(self.settings.triton_dir)
        return env


def _tree_rss(record: ProcessRecord) -> int:
    """Resident memory of a process and its descendants (Triton's backend stubs, for instance)."""
    proc = record.process()
    if proc is None:
        return 0
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def _kwok_node(name: str) -> dict[str, Any]:
    resources = {"cpu": "32", "memory": "256Gi", "pods": "110"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
        },
        "spec": {"taints": [KWOK_TAINT]},
        "status": {"allocatable": resources, "capacity": resources},
    }


def _ssl_context(pki: Pki) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    ctx.load_cert_chain(str(pki.cert(ADMIN_USER)), str(pki.key(ADMIN_USER)))
    return ctx
