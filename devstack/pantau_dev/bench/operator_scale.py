"""`pantau bench operator`: the operator at scale on the real local stack, against the create rate.

One run, one stack, in this order:

1. Baseline: the Cameras are created with no operator running, in a namespace of their own, by the
   same client (the kubernetes package in `concurrency` threads with the admin's client certificate,
   connections opened before the clock starts) with the same watch open that the measured run uses.
   That namespace is then deleted, and gone, before the operator starts (else it would write
   SiteNotFound statuses there).
2. `pantau operator` starts as a real process (cluster-wide, as deployed); a thread samples the RSS
   of its process tree every 0.2 s.
3. Measured: the Sites, then the Cameras (round-robin over the Sites, fps 1..10, every tenth naming
   one of a few Secrets) are created as fast as in the baseline. The clock starts at the first
   create and stops when every Camera carries the `pantau.io/shard` label and `status.pod` and
   every Site's StatefulSet exists: the time to converge. Counting goes on until no Camera has
   changed for `settle` seconds, so writes after convergence (status once the pods are ready,
   resync passes) are counted too.

Writes are counted twice. The watch on Cameras counts every change the API server made to one
(each MODIFIED event is a write that changed something). The API server's own request counter
(`apiserver_request_total`, diffed from just before the operator starts) counts every write request
to Cameras, Sites and the pool objects, including writes that changed nothing; only the operator
(and Kopf inside it) applies, patches or updates those kinds during the run, the benchmark only
creates. Events are counted from the namespace's Events whose reporting component is the
operator's. The goal on writes is checked against the request count: what the API server serves.

CPU seconds of each process (stack, operator, benchmark) and of the whole machine are taken over the
measured run: on a shared machine the remainder, other processes, says how noisy the numbers are.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from rich.console import Console
from rich.table import Table

from pantau.builders import names
from pantau.contract import LABEL_SHARD
from pantau.models import GROUP, VERSION
from pantau_dev.bench import profile
from pantau_dev.bench.machine import cores, cpu_model, fmt
from pantau_dev.net import free_port
from pantau_dev.procs import ProcessRecord, ProcessTable, StackError, wait_for
from pantau_dev.settings import REPO_ROOT, DevSettings
from pantau_dev.stack import ADMIN_USER, DevStack

MB = 1e6  # goals and tables use decimal megabytes
API = f"{GROUP}/{VERSION}"
REPORTING_COMPONENT = (
    "pantau-operator"  # settings.posting.reporting_component in pantau.handlers.registration
)

# Issue goals: converge within 60 s, at most 2 API writes per Camera, operator RSS at most 300 MB.
GOAL_SECONDS = 60.0
GOAL_WRITES_PER_CAMERA = 2.0
GOAL_RSS_MB = 300.0

# Kinds the operator applies for a Site's pool (pantau.builders.pool), by their API resource.
POOL_RESOURCES = (
    "serviceaccounts",
    "services",
    "roles",
    "rolebindings",
    "poddisruptionbudgets",
    "statefulsets",
)
WRITE_VERBS = ("APPLY", "PATCH", "UPDATE", "CREATE", "DELETE", "DELETECOLLECTION")
SAMPLE_INTERVAL = 0.2  # seconds between RSS samples
TIMELINE_INTERVAL = 1.0  # seconds between timeline points in the report


@dataclass(frozen=True)
class ScaleConfig:
    cameras: int = 5000
    sites: int = 10
    concurrency: int = 32  # creates in flight, baseline and measured run alike
    secrets: int = 4  # every tenth Camera names one of these credentials Secrets
    resync_interval: float = 5.0  # PANTAU_RESYNC_INTERVAL of the operator
    debounce: float | None = None  # PANTAU_DEBOUNCE; None: the operator's default
    settle: float | None = None  # quiet seconds that end the counting; None: 2 x resync + 2
    timeout: float = 600.0  # seconds from the first create until the run gives up converging
    pool_min_pods: int = 1  # spec.ingest.minPods of each Site
    pool_max_pods: int = 16  # spec.ingest.maxPods of each Site
    pod_cameras: int = 64  # spec.ingest.podCapacity.cameras (500 Cameras -> 8 pods per Site)
    pod_fps: int = 400  # spec.ingest.podCapacity.fps
    profile: str | None = None  # write py-spy's collapsed stacks of the operator here (needs py-spy)

    def __post_init__(self) -> None:
        if self.cameras < 1 or self.sites < 1 or self.concurrency < 1 or self.secrets < 1:
            raise ValueError("cameras, sites, concurrency and secrets must be at least 1")
        if self.sites > self.cameras:
            raise ValueError("at most one Site per Camera")
        if self.resync_interval <= 0 or self.timeout <= 0 or (self.settle is not None and self.settle <= 0):
            raise ValueError("resync_interval, timeout and settle must be positive")
        if self.debounce is not None and self.debounce < 0:
            raise ValueError("debounce must not be negative")
        if not 0 <= self.pool_min_pods <= self.pool_max_pods:
            raise ValueError("the pool needs 0 <= pool_min_pods <= pool_max_pods")

    @property
    def settle_seconds(self) -> float:
        return self.settle if self.settle is not None else 2 * self.resync_interval + 2


@dataclass(frozen=True)
class CreateRun:
    """Creates of `objects` Cameras: from the first request sent to the last response."""

    objects: int
    seconds: float
    rate: float  # objects per second


@dataclass(frozen=True)
class Goal:
    name: str
    target: str
    value: float | None  # None: not reached at all (e.g. no convergence before the timeout)
    met: bool
    detail: str


@dataclass(frozen=True)
class Report:
    date: str
    machine: str
    cores: int
    config: dict[str, object]
    operator_env: dict[str, str]  # the PANTAU_* settings the operator ran with (liveness aside)
    cameras: int
    sites: int
    baseline: CreateRun  # no operator running
    created: CreateRun  # with the operator running; seconds from the first create (a Site)
    converged: bool
    converge_s: float | None  # first create -> every Camera assigned and every StatefulSet there
    lag_s: float | None  # convergence after the last create returned
    ratio: float | None  # converge_s / baseline.seconds
    settled_s: float | None  # first create -> last Camera change before `settle` quiet seconds
    assigned: int  # Cameras with the shard label and status.pod at the end
    pools: int  # StatefulSets of the Sites at the end
    camera_changes: int  # MODIFIED events on Cameras: writes that changed one
    camera_changes_at_converge: int
    changes_per_camera: dict[str, int]  # "n changes" -> Cameras with that many
    camera_writes: int  # write requests to Cameras (labels and status), changing or not
    site_writes: int
    pool_writes: int
    event_writes: int  # Events posted by the operator
    total_writes: int
    writes_per_camera: float  # camera_writes / cameras
    total_writes_per_camera: float  # total_writes / cameras
    requests: dict[str, int]  # "VERB resource[/subresource]" -> requests during the run
    failed_requests: dict[str, int]  # same, only answers >= 400
    server_ms: dict[str, float]  # same keys: mean time in the API server per request
    events: dict[str, int]  # reason -> Events the operator posted
    start_rss_mb: float  # once the operator is up, before the first create
    peak_rss_mb: float
    final_rss_mb: float
    cpu_s: dict[str, float]  # CPU seconds per process during the measured run
    machine_busy_s: float  # CPU seconds the whole machine was busy in the run (all processes)
    other_cpu_s: float  # of which not the stack's, the operator's or the benchmark's: noise
    steal_s: float  # CPU seconds the hypervisor took from this machine
    wall_s: float  # length of the measured run (first create -> end of counting)
    steady_writes: dict[str, int] | None  # operator writes in `settle` s after the quiet; None: not converged
    profile: dict[str, list[tuple[str, float]]]  # "self"/"cumulative" -> (function, % of samples)
    log: dict[str, Any]  # what the operator's log says: warnings, errors, first passes
    timeline: list[dict[str, float]]  # t, created, assigned, changes: once a second
    goals: list[Goal]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)


# ----- objects -----


def site_body(name: str, config: ScaleConfig) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "Site",
        "metadata": {"name": name},
        "spec": {
            "displayName": name.title(),
            "region": "Provinsi Bengkulu",
            # Fake nodes: pool pods become Running/Ready without running anything.
            "placement": {"nodeSelector": {"type": "kwok"}},
            "ingest": {
                "minPods": config.pool_min_pods,
                "maxPods": config.pool_max_pods,
                "podCapacity": {"cameras": config.pod_cameras, "fps": config.pod_fps},
            },
        },
    }


def site_names(config: ScaleConfig) -> list[str]:
    return [f"site-{i:02d}" for i in range(config.sites)]


def camera_bodies(config: ScaleConfig) -> list[dict[str, Any]]:
    """Round-robin over the Sites, fps 1..10, every tenth with a credentials Secret."""
    sites = site_names(config)
    bodies = []
    for i in range(config.cameras):
        name = f"cam-{i:05d}"
        source: dict[str, Any] = {
            "url": f"rtsp://10.20.{i // 250}.{i % 250 + 1}:554/stream1",
            "protocol": "rtsp",
        }
        if i % 10 == 0:
            source["credentialsSecretRef"] = {"name": f"creds-{(i // 10) % config.secrets}"}
        bodies.append(
            {
                "apiVersion": API,
                "kind": "Camera",
                "metadata": {"name": name},
                "spec": {
                    "siteRef": {"name": sites[i % len(sites)]},
                    "source": source,
                    "sampling": {"fps": 1 + i % 10},
                },
            }
        )
    return bodies


def secret_body(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "stringData": {"username": "viewer", "password": "not-a-real-password"},
    }


def _path(plural: str, namespace: str) -> str:
    prefix = "/api/v1" if plural in ("secrets", "events", "pods") else f"/apis/{API}"
    if plural == "statefulsets":
        prefix = "/apis/apps/v1"
    return f"{prefix}/namespaces/{namespace}/{plural}"


# ----- the API server -----


def _ssl_context(stack: DevStack) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(stack.pki.ca_cert))
    ctx.load_cert_chain(str(stack.pki.cert(ADMIN_USER)), str(stack.pki.key(ADMIN_USER)))
    return ctx


def http_client(stack: DevStack, read_timeout: float = 60.0) -> httpx.Client:
    """For the few plain requests and the watches (a read timeout lets a watch thread stop)."""
    timeout = httpx.Timeout(60.0, read=read_timeout)
    return httpx.Client(base_url=stack.status().api_server, verify=_ssl_context(stack), timeout=timeout)


def kube_client(stack: DevStack, connections: int) -> k8s_client.ApiClient:
    """The creating client: the kubernetes package in threads, one pooled connection per thread.

    Measured against httpx's async client on this 2-core machine (1,000-2,000 Cameras, best
    concurrency of each): 150-270 against 110-160 Cameras/s, at less client CPU per create."""
    cfg = k8s_client.Configuration()
    k8s_config.load_kube_config(config_file=str(stack.kubeconfig), client_configuration=cfg)  # type: ignore[no-untyped-call]
    cfg.connection_pool_maxsize = connections
    return k8s_client.ApiClient(cfg)


def _check(resp: httpx.Response, what: str, ok: Iterable[int] = (200, 201)) -> dict[str, Any]:
    if resp.status_code not in tuple(ok):
        raise StackError(f"{what}: {resp.status_code} {resp.text[:500]}")
    return resp.json() if resp.content else {}


class Creator:
    """Creates objects with `concurrency` requests in flight (threads of the kubernetes client)."""

    def __init__(self, api: k8s_client.ApiClient, concurrency: int) -> None:
        self.custom = k8s_client.CustomObjectsApi(api)
        self.concurrency = concurrency
        self.created = 0  # objects created so far, for the timeline
        self._lock = threading.Lock()

    def warm_up(self, namespace: str) -> None:
        """Open the connections (TLS handshakes) before anything is timed."""
        with ThreadPoolExecutor(self.concurrency) as pool:
            list(
                pool.map(
                    lambda _: self.custom.list_namespaced_custom_object(
                        GROUP, VERSION, namespace, "cameras", limit=1
                    ),
                    range(self.concurrency * 2),
                )
            )

    def create_all(
        self, namespace: str, plural: str, bodies: Sequence[dict[str, Any]]
    ) -> tuple[float, float]:
        """Create every body; (first request sent, last answer received), monotonic."""
        last = 0.0

        def one(body: dict[str, Any]) -> None:
            nonlocal last
            for attempt in range(5):
                try:
                    self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)
                    break
                except k8s_client.ApiException as exc:
                    if attempt == 4 or not (exc.status == 429 or exc.status >= 500):
                        name = body["metadata"]["name"]
                        raise StackError(f"creating {plural}/{name}: {exc.status} {exc.reason}") from exc
                    time.sleep(0.2 * (attempt + 1))
            done = time.monotonic()
            with self._lock:
                last = max(last, done)
                self.created += 1

        start = time.monotonic()
        with ThreadPoolExecutor(self.concurrency) as pool:
            list(pool.map(one, bodies))
        return start, last


def create_namespace(http: httpx.Client, name: str) -> None:
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    _check(http.post("/api/v1/namespaces", json=body), f"creating namespace {name}", ok=(201,))


def delete_namespace(http: httpx.Client, name: str, wait: float | None) -> None:
    """Delete the Cameras in one request (quicker than the namespace controller's way), then the
    namespace; with `wait`, until it is gone."""
    http.delete(_path("cameras", name), timeout=300)
    http.delete(f"/api/v1/namespaces/{name}")
    if wait is None:
        return
    deadline = time.monotonic() + wait
    while http.get(f"/api/v1/namespaces/{name}").status_code != 404:
        if time.monotonic() > deadline:
            raise StackError(f"namespace {name} not gone after {wait:.0f} s")
        time.sleep(0.5)


RequestKey = tuple[str, str, str, str, str]  # verb, group, resource, subresource, code


@dataclass(frozen=True)
class ApiCounters:
    """The API server's own counters of write requests: apiserver_request_total, and the sum and
    count of apiserver_request_duration_seconds (time in the server, by verb and resource)."""

    requests: dict[RequestKey, float]
    seconds: dict[tuple[str, str, str, str], tuple[float, float]]  # (sum, count)


def api_counters(http: httpx.Client) -> ApiCounters:
    resp = http.get("/metrics")
    if resp.status_code != 200:
        raise StackError(f"reading the API server's metrics: {resp.status_code}")
    requests: dict[RequestKey, float] = {}
    seconds: dict[tuple[str, str, str, str], tuple[float, float]] = {}
    for line in resp.text.splitlines():
        name, brace, rest = line.partition("{")
        if not brace or name not in (
            "apiserver_request_total",
            "apiserver_request_duration_seconds_sum",
            "apiserver_request_duration_seconds_count",
        ):
            continue
        labels_text, _, value = rest.rpartition(" ")
        labels = dict(re.findall(r'(\w+)="([^"]*)"', labels_text))
        if labels.get("verb") not in WRITE_VERBS:
            continue
        what = (
            labels["verb"],
            labels.get("group", ""),
            labels.get("resource", ""),
            labels.get("subresource", ""),
        )
        if name == "apiserver_request_total":
            key = (*what, labels.get("code", ""))
            requests[key] = requests.get(key, 0.0) + float(value)
        else:
            total, count = seconds.get(what, (0.0, 0.0))
            seconds[what] = (
                (total + float(value), count) if name.endswith("_sum") else (total, count + float(value))
            )
    return ApiCounters(requests, seconds)


def _ours(verb: str, group: str, resource: str) -> bool:
    """Whether a write is the operator's. The benchmark itself only creates (POST) Cameras, Sites
    and Secrets; the controllers update StatefulSet and PDB status and create pods and Events; the
    operator applies (and Kopf patches). So: any write but CREATE on Sites and Cameras, and APPLY or
    PATCH on the pool's kinds."""
    return (group == GROUP and resource in ("cameras", "sites") and verb != "CREATE") or (
        resource in POOL_RESOURCES and verb in ("APPLY", "PATCH")
    )


def _label(verb: str, resource: str, sub: str) -> str:
    return f"{verb} {resource}" + (f"/{sub}" if sub else "")


def operator_requests(
    before: ApiCounters, after: ApiCounters
) -> tuple[Counter[str], Counter[str], dict[str, float]]:
    """The operator's write requests between two snapshots: all, the failed ones, and the mean
    time the API server took for each (ms)."""
    total: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    for key, value in after.requests.items():
        verb, group, resource, sub, code = key
        n = round(value - before.requests.get(key, 0.0))
        if n <= 0 or not _ours(verb, group, resource):
            continue
        total[_label(verb, resource, sub)] += n
        if code.isdigit() and int(code) >= 400:
            failed[_label(verb, resource, sub)] += n
    server_ms: dict[str, float] = {}
    for what, (seconds, count) in after.seconds.items():
        seconds0, count0 = before.seconds.get(what, (0.0, 0.0))
        verb, group, resource, sub = what
        if count > count0 and _ours(verb, group, resource):
            server_ms[_label(verb, resource, sub)] = round(1000 * (seconds - seconds0) / (count - count0), 1)
    return total, failed, server_ms


def steady_state_writes(http: httpx.Client, before: ApiCounters, seconds: float) -> dict[str, int]:
    """The operator's write requests in `seconds` more after the run, by kind: at steady state there
    are none (resync passes find nothing to change)."""
    time.sleep(seconds)
    return dict(operator_requests(before, api_counters(http))[0].most_common())


def machine_cpu() -> tuple[float, float]:
    """CPU seconds the whole machine was busy so far, and those the hypervisor gave to others."""
    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    return busy, getattr(t, "steal", 0.0)


# ----- the watch -----


class Watch:
    """A watch on one collection, in a thread: counts its events and keeps, per object, whether
    `done(object)` holds; `complete_at` is when that became true of `target` objects."""

    def __init__(
        self, stack: DevStack, path: str, target: int, done: Callable[[dict[str, Any]], bool]
    ) -> None:
        self.http = http_client(stack, read_timeout=2.0)
        self.path, self.target, self.done = path, target, done
        self.added = 0
        self.modified: Counter[str] = Counter()
        self.count_done = 0
        self.complete_at: float | None = None
        self.last_change = 0.0  # monotonic time of the last event on an object
        self.changed = threading.Event()
        self.error: BaseException | None = None
        self._done: dict[str, bool] = {}
        self._lock = threading.Lock()
        self._started = threading.Event()
        self._stop = threading.Event()
        self._rv = ""
        self._thread = threading.Thread(target=self._run, name=f"watch {path}", daemon=True)

    def start(self) -> None:
        listing = _check(self.http.get(self.path, params={"limit": "1"}), f"listing {self.path}")
        self._rv = listing["metadata"]["resourceVersion"]
        self._thread.start()
        if not self._started.wait(30):
            raise StackError(f"watch {self.path} did not start")
        self.raise_error()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.http.close()

    def raise_error(self) -> None:
        if self.error is not None:
            raise StackError(f"watch {self.path} failed: {self.error}") from self.error

    def names(self) -> set[str]:
        with self._lock:
            return set(self._done)

    def changes(self) -> int:
        with self._lock:
            return sum(self.modified.values())

    def _run(self) -> None:
        try:
            while not self._stop.is_set():  # a read timeout (or the server) ends a watch: resume it
                params = {"watch": "true", "resourceVersion": self._rv, "allowWatchBookmarks": "true"}
                with (
                    contextlib.suppress(httpx.ReadTimeout),
                    self.http.stream("GET", self.path, params=params) as resp,
                ):
                    if resp.status_code != 200:
                        raise StackError(f"{resp.status_code} {resp.read()[:300]!r}")
                    self._started.set()
                    for line in resp.iter_lines():
                        if line:
                            self._handle(json.loads(line))
                        if self._stop.is_set():
                            return
        except BaseException as exc:
            self.error = exc
            self._started.set()
            self.changed.set()

    def _handle(self, event: dict[str, Any]) -> None:
        kind, obj = event["type"], event["object"]
        if kind == "ERROR":
            raise StackError(str(obj))
        self._rv = obj["metadata"]["resourceVersion"]
        if kind == "BOOKMARK":
            return
        name = obj["metadata"]["name"]
        now = time.monotonic()
        with self._lock:
            was = self._done.pop(name, False)
            done = kind != "DELETED" and self.done(obj)
            if kind != "DELETED":
                self._done[name] = done
            self.count_done += int(done) - int(was)
            if kind == "ADDED":
                self.added += 1
            elif kind == "MODIFIED":
                self.modified[name] += 1
            if self.count_done >= self.target:
                self.complete_at = self.complete_at or now
            else:
                self.complete_at = None
            self.last_change = now
        self.changed.set()


def _assigned(obj: dict[str, Any]) -> bool:
    labels = obj["metadata"].get("labels") or {}
    return bool(labels.get(LABEL_SHARD)) and bool((obj.get("status") or {}).get("pod"))


# ----- the operator process -----


class OperatorProcess:
    """`pantau operator` as a real process, with its RSS sampled by a thread."""

    def __init__(self, stack: DevStack, config: ScaleConfig, run_id: str) -> None:
        self.dir = stack.state / f"bench-operator-{run_id}"
        self.table = ProcessTable(self.dir / "pids", self.dir / "logs")
        self.port = free_port()
        self.env = {
            **os.environ,
            "KUBECONFIG": str(stack.kubeconfig),
            "PANTAU_RESYNC_INTERVAL": str(config.resync_interval),
            "PANTAU_LIVENESS_HOST": "127.0.0.1",
            "PANTAU_LIVENESS_PORT": str(self.port),
        }
        if config.debounce is not None:
            self.env["PANTAU_DEBOUNCE"] = str(config.debounce)
        self.record: ProcessRecord | None = None
        self.profile_path = Path(config.profile) if config.profile else None
        self.profiler: profile.Profiler | None = None
        self.peak_rss = 0
        self.last_rss = 0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, name="operator-rss", daemon=True)

    @property
    def log(self) -> Path:
        return self.dir / "logs" / "operator.log"

    def start(self) -> None:
        pantau = str(Path(sys.executable).parent / "pantau")
        self.record = self.table.spawn("operator", [pantau, "operator"], env=self.env)
        self._sampler.start()
        wait_for(self._healthy, timeout=60, what="operator /healthz", record=self.record)
        if self.profile_path is not None:
            self.profiler = profile.Profiler(self.record.pid, self.profile_path)

    def stop_profile(self) -> dict[str, list[tuple[str, float]]]:
        """Stop recording (if it was) and summarise the profile."""
        if self.profiler is not None:
            self.profiler.stop()
            self.profiler = None
        return profile.top(self.profile_path) if self.profile_path else {}

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            proc = self.record.process() if self.record else None
            if proc is None:
                continue
            rss = _tree(proc, lambda p: p.memory_info().rss)
            self.last_rss = rss
            self.peak_rss = max(self.peak_rss, rss)

    def cpu_seconds(self) -> float:
        proc = self.record.process() if self.record else None
        return _tree(proc, _cpu) if proc else 0.0

    def stop(self) -> None:
        self._stop.set()
        self.stop_profile()
        self.table.stop("operator", grace=15)
        if self._sampler.is_alive():
            self._sampler.join(5)


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


