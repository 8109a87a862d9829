"""Startup, readiness and liveness probes (httpGet, tcpSocket, exec) with Kubernetes' defaults
and thresholds. A probe's result flips only after successThreshold consecutive successes or
failureThreshold consecutive failures; before its first verdict readiness is "not ready",
liveness "alive" and startup "not started", as in the kubelet."""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from pantau_dev.nodeagent.kube import JSON

log = logging.getLogger(__name__)

USER_AGENT = "kube-probe/1.36"
# One client for all HTTP probes; no keep-alive (a kubelet closes each probe connection) and no
# proxies from the agent's environment. Certificates are not checked, as a kubelet does not.
_http = httpx.Client(
    verify=False,  # noqa: S501 - probes of loopback pods, like the kubelet's
    trust_env=False,
    follow_redirects=False,
    limits=httpx.Limits(max_keepalive_connections=0),
)


def _port(value: object, container: JSON) -> int:
    if isinstance(value, int):
        return value
    text = str(value)
    if text.isdigit():
        return int(text)
    for port in container.get("ports") or []:
        if port.get("name") == text:
            return int(port["containerPort"])
    raise ValueError(f"port {text!r} is not a named port of container {container.get('name')}")


def http_check(url: str, headers: Mapping[str, str], timeout: float) -> tuple[bool, str]:
    try:
        resp = _http.get(url, headers={"User-Agent": USER_AGENT, **headers}, timeout=timeout)
    except httpx.HTTPError as exc:
        return False, f"Get {url!r}: {exc}"
    if 200 <= resp.status_code < 400:
        return True, ""
    return False, f"HTTP probe failed with statuscode: {resp.status_code}"


def tcp_check(host: str, port: int, timeout: float) -> tuple[bool, str]:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, ""
    except OSError as exc:
        return False, f"dial tcp {host}:{port}: {exc}"


def exec_check(argv: Sequence[str], env: Mapping[str, str], cwd: Path, timeout: float) -> tuple[bool, str]:
    try:
        done = subprocess.run(
            list(argv), env=dict(env), cwd=cwd, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return False, f"command timed out after {timeout:.0f}s"
    except OSError as exc:
        return False, str(exc)
    if done.returncode == 0:
        return True, ""
    out = (done.stdout + done.stderr).decode(errors="replace").strip()
    return False, f"command failed with exit code {done.returncode}: {out[-300:]}"


@dataclass
class Target:
    """Where and how a probe reaches its container."""

    pod_ip: str
    container: JSON
    env: Mapping[str, str]
    cwd: Path
    wrap_exec: Callable[[Sequence[str]], list[str]]


@dataclass
class Prober:
    kind: str  # startup | readiness | liveness
    spec: JSON
    started: float  # monotonic start of the container run
    result: bool | None = None
    message: str = ""
    _successes: int = 0
    _failures: int = 0
    _next: float = field(default=0.0)

    def __post_init__(self) -> None:
        self._next = self.started + float(self.spec.get("initialDelaySeconds") or 0)
        if self.kind == "liveness":
            self.result = True

    @property
    def period(self) -> float:
        return float(self.spec.get("periodSeconds") or 10)

    @property
    def grace(self) -> int | None:
        """The probe's own terminationGracePeriodSeconds, if any."""
        value = self.spec.get("terminationGracePeriodSeconds")
        return None if value is None else int(value)

    def due(self, now: float) -> bool:
        return now >= self._next

    def run(self, target: Target) -> bool | None:
        """Probe once and return the (possibly unchanged) result."""
        ok, self.message = self._check(target)
        self._next = time.monotonic() + self.period
        if ok:
            self._failures, self._successes = 0, self._successes + 1
            if self._successes >= int(self.spec.get("successThreshold") or 1):
                self.result = True
        else:
            self._successes, self._failures = 0, self._failures + 1
            if self._failures >= int(self.spec.get("failureThreshold") or 3):
                self.result = False
        return self.result

    def _check(self, t: Target) -> tuple[bool, str]:
        timeout = float(self.spec.get("timeoutSeconds") or 1)
        try:
            if "httpGet" in self.spec:
                get = self.spec["httpGet"]
                host = get.get("host") or t.pod_ip
                path = str(get.get("path") or "/")
                path = path if path.startswith("/") else "/" + path
                scheme = str(get.get("scheme") or "HTTP").lower()
                url = f"{scheme}://{host}:{_port(get.get('port'), t.container)}{path}"
                headers = {h["name"]: h.get("value", "") for h in get.get("httpHeaders") or []}
                return http_check(url, headers, timeout)
            if "tcpSocket" in self.spec:
                sock = self.spec["tcpSocket"]
                return tcp_check(sock.get("host") or t.pod_ip, _port(sock.get("port"), t.container), timeout)
            if "exec" in self.spec:
                command = list(self.spec["exec"].get("command") or [])
                return exec_check(t.wrap_exec(command), t.env, t.cwd, timeout)
        except ValueError as exc:
            return False, str(exc)
        # grpc and anything newer: not implemented, so never the reason for a restart.
        return True, ""


def probers(container: JSON, started: float) -> dict[str, Prober]:
    found = {}
    for kind in ("startup", "readiness", "liveness"):
        spec = container.get(f"{kind}Probe")
        if spec:
            found[kind] = Prober(kind, spec, started)
    return found
