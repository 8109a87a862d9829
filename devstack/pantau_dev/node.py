"""The local stack's node: containerd + runc + CNI bridge + kubelet, with kube-proxy and CoreDNS
(docs/local-node.md). Needs root.

`RealNode.prepare()` records a baseline of what the node changes on the host
(`<state>/node/baseline.json`: sysctls, which system paths existed) and creates the pod network's
bridge, whose address the API server, Triton and Jaeger then listen on; `start_runtime()` writes
the containerd config, starts containerd and imports the images; `start_kubelet()` and
`start_services()` (kube-proxy, CoreDNS and its `kube-dns` Service) need the API server. All run
through the stack's ProcessTable. `stop()` undoes all of it in the order the smoke run found
necessary; it only acts when the baseline file exists (a stack that never ran the node changes
nothing on `down`), and removes that file last, so an interrupted `down` is finished by the next.

Everything lives under `<state>/node`, except the runtime's sockets and runc's state: a shim's
socket path (`<dir>/s/<64 hex digits>`) must fit a unix socket address (107 bytes), so they go to
`/run/pantau-<hash of the state dir>`.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import ipaddress
import json
import os
import shlex
import shutil
import ssl
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from pantau_dev.images import built_images
from pantau_dev.net import free_port, http_ok
from pantau_dev.pki import Pki
from pantau_dev.procs import ProcessRecord, ProcessTable, StackError, stop_processes, wait_for, write_json
from pantau_dev.settings import DevSettings

CONTAINERD = "containerd"
KUBELET = "kubelet"
KUBE_PROXY = "kube-proxy"
COREDNS = "coredns"
KUBE_PROXY_USER = "system:kube-proxy"  # bound to system:node-proxier by the bootstrap policy
CLUSTER_DOMAIN = "cluster.local"
# The API server's identity towards kubelets (logs, exec, port-forward): bound to the built-in
# ClusterRole system:kubelet-api-admin, the kubelet authorizes it with a SubjectAccessReview.
APISERVER_KUBELET_CLIENT = "kube-apiserver-kubelet-client"
REAL_NODE_LABEL = "pantau.io/real-node"
CNI_NETWORK = "pantau"
# What the kubelet (kernel tunables) and the bridge plugin (forwarding) set; restored on stop.
SYSCTLS = [
    "net.ipv4.ip_forward",  # first: writing it also resets conf.*.forwarding
    "net.ipv4.conf.all.forwarding",
    "net.ipv6.conf.all.forwarding",
    "net.ipv4.conf.all.route_localnet",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
]
# Paths outside the state dir that the kubelet or libcni create. Removed on stop when they did not
# exist at the baseline (/var/lib/kubelet whole; the others only our entries, then if empty).
KUBELET_VAR = Path("/var/lib/kubelet")
CONTAINER_LOG_LINKS = Path("/var/log/containers")
CNI_RESULTS = Path("/var/lib/cni/results")
SYSTEM_PATHS = [KUBELET_VAR, CONTAINER_LOG_LINKS, CNI_RESULTS, CNI_RESULTS.parent]
IPTABLES_TABLES = ["filter", "nat", "mangle", "raw"]
OUR_CHAIN_PREFIXES = ("KUBE-", "CNI-")
PAUSE_IMAGE = "localhost/pantau-pause"
BUSYBOX = Path("/usr/bin/busybox")  # Debian busybox-static


class RealNode:
    """containerd and the kubelet of one stack, and the host changes they make."""

    def __init__(self, settings: DevSettings, pki: Pki, procs: ProcessTable, admin_user: str) -> None:
        self.settings = settings
        self.pki = pki
        self.procs = procs
        self.admin_user = admin_user
        self.name = settings.real_node_name
        self.dir = settings.state_dir / "node"
        digest = hashlib.sha256(str(settings.state_dir.resolve()).encode()).hexdigest()[:10]
        self.run_dir = Path("/run") / f"pantau-{digest}"
        self.baseline_file = self.dir / "baseline.json"
        subnet = settings.real_node_subnet
        self.subnet = subnet
        self.node_ip = str(next(subnet.hosts()))
        self.service_subnet = settings.service_subnet
        self.dns_ip = str(settings.service_subnet[10])
        self.bridge = settings.real_node_bridge
        self.socket = self.run_dir / "containerd.sock"
        self.containerd_root = self.dir / "containerd" / "root"
        self.containerd_state = self.dir / "containerd" / "state"
        self.kubelet_root = self.dir / "kubelet"
        self.pod_logs = self.dir / "pod-logs"
        self.cni_conf_dir = self.dir / "cni" / "net.d"
        self.cni_ipam = self.dir / "cni" / "ipam"

    # ----- identities and flags -----

    @property
    def node_user(self) -> str:
        return f"system:node:{self.name}"

    def client_certs(self) -> dict[str, list[str]]:
        """Client certificates the stack's PKI issues for the node: user -> groups."""
        return {self.node_user: ["system:nodes"], APISERVER_KUBELET_CLIENT: [], KUBE_PROXY_USER: []}

    def apiserver_ips(self) -> list[str]:
        """Where the API server is reached: loopback, the node's address, the `kubernetes` Service."""
        return ["127.0.0.1", self.node_ip, str(self.service_subnet[1])]

    def apiserver_flags(self) -> list[str]:
        """Nodes get their rights from the Node authorizer; the API server reaches the kubelet by
        the node's InternalIP with x509 on both sides (its client cert, the kubelet's serving cert)."""
        return [
            "--authorization-mode=Node,RBAC",
            "--kubelet-preferred-address-types=InternalIP",
            f"--kubelet-client-certificate={self.pki.cert(APISERVER_KUBELET_CLIENT)}",
            f"--kubelet-client-key={self.pki.key(APISERVER_KUBELET_CLIENT)}",
            f"--kubelet-certificate-authority={self.pki.ca_cert}",
        ]

    def binaries(self) -> list[Path]:
        s = self.settings
        cd, cni = s.bin_dir("containerd"), s.bin_dir("cni")
        return [
            s.bin_dir("k8s") / "kubelet",
            s.bin_dir("k8s") / "kube-proxy",
            s.bin_dir("coredns") / "coredns",
            cd / "containerd",
            cd / "containerd-shim-runc-v2",
            cd / "ctr",
            s.bin_dir("runc") / "runc",
            s.bin_dir("crictl") / "crictl",
            *(cni / p for p in ("bridge", "host-local", "portmap", "loopback")),
        ]

    def check(self) -> None:
        """Fail early, before anything on the host changes."""
        if os.geteuid() != 0:
            raise StackError("the stack's node needs root (PANTAU_DEV_REAL_NODE=0: control plane only)")
        missing = [str(p) for p in self.binaries() if not os.access(p, os.X_OK)]
        missing += [t for t in ("ip", "iptables", "ip6tables", "mount", "umount") if shutil.which(t) is None]
        if not os.access(BUSYBOX, os.X_OK):
            missing.append(f"{BUSYBOX} (Debian busybox-static, for the sandbox image)")
        if missing:
            raise StackError(
                "real node: missing " + ", ".join(missing) + "\n(`make deps tools` installs and builds them)"
            )
        apiserver = self.procs.running("kube-apiserver")
        if apiserver is not None and "--authorization-mode=Node,RBAC" not in apiserver.argv:
            raise StackError("the stack runs without the real node: `pantau dev down` first")
        for subnet in (self.subnet, self.service_subnet):
            self._check_subnet(subnet)

    def _check_subnet(self, subnet: ipaddress.IPv4Network) -> None:
        """Pod and Service ranges must exist only here: no other interface or route may overlap them."""
        addrs = json.loads(_run(["ip", "-j", "addr", "show"]).stdout)
        for link in addrs:
            for a in link.get("addr_info", []):
                if a.get("family") != "inet" or link["ifname"] == self.bridge:
                    continue
                net = ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}").network
                if net.overlaps(subnet):
                    raise StackError(f"real node: {subnet} overlaps {net} on {link['ifname']}")
        for r in json.loads(_run(["ip", "-j", "route", "show", "table", "all"]).stdout):
            dst, dev = r.get("dst", ""), r.get("dev", "")
            if dst in ("", "default") or dev == self.bridge or r.get("type") in ("local", "broadcast"):
                continue
            with contextlib.suppress(ValueError):
                if ipaddress.ip_network(dst, strict=False).overlaps(subnet):
                    raise StackError(f"real node: {subnet} overlaps route {dst} via {dev}")

    # ----- start -----

    def prepare(self) -> None:
        """Baseline, bridge and CNI config: first, as the stack's services listen on the bridge."""
        self.check()
        self._save_baseline()
        for d in (self.dir, self.run_dir, self.cni_conf_dir, self.pod_logs, self.kubelet_root):
            d.mkdir(parents=True, exist_ok=True)
        self._ensure_bridge()
        self._write_cni_config()

    def start_runtime(self) -> ProcessRecord:
        """containerd and its images (the API server not needed); after `prepare()`."""
        pause = self._pause_image()
        config = self._write_containerd_config(pause[0])
        rec = self.procs.running(CONTAINERD)
        if rec is None:
            env = dict(os.environ)
            path = env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            env["PATH"] = f"{self.settings.bin_dir('containerd')}{os.pathsep}{path}"  # its shim
            rec = self.procs.spawn(
                CONTAINERD,
                [str(self.settings.bin_dir("containerd") / "containerd"), f"--config={config}"],
                env=env,
                cwd=self.dir,
            )
        wait_for(
            lambda: self._ctr("version", check=False).returncode == 0,
            timeout=self.settings.start_timeout,
            what="containerd",
            record=rec,
        )
        present = set(self._ctr("images", "ls", "-q").stdout.split())
        for ref, archive in [pause, *((i.ref, i.archive) for i in built_images(self.settings).values())]:
            if ref not in present:
                self._ctr("images", "import", "--base-name", ref.rsplit(":", 1)[0], str(archive), timeout=600)
        return rec

    def start_kubelet(self, api_port: int) -> ProcessRecord:
        """RBAC for the API server's kubelet client, the node's credentials, the kubelet."""
        self._api_create(
            api_port, "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", _kubelet_api_binding()
        )
        self.pki.issue_serving(
            "kubelet-serving", self.node_user, ["system:nodes"], [self.name], [self.node_ip]
        )
        kubeconfig = self._write_kubeconfig("kubelet", self.node_user, api_port)
        config = self._write_kubelet_config()
        rec = self.procs.running(KUBELET)
        if rec is None:
            rec = self.procs.spawn(
                KUBELET,
                [
                    str(self.settings.bin_dir("k8s") / "kubelet"),
                    f"--config={config}",
                    f"--kubeconfig={kubeconfig}",
                    f"--root-dir={self.kubelet_root}",
                    f"--cert-dir={self.kubelet_root / 'pki'}",
                    f"--hostname-override={self.name}",
                    f"--node-ip={self.node_ip}",
                    f"--node-labels={REAL_NODE_LABEL}=true",
                    "--v=1",
                ],
                cwd=self.dir,
            )
        return rec

    def start_services(self, api_port: int) -> tuple[ProcessRecord, ProcessRecord]:
        """kube-proxy (iptables mode) and CoreDNS on the node's address behind the `kube-dns`
        Service; each is ready when `services_ready()` says so."""
        ports = self._node_ports()
        proxy = self.procs.running(KUBE_PROXY) or self.procs.spawn(
            KUBE_PROXY,
            [
                str(self.settings.bin_dir("k8s") / "kube-proxy"),
                f"--config={self._write_proxy_config(api_port, ports)}",
                f"--hostname-override={self.name}",
                "--v=0",
            ],
            cwd=self.dir,
        )
        dns = self.procs.running(COREDNS) or self.procs.spawn(
            COREDNS,
            [
                str(self.settings.bin_dir("coredns") / "coredns"),
                f"-conf={self._write_corefile(api_port, ports)}",
                "-dns.port=53",
            ],
            cwd=self.dir,
        )
        for path, obj in _kube_dns(self.dns_ip, self.node_ip):
            self._api_create(api_port, path, obj)
        return proxy, dns

    def proxy_ready(self) -> bool:
        return http_ok(f"http://127.0.0.1:{self._node_ports()['proxy_healthz']}/healthz")

    def dns_ready(self) -> bool:
        return http_ok(f"http://127.0.0.1:{self._node_ports()['dns_ready']}/ready")

    def _write_proxy_config(self, api_port: int, ports: dict[str, int]) -> Path:
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {
                "kubeconfig": str(self._write_kubeconfig("kube-proxy", KUBE_PROXY_USER, api_port))
            },
            "hostnameOverride": self.name,
            "bindAddress": self.node_ip,
            "healthzBindAddress": f"127.0.0.1:{ports['proxy_healthz']}",
            "metricsBindAddress": f"127.0.0.1:{ports['proxy_metrics']}",
            "mode": "iptables",
            "clusterCIDR": str(self.subnet),
            "nodePortAddresses": [f"{self.node_ip}/32"],
            "oomScoreAdj": 0,
            # Pods' replies to a Service on the same bridge would skip the host's conntrack (no
            # br_netfilter here): masquerading all Service traffic brings them back through it.
            "iptables": {"masqueradeAll": True, "localhostNodePorts": False, "minSyncPeriod": "1s"},
            # Zeros: kube-proxy leaves the host's conntrack sysctls alone.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
        }
        path = self.dir / "kube-proxy.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def _write_corefile(self, api_port: int, ports: dict[str, int]) -> Path:
        """Only the cluster's names: nothing outside this machine is asked."""
        kubeconfig = self._write_kubeconfig("coredns", self.admin_user, api_port)
        text = f"""{CLUSTER_DOMAIN}:53 {{
    bind {self.node_ip}
    errors
    ready 127.0.0.1:{ports["dns_ready"]}
    kubernetes {CLUSTER_DOMAIN} {{
        kubeconfig {kubeconfig} node
        pods insecure
    }}
    cache 5
}}
"""
        path = self.dir / "Corefile"
        path.write_text(text)
        return path

    def _save_baseline(self) -> None:
        """Written once, before the first change: a later start keeps the original baseline."""
        if self.baseline_file.exists():
            return
        baseline = {
            "sysctls": {k: v for k in SYSCTLS if (v := sysctl_get(k)) is not None},
            "existed": {str(p): p.exists() for p in SYSTEM_PATHS},
            "bridge": self.bridge,
            "run_dir": str(self.run_dir),
            "socket": str(self.socket),
        }
        write_json(self.baseline_file, baseline)

    def _ensure_bridge(self) -> None:
        cidr = f"{self.node_ip}/{self.subnet.prefixlen}"
        if not Path(f"/sys/class/net/{self.bridge}").exists():
            _run(["ip", "link", "add", self.bridge, "type", "bridge"])
            _run(["ip", "link", "set", self.bridge, "alias", self._bridge_alias()])
        addrs = json.loads(_run(["ip", "-j", "addr", "show", "dev", self.bridge]).stdout)
        have = {f"{a['local']}/{a['prefixlen']}" for link in addrs for a in link.get("addr_info", [])}
        if cidr not in have:
            _run(["ip", "addr", "add", cidr, "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])

    def _bridge_alias(self) -> str:
        return f"pantau-dev {self.run_dir.name}"

    def _write_cni_config(self) -> None:
        # containerd sets up each sandbox's lo itself, with the loopback plugin from bin_dirs.
        conflist = {
            "cniVersion": "1.0.0",
            "name": CNI_NETWORK,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        # no default route: pods reach the bridge's subnet and, through the
                        # node (kube-proxy's rules), the Service range; nothing else
                        "ranges": [[{"subnet": str(self.subnet), "gateway": self.node_ip}]],
                        "routes": [{"dst": str(self.service_subnet)}],
                        "dataDir": str(self.cni_ipam),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        (self.cni_conf_dir / f"10-{CNI_NETWORK}.conflist").write_text(json.dumps(conflist, indent=2))

    def _write_containerd_config(self, sandbox_image: str) -> Path:
        s, q = self.settings, json.dumps
        cri_rt = "plugins.'io.containerd.cri.v1.runtime'"
        text = f"""version = 3
root = {q(str(self.containerd_root))}
state = {q(str(self.containerd_state))}
imports = []

[grpc]
  address = {q(str(self.socket))}

[ttrpc]
  address = {q(str(self.socket) + ".ttrpc")}

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = {q(sandbox_image)}

  [{cri_rt}]
    # no CAP_SYS_RESOURCE here: runc init fails writing an oom_score_adj below its parent's
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    enable_criu = false
    [{cri_rt}.containerd]
      default_runtime_name = 'runc'
      [{cri_rt}.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [{cri_rt}.containerd.runtimes.runc.options]
          BinaryName = {q(str(s.bin_dir("runc") / "runc"))}
          Root = {q(str(self.run_dir / "runc"))}
          SystemdCgroup = false
    [{cri_rt}.cni]
      bin_dirs = [{q(str(s.bin_dir("cni")))}]
      conf_dir = {q(str(self.cni_conf_dir))}

  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '127.0.0.1'

  [plugins.'io.containerd.internal.v1.opt']
    path = {q(str(self.dir / "containerd" / "opt"))}

  [plugins.'io.containerd.nri.v1.nri']
    disable = true

  [plugins.'io.containerd.shim.v1.manager']
    socket_dir = {q(str(self.run_dir / "s"))}
"""
        path = self.dir / "containerd.toml"
        path.write_text(text)
        return path

    def _write_kubeconfig(self, file: str, user: str, api_port: int) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "pantau-dev",
                    "cluster": {
                        "server": f"https://{self.node_ip}:{api_port}",
                        "certificate-authority": str(self.pki.ca_cert),
                    },
                }
            ],
            "users": [
                {
                    "name": "node",
                    "user": {
                        "client-certificate": str(self.pki.cert(user)),
                        "client-key": str(self.pki.key(user)),
                    },
                }
            ],
            "contexts": [{"name": "node", "context": {"cluster": "pantau-dev", "user": "node"}}],
            "current-context": "node",
        }
        path = self.dir / f"{file}.kubeconfig"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)
        return path

    def _node_ports(self) -> dict[str, int]:
        path = self.dir / "ports.json"
        if path.exists():
            ports: dict[str, int] = json.loads(path.read_text())
            return ports
        ports = {
            "kubelet": free_port(self.node_ip),
            "healthz": free_port(),
            "proxy_healthz": free_port(),
            "proxy_metrics": free_port(),
            "dns_ready": free_port(),
        }
        write_json(path, ports)
        return ports

    def _write_kubelet_config(self) -> Path:
        ports = self._node_ports()
        zero = "0%"
        config: dict[str, Any] = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            # reachable from the API server by the node's InternalIP, i.e. on the bridge only
            "address": self.node_ip,
            "port": ports["kubelet"],
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": ports["healthz"],
            "tlsCertFile": str(self.pki.cert("kubelet-serving")),
            "tlsPrivateKeyFile": str(self.pki.key("kubelet-serving")),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.pki.ca_cert)},
            },
            "authorization": {"mode": "Webhook"},
            "registerNode": True,
            "clusterDNS": [self.dns_ip],
            "clusterDomain": CLUSTER_DOMAIN,
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": True,
            "failSwapOn": False,
            "oomScoreAdj": 0,
            "enforceNodeAllocatable": [],
            "evictionHard": {
                "memory.available": zero,
                "nodefs.available": zero,
                "nodefs.inodesFree": zero,
                "imagefs.available": zero,
                "imagefs.inodesFree": zero,
            },
            "localStorageCapacityIsolation": False,
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "resolvConf": "",
            "podLogsDir": str(self.pod_logs),
            "volumePluginDir": str(self.dir / "volume-plugins"),
            "maxPods": 20,
            "serializeImagePulls": False,
        }
        path = self.dir / "kubelet-config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    # ----- images -----

    def _pause_image(self) -> tuple[str, Path]:
        """The sandbox image: one static busybox running `sleep infinity`, as an OCI archive made
        here (nothing can be pulled), cached by the binary's hash."""
        data = BUSYBOX.read_bytes()
        tag = hashlib.sha256(data).hexdigest()[:12]
        ref = f"{PAUSE_IMAGE}:{tag}"
        archive = self.settings.cache_dir / "images" / f"pantau-pause_{tag}.oci.tar"
        if not archive.is_file():
            archive.parent.mkdir(parents=True, exist_ok=True)
            tmp = archive.with_suffix(".tmp")
            tmp.write_bytes(_oci_archive(ref, data))
            tmp.replace(archive)
        return ref, archive

    # ----- helpers -----

    def _ctr(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        ctr = self.settings.bin_dir("containerd") / "ctr"
        return _run(
            [str(ctr), "--address", str(self.socket), "-n", "k8s.io", *args], check=check, timeout=timeout
        )

    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        ctx.load_cert_chain(str(self.pki.cert(self.admin_user)), str(self.pki.key(self.admin_user)))
        return ctx

    def _api_create(self, api_port: int, path: str, obj: dict[str, Any]) -> None:
        """POST `obj` to the collection at `path`; one that exists already is kept (asked first: a
        Service's fixed ClusterIP makes a second POST fail validation before the name conflict)."""
        with httpx.Client(verify=self._ssl(), timeout=10) as client:
            url = f"https://{self.node_ip}:{api_port}{path}"
            if client.get(f"{url}/{obj['metadata']['name']}").status_code == 200:
                return
            resp = client.post(url, json=obj)
            if resp.status_code not in (201, 409):
                raise StackError(f"creating {obj['metadata']['name']}: {resp.status_code} {resp.text}")

    def container_pid(self, container_id: str) -> int:
        """The host PID of a container's first process (`containerd://<id>` from a pod's status)."""
        crictl = self.settings.bin_dir("crictl") / "crictl"
        out = _run(
            [str(crictl), f"--runtime-endpoint=unix://{self.socket}", "inspect", container_id.split("//")[-1]]
        ).stdout
        return int(json.loads(out)["info"]["pid"])

    # ----- stop -----

    def active(self) -> bool:
        """Whether a start changed the host and no stop has finished since."""
        return self.baseline_file.exists()

    def stop(self, api_port: int | None) -> None:
        """Undo everything start did (docs/local-node.md, "What the stack must clean up").
        Idempotent; does nothing when the node never started."""
        if not self.active():
            for name in (KUBELET, KUBE_PROXY, COREDNS, CONTAINERD):  # only PID records, nothing on the host
                self.procs.stop(name)
            return
        baseline = json.loads(self.baseline_file.read_text())
        run_dir = Path(baseline.get("run_dir", self.run_dir))
        socket = Path(baseline.get("socket", self.socket))
        sandboxes = self._sandbox_ids()
        # 1. the node's pods away while the kubelet runs (CNI DEL frees IPs and hostport chains)
        client = self._api_client(api_port)
        try:
            if client is not None:
                self._delete_pods(client)
            # 2. the kubelet, then the Node (a running kubelet would register it again)
            self.procs.stop(KUBELET, grace=15)
            if client is not None:
                with contextlib.suppress(httpx.HTTPError):
                    client.delete(f"/api/v1/nodes/{self.name}")
            # kube-proxy before its chains go (it would write them again); CoreDNS with it
            self.procs.stop(KUBE_PROXY, grace=10)
            self.procs.stop(COREDNS, grace=10)
        finally:
            if client is not None:
                client.close()
        # 3. sandboxes (CNI DEL for what is left), containerd, then its shims (they outlive it)
        if socket.is_socket() and self.procs.running(CONTAINERD) is not None:
            crictl = self.settings.bin_dir("crictl") / "crictl"
            _run(
                [str(crictl), f"--runtime-endpoint=unix://{socket}", "--timeout=30s", "rmp", "-fa"],
                check=False,
                timeout=120,
            )
        self.procs.stop(CONTAINERD, grace=15)
        stop_processes(_shims(socket), grace=5)
        _kill_cgroup_procs()
        # 4. mounts under our directories, deepest first
        _unmount_under([self.dir, run_dir])
        # 5. kubepods cgroups, bottom-up, in every hierarchy
        _remove_kubepods_cgroups()
        # 6. iptables: jumps into KUBE-*/CNI-* chains, then those chains
        for ipt in ("iptables", "ip6tables"):
            _remove_chains(ipt)
        # 7. the bridge (if it is ours), the sysctls
        bridge = str(baseline.get("bridge", self.bridge))
        alias = Path(f"/sys/class/net/{bridge}/ifalias")
        if alias.exists() and alias.read_text().strip() == self._bridge_alias():
            _run(["ip", "link", "del", bridge], check=False)
        for key, value in baseline.get("sysctls", {}).items():
            if sysctl_get(key) not in (None, value):
                _sysctl_set(key, value)
        # 8. files outside the state dir, and the node's runtime state (images stay)
        existed: dict[str, bool] = baseline.get("existed", {})
        self._remove_system_files(existed, sandboxes)
        still_mounted = mounts_under([self.dir, run_dir])
        if still_mounted:
            raise StackError(f"real node: still mounted after stop: {still_mounted}")
        for d in (run_dir, self.containerd_state, self.kubelet_root, self.cni_ipam, self.pod_logs):
            shutil.rmtree(d, ignore_errors=True)
        self.baseline_file.unlink()

    def _api_client(self, api_port: int | None) -> httpx.Client | None:
        if api_port is None or not self.pki.cert(self.admin_user).exists():
            return None
        client = httpx.Client(base_url=f"https://{self.node_ip}:{api_port}", verify=self._ssl(), timeout=5)
        try:
            if client.get("/readyz").status_code == 200:
                return client
        except httpx.HTTPError:
            pass
        client.close()
        return None

    def _delete_pods(self, client: httpx.Client) -> None:
        kubelet_up = self.procs.running(KUBELET) is not None

        def pods() -> list[dict[str, Any]]:
            resp = client.get("/api/v1/pods", params={"fieldSelector": f"spec.nodeName={self.name}"})
            resp.raise_for_status()
            items: list[dict[str, Any]] = resp.json()["items"]
            return items

        def delete_all(grace: int) -> None:
            for pod in pods():
                meta = pod["metadata"]
                client.request(
                    "DELETE",
                    f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                    json={"gracePeriodSeconds": grace},
                )

        try:
            delete_all(2 if kubelet_up else 0)
            if kubelet_up:
                wait_for(lambda: not pods(), timeout=60, what="pods of the real node deleted", interval=0.5)
        except (httpx.HTTPError, StackError):
            with contextlib.suppress(httpx.HTTPError):
                delete_all(0)

    def _sandbox_ids(self) -> set[str]:
        """Sandbox IDs known to containerd (for their libcni cache entries)."""
        ids: set[str] = set()
        for d in (
            self.containerd_root / "io.containerd.grpc.v1.cri" / "sandboxes",
            self.containerd_state / "io.containerd.runtime.v2.task" / "k8s.io",
        ):
            if d.is_dir():
                ids.update(p.name for p in d.iterdir())
        return ids

    def _remove_system_files(self, existed: dict[str, bool], sandboxes: set[str]) -> None:
        if not existed.get(str(KUBELET_VAR), True) and not mounts_under([KUBELET_VAR]):
            shutil.rmtree(KUBELET_VAR, ignore_errors=True)
        if CONTAINER_LOG_LINKS.is_dir():
            for link in CONTAINER_LOG_LINKS.iterdir():
                if link.is_symlink() and Path(os.readlink(link)).is_relative_to(self.pod_logs):
                    link.unlink()
        if CNI_RESULTS.is_dir():
            for entry in CNI_RESULTS.iterdir():
                if entry.name.startswith(f"{CNI_NETWORK}-") or any(
                    entry.name.startswith(f"cni-loopback-{sid}-") for sid in sandboxes
                ):
                    entry.unlink(missing_ok=True)
        for d in (CONTAINER_LOG_LINKS, CNI_RESULTS, CNI_RESULTS.parent):
            if not existed.get(str(d), True):
                with contextlib.suppress(OSError):
                    d.rmdir()  # only when empty


def _kubelet_api_binding() -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "pantau-dev:apiserver-kubelet-client"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "system:kubelet-api-admin",
        },
        "subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": APISERVER_KUBELET_CLIENT}
        ],
    }


