"""What the pod workers share: the agent's settings, API access, PID files and pod addresses."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pantau_dev.nodeagent.kube import Kube
from pantau_dev.procs import ProcessTable

HOST_IP = "127.0.0.1"


@dataclass(frozen=True)
class AgentConfig:
    kubeconfig: Path
    node_name: str
    api_host: str
    api_port: int
    ca_file: Path
    pid_dir: Path
    log_dir: Path
    work_dir: Path
    python_bin_dir: Path
    pod_ip_prefix: str
    backoff_base: float = 10.0
    backoff_cap: float = 300.0


class IpPool:
    """Pod addresses PREFIX10..PREFIX250, unique among the agent's live pods."""

    def __init__(self, prefix: str, first: int = 10, last: int = 250) -> None:
        self._free = [f"{prefix}{i}" for i in range(first, last + 1)]
        self._valid = set(self._free)
        self._owner: dict[str, str] = {}  # uid -> ip
        self._cursor = 0  # round robin: a just-freed address is reused last
        self._lock = threading.Lock()

    def allocate(self, uid: str, preferred: str | None = None) -> str:
        with self._lock:
            if uid in self._owner:
                return self._owner[uid]
            taken = set(self._owner.values())
            if preferred in self._valid and preferred not in taken:
                ip = preferred
            else:
                n = len(self._free)
                order = (self._free[(self._cursor + i) % n] for i in range(n))
                ip = next((a for a in order if a not in taken), "")
                if not ip:
                    raise RuntimeError("no free pod address left")
                self._cursor = (self._free.index(ip) + 1) % n
            self._owner[uid] = ip
            return ip

    def release(self, uid: str) -> None:
        with self._lock:
            self._owner.pop(uid, None)


@dataclass
class Context:
    config: AgentConfig
    kube: Kube
    table: ProcessTable
    ips: IpPool
    mount_ok: bool
    stopping: threading.Event = field(default_factory=threading.Event)
    on_worker_exit: Callable[[str], None] = field(default=lambda uid: None)