def _tree(proc: psutil.Process, measure: Callable[[psutil.Process], float]) -> Any:
    total: Any = 0
    with contextlib.suppress(psutil.Error):
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += measure(p)
    return total


def stack_cpu(stack: DevStack) -> dict[str, float]:
    """CPU seconds so far of each process of the stack and of this one."""
    found = {"benchmark": _cpu(psutil.Process())}
    for rec in stack.procs.records():
        proc = rec.process()
        if proc is not None:
            found[rec.name] = _tree(proc, _cpu)
    return found


def read_log(path: Path) -> dict[str, Any]:
    """Warnings and errors of the operator's log, grouped by their message without names."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {"path": str(path), "lines": 0}
    kinds: Counter[str] = Counter()
    for line in lines:
        level = next((lv for lv in ("ERROR", "WARNING", "Traceback") if lv in line), None)
        if level is None:
            continue
        # Keep the message's shape: names, numbers and timestamps vary from line to line.
        text = re.sub(r"^\[[^\]]*\]\s*", "", line)
        text = re.sub(r"\b[\w.-]+/[\w.-]+\b", "<ns/name>", text)
        text = re.sub(r"\d+(\.\d+)?", "N", text)
        kinds[text[:200]] += 1
    return {
        "path": str(path),
        "lines": len(lines),
        "warnings": sum(1 for line in lines if "WARNING" in line),
        "errors": sum(1 for line in lines if "ERROR" in line or "Traceback" in line),
        "first_passes": sum(1 for line in lines if "first pass done" in line),
        "top": dict(kinds.most_common(8)),
    }


# ----- the run -----


def apply_crds(stack: DevStack) -> None:
    kubectl = [str(stack.settings.bin_dir("k8s") / "kubectl"), f"--kubeconfig={stack.kubeconfig}"]
    for f in sorted((REPO_ROOT / "crds").glob("*.yaml")):
        subprocess.run([*kubectl, "apply", "--server-side", "-f", str(f)], check=True, capture_output=True)
    subprocess.run(
        [
            *kubectl,
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/sites.pantau.io",
            "crd/cameras.pantau.io",
        ],
        check=True,
        capture_output=True,
    )


def run(
    stack: DevStack,
    config: ScaleConfig,
    progress: Callable[[str], None] = lambda _: None,
    cleanup: bool = True,
) -> Report:
    """The benchmark on a running stack (its kwok nodes host the pools).

    With `cleanup`, its namespaces are deleted before the operator stops (which removes its
    finalizers from the Sites); without, what it made stays (for a stack about to be torn down)."""
    progress("applying the CRDs")
    apply_crds(stack)
    token = uuid.uuid4().hex[:6]
    base_ns, ns = f"bench-base-{token}", f"bench-scale-{token}"
    cameras = camera_bodies(config)
    sites = site_names(config)
    operator = OperatorProcess(stack, config, token)
    http = http_client(stack)
    api = kube_client(stack, config.concurrency)
    creator = Creator(api, config.concurrency)
    watches: list[Watch] = []
    try:
        # ----- 1. baseline: the create rate with no operator, the same watch open -----
        progress(f"baseline: creating {config.cameras} Cameras with no operator running")
        create_namespace(http, base_ns)
        creator.warm_up(base_ns)
        watches.append(Watch(stack, _path("cameras", base_ns), config.cameras, lambda _: True))
        watches[-1].start()
        t0, t1 = creator.create_all(base_ns, "cameras", cameras)
        watches.pop().stop()
        baseline = CreateRun(config.cameras, t1 - t0, config.cameras / (t1 - t0))
        progress(f"baseline: {baseline.rate:,.0f} Cameras/s; deleting its namespace")
        delete_namespace(http, base_ns, wait=300)

        # ----- 2. the operator -----
        create_namespace(http, ns)
        for i in range(config.secrets):  # setup, not timed
            _check(
                http.post(_path("secrets", ns), json=secret_body(f"creds-{i}")), "creating a Secret", (201,)
            )
        before = api_counters(http)
        progress("starting the operator")
        operator.start()

        # ----- 3. measured: Sites, then Cameras, watched -----
        cams = Watch(stack, _path("cameras", ns), config.cameras, _assigned)
        pools = Watch(stack, _path("statefulsets", ns), config.sites, lambda _: True)
        watches += [cams, pools]
        cams.start()
        pools.start()
        creator.warm_up(ns)
        cpu_before = stack_cpu(stack) | {"operator": operator.cpu_seconds()}
        machine_before = machine_cpu()
        progress(f"creating {config.sites} Sites and {config.cameras} Cameras")
        start_rss = operator.last_rss
        creator.created = 0
        timeline = Timeline(creator, cams)
        first, _ = creator.create_all(ns, "sites", [site_body(n, config) for n in sites])
        creator.created = 0  # the timeline counts Cameras
        _, last_create = creator.create_all(ns, "cameras", cameras)
        created = CreateRun(config.cameras, last_create - first, config.cameras / (last_create - first))
        progress(f"created in {created.seconds:.1f} s; waiting for every Camera to be assigned")

        deadline = first + config.timeout
        converged_at: float | None = None
        changes_at_converge = 0
        while time.monotonic() < deadline:
            cams.raise_error()
            pools.raise_error()
            c, p = cams.complete_at, pools.complete_at
            if c is not None and p is not None:
                converged_at = max(c, p)
                changes_at_converge = cams.changes()
                break
            cams.changed.wait(0.5)
            cams.changed.clear()

        settle = config.settle_seconds
        if converged_at is not None:
            progress(f"converged after {converged_at - first:.1f} s; counting until {settle:g} s quiet")
            while (quiet_for := time.monotonic() - cams.last_change) < settle and time.monotonic() < deadline:
                cams.changed.wait(settle - quiet_for)
                cams.changed.clear()
        else:
            progress(f"not converged within {config.timeout:g} s")
        end = time.monotonic()
        quiet = converged_at is not None and end - cams.last_change >= settle
        timeline.stop()
        cpu_after = stack_cpu(stack) | {"operator": operator.cpu_seconds()}
        machine_after = machine_cpu()
        after = api_counters(http)
        steady_writes = steady_state_writes(http, after, settle) if converged_at is not None else None
        top = operator.stop_profile()
        log = read_log(operator.log)
        event_list = _check(http.get(_path("events", ns)), "listing Events")
    finally:
        for w in watches:
            w.stop()
        if cleanup:
            progress("deleting the benchmark's namespaces")
            for name in (base_ns, ns):
                with contextlib.suppress(httpx.HTTPError, StackError):
                    delete_namespace(http, name, wait=120)
        operator.stop()
        http.close()
        api.close()  # type: ignore[no-untyped-call]

    requests, failed, server_ms = operator_requests(before, after)
    events: Counter[str] = Counter()
    for e in event_list.get("items", []):
        component = e.get("reportingComponent") or (e.get("source") or {}).get("component")
        if component == REPORTING_COMPONENT:
            events[e.get("reason", "")] += int(e.get("count") or 1)
    camera_writes = sum(n for k, n in requests.items() if k.split()[1].startswith("cameras"))
    site_writes = sum(n for k, n in requests.items() if k.split()[1].startswith("sites"))
    pool_writes = sum(requests.values()) - camera_writes - site_writes
    event_writes = sum(events.values())
    total = camera_writes + site_writes + pool_writes + event_writes
    per_camera = Counter(cams.modified[n["metadata"]["name"]] for n in cameras)
    converge_s = converged_at - first if converged_at is not None else None
    cpu_s = {k: round(cpu_after[k] - cpu_before.get(k, 0.0), 2) for k in sorted(cpu_after)}
    report = Report(
        date=datetime.now(UTC).isoformat(timespec="seconds"),
        machine=f"{cpu_model()}, {cores()} cores, {platform.system()} {platform.release()}",
        cores=cores(),
        config=asdict(config) | {"settle_s": config.settle_seconds},
        operator_env={
            k: v for k, v in sorted(operator.env.items()) if k.startswith("PANTAU_") and "LIVENESS" not in k
        },
        cameras=config.cameras,
        sites=config.sites,
        baseline=baseline,
        created=created,
        converged=converged_at is not None,
        converge_s=converge_s,
        lag_s=converged_at - last_create if converged_at is not None else None,
        ratio=converge_s / baseline.seconds if converge_s is not None else None,
        settled_s=cams.last_change - first if quiet else None,
        assigned=cams.count_done,
        pools=len({names.pool_name(s) for s in sites} & pools.names()),
        camera_changes=cams.changes(),
        camera_changes_at_converge=changes_at_converge,
        changes_per_camera={str(k): v for k, v in sorted(per_camera.items())},
        camera_writes=camera_writes,
        site_writes=site_writes,
        pool_writes=pool_writes,
        event_writes=event_writes,
        total_writes=total,
        writes_per_camera=camera_writes / config.cameras,
        total_writes_per_camera=total / config.cameras,
        requests=dict(requests.most_common()),
        failed_requests=dict(failed.most_common()),
        server_ms=server_ms,
        events=dict(events.most_common()),
        start_rss_mb=start_rss / MB,
        peak_rss_mb=operator.peak_rss / MB,
        final_rss_mb=operator.last_rss / MB,
        cpu_s=cpu_s,
        machine_busy_s=round(machine_after[0] - machine_before[0], 1),
        other_cpu_s=round(max(0.0, machine_after[0] - machine_before[0] - sum(cpu_s.values())), 1),
        steal_s=round(machine_after[1] - machine_before[1], 1),
        wall_s=end - first,
        steady_writes=steady_writes,
        profile=top,
        log=log,
        timeline=timeline.points,
        goals=[],
    )
    return _with_goals(report)


class Timeline:
    """Once a second: Cameras created, assigned, and changes seen so far (in the JSON report)."""

    def __init__(self, creator: Creator, cams: Watch) -> None:
        self.points: list[dict[str, float]] = []
        self._creator, self._cams = creator, cams
        self._start = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="timeline", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self.points.append(
                {
                    "t": round(time.monotonic() - self._start, 1),
                    "created": self._creator.created,
                    "assigned": self._cams.count_done,
                    "changes": self._cams.changes(),
                }
            )
            if self._stop.wait(TIMELINE_INTERVAL):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _with_goals(report: Report) -> Report:
    goals = [
        Goal(
            "time to converge",
            f"<= {GOAL_SECONDS:g} s",
            report.converge_s,
            report.converge_s is not None and report.converge_s <= GOAL_SECONDS,
            f"baseline create of {report.cameras} Cameras: {report.baseline.seconds:.1f} s"
            + (f", ratio {report.ratio:.2f}" if report.ratio is not None else ", not converged"),
        ),
        Goal(
            "API writes per Camera",
            f"<= {GOAL_WRITES_PER_CAMERA:g}",
            report.writes_per_camera,
            report.writes_per_camera <= GOAL_WRITES_PER_CAMERA,
            f"{report.camera_writes} write requests to Cameras ({report.camera_changes} changed one); "
            f"{report.total_writes_per_camera:.2f} incl. Sites, pools and Events",
        ),
        Goal(
            "operator peak RSS",
            f"<= {GOAL_RSS_MB:g} MB",
            report.peak_rss_mb,
            report.peak_rss_mb <= GOAL_RSS_MB,
            f"process and children, sampled every {SAMPLE_INTERVAL:g} s",
        ),
    ]
    return replace(report, goals=goals)


def run_fresh(
    config: ScaleConfig,
    progress: Callable[[str], None] = lambda _: None,
    keep_logs: Path | None = None,
) -> Report:
    """Start a throwaway stack (no Triton, no Jaeger, 2 fake nodes), run, and stop it again."""
    with tempfile.TemporaryDirectory(prefix="pantau-bench-operator-") as tmp:
        stack = DevStack(
            DevSettings(
                state_dir=Path(tmp), with_triton=False, with_jaeger=False, kwok_nodes=2, real_node=False
            )
        )
        try:
            progress("starting a throwaway local stack")
            stack.up()
            return run(stack, config, progress, cleanup=False)
        finally:
            stack.down()
            if keep_logs is not None:
                keep_logs.mkdir(parents=True, exist_ok=True)
                for log in [
                    *stack.settings.log_dir.glob("*.log"),
                    *Path(tmp).glob("bench-operator-*/logs/*.log"),
                ]:
                    shutil.copy2(log, keep_logs / log.name)


# ----- output -----


def _rows(report: Report) -> Iterator[tuple[str, str]]:
    r = report
    yield "cameras / sites", f"{r.cameras:,} / {r.sites}"
    yield (
        "baseline create rate, no operator (Cameras/s)",
        f"{fmt(r.baseline.rate)} ({fmt(r.baseline.seconds)} s)",
    )
    yield "create rate with the operator (Cameras/s)", f"{fmt(r.created.rate)} ({fmt(r.created.seconds)} s)"
    yield "time to converge (s)", fmt(r.converge_s) if r.converged else f"not within {r.config['timeout']} s"
    yield "  lag after the last create (s)", fmt(r.lag_s)
    yield "  ratio: converge / baseline create time", fmt(r.ratio, 2)
    yield "assigned Cameras / pools", f"{r.assigned:,} / {r.pools}"
    yield "writes per Camera: to Cameras", f"{fmt(r.writes_per_camera, 2)} ({r.camera_writes:,} requests)"
    yield (
        "  changes to Cameras (watch: MODIFIED)",
        f"{r.camera_changes:,} ({r.camera_changes_at_converge:,} by convergence)",
    )
    yield (
        "  incl. Sites, pool objects, Events",
        (
            f"{fmt(r.total_writes_per_camera, 2)} ({r.total_writes:,} = {r.camera_writes:,}"
            f" + {r.site_writes:,} + {r.pool_writes:,} + {r.event_writes:,})"
        ),
    )
    steady = r.steady_writes
    yield (
        "writes at steady state",
        "-"
        if steady is None
        else f"{sum(steady.values()):,} in {r.config['settle_s']} s more {steady or ''}",
    )
    yield (
        "operator peak RSS (MB)",
        (
            f"{fmt(r.peak_rss_mb)} (before the first create {fmt(r.start_rss_mb)},"
            f" at the end {fmt(r.final_rss_mb)})"
        ),
    )
    ours = sum(r.cpu_s.values())
    yield (
        "CPU seconds in the run: stack, operator, benchmark",
        f"{fmt(ours)} of {fmt(r.wall_s * r.cores)} ({r.cores} cores x {fmt(r.wall_s)} s)",
    )
    yield (
        "  other processes on the machine (noise)",
        f"{fmt(r.other_cpu_s)} (hypervisor steal {fmt(r.steal_s)})",
    )


def render(report: Report, console: Console) -> None:
    console.print(f"[bold]pantau bench operator[/bold]  {report.date}  {report.machine}")
    settings = " ".join(f"{k}={v}" for k, v in report.operator_env.items())
    console.print(
        f"{report.cameras:,} Cameras over {report.sites} Sites, {report.config['concurrency']} creates in "
        f"flight; operator: {settings}"
    )
    table = Table(title="Operator scale (first create -> every Camera assigned, every pool there)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in _rows(report):
        table.add_row(name, value)
    console.print(table)

    writes = Table(title="Write requests during the run (API server's counter) and Events")
    writes.add_column("request")
    writes.add_column("count", justify="right")
    writes.add_column("failed", justify="right")
    writes.add_column("ms in the API server", justify="right")
    for name, n in report.requests.items():
        writes.add_row(
            name, f"{n:,}", f"{report.failed_requests.get(name, 0):,}", fmt(report.server_ms.get(name))
        )
    for reason, n in report.events.items():
        writes.add_row(f"Event {reason}", f"{n:,}", "", "")
    console.print(writes)

    cpu = Table(title="CPU seconds per process during the run")
    for name in report.cpu_s:
        cpu.add_column(name, justify="right")
    cpu.add_row(*(fmt(v) for v in report.cpu_s.values()))
    console.print(cpu)
    _render_profile(report, console)

    summary = Table(title="Goals")
    for column in ("goal", "target", "reached", "", "detail"):
        summary.add_column(column)
    for g in report.goals:
        mark = "[green]met[/green]" if g.met else "[red]not met[/red]"
        summary.add_row(g.name, g.target, fmt(g.value, 2), mark, g.detail)
    console.print(summary)


def _render_profile(report: Report, console: Console) -> None:
    if not report.profile.get("self"):
        return
    table = Table(title=f"Operator profile (py-spy, {report.config['profile']}): % of samples")
    table.add_column("self")
    table.add_column("%", justify="right")
    table.add_column("cumulative")
    table.add_column("%", justify="right")
    rows = zip(report.profile["self"], report.profile["cumulative"], strict=False)
    for (own, own_pct), (cum, cum_pct) in rows:
        table.add_row(own, fmt(own_pct), cum, fmt(cum_pct))
    console.print(table)