def _kube_dns(service_ip: str, node_ip: str) -> list[tuple[str, dict[str, Any]]]:
    """The cluster DNS Service (the kubelet's clusterDNS) and, as CoreDNS runs on the node rather
    than in a pod, an EndpointSlice of ours pointing at the node's address."""
    ports = [
        {"name": "dns", "port": 53, "protocol": "UDP"},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
    ]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
        "spec": {"clusterIP": service_ip, "ports": [{**p, "targetPort": 53} for p in ports]},
    }
    slice_ = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "kube-dns-node",
            "namespace": "kube-system",
            "labels": {
                "kubernetes.io/service-name": "kube-dns",
                "endpointslice.kubernetes.io/managed-by": "dev.pantau.io",
            },
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [node_ip], "conditions": {"ready": True}}],
        "ports": ports,
    }
    return [
        ("/api/v1/namespaces/kube-system/services", service),
        ("/apis/discovery.k8s.io/v1/namespaces/kube-system/endpointslices", slice_),
    ]


# ----- host plumbing -----


def _run(argv: list[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise StackError(f"{shlex.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


def sysctl_get(key: str) -> str | None:
    try:
        return _sysctl_path(key).read_text().strip()
    except OSError:
        return None


def _sysctl_set(key: str, value: str) -> None:
    with contextlib.suppress(OSError):
        _sysctl_path(key).write_text(value)


def _shims(socket: Path) -> list[psutil.Process]:
    """containerd-shim processes serving our containerd (their -address is our socket)."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmd = proc.info["cmdline"] or []
        if (proc.info["name"] or "").startswith("containerd-shim") and str(socket) in cmd:
            found.append(proc)
    return found


def kubepods_dirs() -> list[Path]:
    """The kubepods cgroup of each hierarchy (v1: one per controller mount; v2: the root)."""
    roots = [*sorted(Path("/sys/fs/cgroup").glob("*/kubepods")), Path("/sys/fs/cgroup/kubepods")]
    seen: set[Path] = set()
    found = []
    for d in roots:
        real = d.resolve()
        if d.is_dir() and real not in seen:
            seen.add(real)
            found.append(d)
    return found


def _kill_cgroup_procs() -> None:
    """Containers whose shim is gone still run in kubepods: they belong to this node."""
    pids: set[int] = set()
    for root in kubepods_dirs():
        for procs in root.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(line) for line in procs.read_text().split())
    members = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            members.append(psutil.Process(pid))
    if members:
        stop_processes(members, grace=0.1)


def _remove_kubepods_cgroups() -> None:
    deadline = time.monotonic() + 10
    for root in kubepods_dirs():
        dirs = sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for d in [*dirs, root]:
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)  # a killed task can take a moment to leave


def mounts_under(dirs: list[Path]) -> list[str]:
    prefixes = [str(d.resolve()) for d in dirs]
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        target = _unescape(line.split()[4])
        if any(target == p or target.startswith(p + "/") for p in prefixes):
            found.append(target)
    return found


def _unescape(path: str) -> str:
    return path.encode().decode("unicode_escape") if "\\" in path else path


def _unmount_under(dirs: list[Path]) -> None:
    """Deepest first; repeated, since the kubelet stacks bind mounts of its root dir on itself."""
    for _ in range(20):
        targets = mounts_under(dirs)
        if not targets:
            return
        for t in sorted(targets, key=lambda m: m.count("/"), reverse=True):
            if _run(["umount", t], check=False).returncode != 0:
                _run(["umount", "-l", t], check=False)


def _remove_chains(ipt: str) -> None:
    """Rules of other chains that jump to KUBE-*/CNI-*, then those chains; nothing else."""
    for table in IPTABLES_TABLES:
        listing = _run([ipt, "-w", "-t", table, "-S"], check=False)
        if listing.returncode != 0:
            continue
        ours = []
        for line in listing.stdout.splitlines():
            words = shlex.split(line)
            if len(words) >= 2 and words[0] == "-N" and words[1].startswith(OUR_CHAIN_PREFIXES):
                ours.append(words[1])
            elif (
                len(words) >= 2
                and words[0] == "-A"
                and not words[1].startswith(OUR_CHAIN_PREFIXES)
                and any(
                    w in ("-j", "-g") and i + 1 < len(words) and words[i + 1].startswith(OUR_CHAIN_PREFIXES)
                    for i, w in enumerate(words)
                )
            ):
                _run([ipt, "-w", "-t", table, "-D", *words[1:]], check=False)
        for chain in ours:
            _run([ipt, "-w", "-t", table, "-F", chain], check=False)
        for chain in ours:
            _run([ipt, "-w", "-t", table, "-X", chain], check=False)


def _oci_archive(ref: str, busybox: bytes) -> bytes:
    """An OCI image layout, as a tar, of one layer holding /busybox; deterministic."""

    def tar_bytes(files: dict[str, tuple[bytes, int]]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, (data, mode) in files.items():
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), mode, 0
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    layer_tar = tar_bytes({"busybox": (busybox, 0o755)})
    layer = gzip.compress(layer_tar, mtime=0)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": ["/busybox", "sleep", "infinity"]},
            "rootfs": {"type": "layers", "diff_ids": [_digest(layer_tar)]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _digest(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": _digest(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": _digest(manifest),
                    "size": len(manifest),
                    "annotations": {"org.opencontainers.image.ref.name": ref},
                }
            ],
        }
    ).encode()
    files = {"oci-layout": (b'{"imageLayoutVersion":"1.0.0"}', 0o644), "index.json": (index, 0o644)}
    for blob in (layer, config, manifest):
        files[f"blobs/sha256/{_digest(blob).split(':')[1]}"] = (blob, 0o644)
    return tar_bytes(files)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
