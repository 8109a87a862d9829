"""A district on a thin WAN link, on the real stack: the Site's ingest pod on the node (its own network
namespace, made by the CNI), Triton and the event receiver in a "data centre" network namespace made
here, joined to the host by a veth pair whose uplink direction is shaped (tbf), made lossy (nftables
`numgen random`) and delayed (the fault proxy, a userspace relay in the data centre, 100 ms each way);
the outage is the link set down. Used by tests/test_remote_site.py and `pantau bench link`.

The pod reaches the data centre through the host, which routes the pod network into the veth: so every
byte the pod sends to Triton or the sinks crosses the shaped link, and nothing else does (the API server,
the cameras and the operator's /status polls stay on the node).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import httpx
from rich.console import Console
from rich.table import Table

from pantau.contract import INGEST_PORT, STATUS_PATH
from pantau_dev.bench.charted import Charted
from pantau_dev.cameras import RtspCameraServer, RtspMount
from pantau_dev.chart import Release, Tools, local_values
from pantau_dev.faultproxy import FaultProxy, ModeRequest
from pantau_dev.net import free_port
from pantau_dev.procs import ProcessTable, StackError, wait_for
from pantau_dev.receiver import ReceiverProcess
from pantau_dev.stack import DevStack
from pantau_dev.wan import Wan, WanCounters

NAMESPACE: Final = "pantau-district"
PREFIX: Final = "pdist"  # names of the WAN's namespace, veth and nftables table
DELAY_MS: Final = 100  # each way: 200 ms added to a round trip, as a 200 ms netem delay on one side
# Ports inside the data centre's namespace (its own, so fixed numbers cannot clash).
TRITON_HTTP, TRITON_GRPC, TRITON_METRICS = 8000, 8001, 8002
RECEIVER: Final = 9000
TRITON_RELAY, RECEIVER_RELAY = 18001, 19000
RELAY_CONTROL: Final = (18101, 19101)


@dataclass(frozen=True)
class PodFigures:
    """One pod's /status, summed over its cameras."""

    processed: int  # analysed, by Triton or the fallback
    local: int  # analysed by the fallback
    dropped: dict[str, int]
    sink_published: int
    sink_delivered: int
    sink_pending: int
    sink_dropped: int
    uplink: list[dict[str, Any]]  # each camera's plan (None-free)
    fps: float

    @property
    def by_triton(self) -> int:
        return self.processed - self.local


class LinkStack(Charted):
    """The stack, Pantau installed with its chart (Triton address: the data centre's relay), the WAN,
    Triton and the receiver in the data centre, and an RTSP camera on the node."""

    def __init__(
        self,
        stack: DevStack,
        work: Path,
        footage: Path,
        progress: Callable[[str], None],
        model_download: tuple[str, str] | None = None,
    ) -> None:
        self.stack, self.work, self.footage, self.progress = stack, work, footage, progress
        self.model_download = model_download
        self.info = stack.status()
        tools = Tools(stack.settings, stack.kubeconfig)
        super().__init__(
            tools, Release(tools, name="district", namespace="pantau-district-system"), NAMESPACE
        )
        self.table = ProcessTable(work / "pids", work / "logs")
        self.wan = Wan(PREFIX)
        self.camera: RtspCameraServer | None = None
        self.receiver: ReceiverProcess | None = None
        self.relays: list[FaultProxy] = []

    # ----- lifecycle -----

    def up(self) -> None:
        Wan.cleanup(PREFIX)  # what a crashed run may have left
        self.wan.up()
        dc = self.wan.dc_address
        self.progress("starting Triton and the event receiver in the data centre namespace ...")
        argv = self.stack.triton_argv("0.0.0.0", TRITON_HTTP, TRITON_GRPC, TRITON_METRICS)
        self.table.spawn("dc-triton", argv, env=self.stack.triton_env(), netns=self.wan.netns)
        wait_for(
            lambda: _ok(f"http://{dc}:{TRITON_HTTP}/v2/health/ready"),
            timeout=120,
            what="Triton in the data centre",
            interval=0.5,
        )
        self.receiver = ReceiverProcess(self.table, "dc-receiver", dc, RECEIVER, netns=self.wan.netns)
        self.receiver.start()
        targets = ((TRITON_RELAY, ("127.0.0.1", TRITON_GRPC)), (RECEIVER_RELAY, (dc, RECEIVER)))
        for (listen, (target_host, target)), control in zip(targets, RELAY_CONTROL, strict=True):
            relay = FaultProxy(
                self.table,
                f"dc-relay-{listen}",
                target_host,
                target,
                listen_port=listen,
                control_port=control,
                listen_host=dc,
                netns=self.wan.netns,
                initial=ModeRequest(mode="delay", delay_ms=DELAY_MS),
            )
            relay.start()
            self.relays.append(relay)
        host = self.info.host_ip
        mount = RtspMount(
            path="/district",
            source="file",
            file=self.footage,
            fps=10,
            width=768,
            height=576,
            keyframe_interval=10,
        )
        self.camera = RtspCameraServer(
            self.table, "rtsp-district", free_port(host), [mount], self.work, host=host
        )
        self.camera.start()
        self.tools.kubectl("create", "namespace", NAMESPACE, check=False)
        # Pods have no route but the node's: they reach the data centre through Services without a
        # selector whose EndpointSlices name its address (kube-proxy sends them into the veth).
        self.apply(*_external("dc-triton", dc, TRITON_RELAY), *_external("dc-events", dc, RECEIVER_RELAY))
        triton: dict[str, Any] = {"enabled": False, "address": f"dc-triton.{NAMESPACE}.svc:{TRITON_RELAY}"}
        if self.model_download is not None:  # where pods with a fallback detector download it
            url, sha256 = self.model_download
            triton["model"] = {"url": url, "sha256": sha256}
        values = local_values(
            self.info, self.stack.settings, operator={"watchNamespaces": [NAMESPACE]}, triton=triton
        )
        self.progress("installing Pantau with its chart ...")
        self.release.install(values)

    def down(self) -> None:
        self.uninstall()
        for relay in self.relays:
            relay.stop()
        if self.receiver is not None:
            self.receiver.stop()
        self.table.stop("dc-triton", 10.0)
        if self.camera is not None:
            self.camera.stop()
        self.wan.close()

    # ----- objects -----

    @property
    def sink_url(self) -> str:
        return f"http://dc-events.{NAMESPACE}.svc:{RECEIVER_RELAY}/events"

    def site(self, name: str, uplink: dict[str, Any] | None, *, fallback: bool = False) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "displayName": name,
            "region": "Bengkulu",
            "ingest": {"minPods": 1, "maxPods": 1, "podCapacity": {"cameras": 8, "fps": 40}},
            "eventSinks": [{"name": "dc", "type": "webhook", "url": self.sink_url}],
        }
        if uplink is not None:
            spec["uplink"] = uplink
        if fallback:
            spec["inference"] = {"fallback": {"enabled": True, "fps": 0.5}}
        return {"apiVersion": "pantau.io/v1alpha1", "kind": "Site", "metadata": {"name": name}, "spec": spec}

    def cameras(self, site: str, priorities: dict[str, int], fps: float) -> list[dict[str, Any]]:
        assert self.camera is not None
        url = self.camera.url("/district")
        return [
            {
                "apiVersion": "pantau.io/v1alpha1",
                "kind": "Camera",
                "metadata": {"name": name},
                "spec": {
                    "siteRef": {"name": site},
                    "priority": priority,
                    "sampling": {"fps": fps},
                    # One test stream stands for several cameras, each under its own URL (the server
                    # ignores the query), so no two share a session budget.
                    "source": {"url": f"{url}?camera={name}", "protocol": "rtsp"},
                },
            }
            for name, priority in priorities.items()
        ]

    # ----- observations -----

    def pod_ip(self, site: str) -> str | None:
        pod = self.get("pod", f"{site}-ingest-0")
        return None if pod is None else pod.get("status", {}).get("podIP")

    def pod_status(self, site: str) -> dict[str, Any] | None:
        ip = self.pod_ip(site)
        if not ip:
            return None
        try:
            response = httpx.get(f"http://{ip}:{INGEST_PORT}{STATUS_PATH}", timeout=5.0)
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 else None

    def figures(self, site: str) -> PodFigures:
        found = self.pod_status(site)
        if found is None:
            raise StackError(f"the ingest pod of Site {site} does not answer /status")
        cameras, sinks = found["cameras"], found["sinks"]
        dropped: dict[str, int] = {}
        for camera in cameras:
            for reason, count in camera.get("frames_dropped", {}).items():
                dropped[reason] = dropped.get(reason, 0) + count
        return PodFigures(
            processed=sum(c.get("frames_processed", 0) for c in cameras),
            local=sum(c.get("frames_local", 0) for c in cameras),
            dropped=dropped,
            sink_published=sum(s.get("published", 0) for s in sinks),
            sink_delivered=sum(s.get("delivered", 0) for s in sinks),
            sink_pending=sum(s.get("pending", 0) for s in sinks),
            sink_dropped=sum(s.get("dropped", 0) for s in sinks),
            uplink=[c["uplink"] for c in cameras if c.get("uplink")],
            fps=sum(c.get("fps", 0.0) for c in cameras),
        )

    def counters(self) -> WanCounters:
        return self.wan.counters()


def _external(name: str, address: str, port: int) -> list[dict[str, Any]]:
    """A Service of the data centre's `address:port`, for the pods (kube-proxy routes it to the veth)."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"ports": [{"name": "tcp", "port": port, "targetPort": port, "protocol": "TCP"}]},
    }
    endpoints = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": f"{name}-dc", "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
        "ports": [{"name": "tcp", "port": port, "protocol": "TCP"}],
    }
    return [service, endpoints]


def _received(cluster: LinkStack) -> dict[str, int]:
    if cluster.receiver is None:
        return {}
    summary = cluster.receiver.summary()
    return {"unique": summary.unique, "duplicates": summary.received - summary.unique}


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def rate(before: WanCounters, after: WanCounters) -> float:
    """Bytes per second offered to the link between two readings (retransmissions included)."""
    return (after.offered_bytes - before.offered_bytes) / max(after.at - before.at, 1e-9)


def measure(cluster: LinkStack, seconds: float) -> float:
    before = cluster.counters()
    time.sleep(seconds)  # a measurement window, not a wait for readiness
    return rate(before, cluster.counters())


# ----- pantau bench link -----


@dataclass(frozen=True)
class LinkConfig:
    budgets_mbps: tuple[float, ...] = (0.5, 2.0, 10.0)
    cameras: int = 3
    fps: float = 4.0
    window: float = 40.0  # seconds each run is measured over, once the cameras stream
    outage: float = 30.0  # seconds the link is down in each run
    loss_percent: float = 2.0
    timeout: float = 240.0


@dataclass
class LinkRun:
    """One budget, one mode ("pantau": the Site's uplink set to the link's rate; "none": no uplink, as
    Pantau sends without adaptation: raw pixels at the cameras' fps)."""

    budget_mbps: float
    mode: str
    bytes_per_s: float  # offered to the link (TCP/IP headers and retransmissions included)
    effective_fps: float  # frames analysed per second, all cameras
    bytes_per_frame: float | None  # offered bytes per analysed frame (events included)
    quality: int | None  # the plan's JPEG quality (None: raw pixels)
    scale: float | None
    stage: str | None
    recall: float | None = None  # per analysed frame, PETS09-S2L1 persons, at this quality and scale
    events_published: int = 0
    events_lost: int = 0
    duplicates: int = 0
    recovery_s: float | None = (
        None  # link back -> a frame analysed by Triton again (None: not within timeout)
    )
    dropped: dict[str, int] | None = None


def _streaming(cluster: LinkStack, site: str, cameras: int) -> PodFigures | None:
    status = cluster.pod_status(site)
    if status is None or len(status["cameras"]) < cameras:
        return None
    return cluster.figures(site) if all(c.get("frames_sampled", 0) > 0 for c in status["cameras"]) else None


def run_one(cluster: LinkStack, config: LinkConfig, budget_mbps: float, mode: str) -> LinkRun:
    site = f"{mode}-{str(budget_mbps).replace('.', '-')}"
    bps = budget_mbps * 1e6
    cluster.wan.shape(int(bps), loss_percent=config.loss_percent)
    uplink = {"bandwidth": f"{int(bps / 1000)}k"} if mode == "pantau" else None
    names = {f"{site}-cam-{i}": 90 - 40 * i for i in range(config.cameras)}
    before_received = _received(cluster)
    cluster.apply(cluster.site(site, uplink), *cluster.cameras(site, names, config.fps))
    cluster.progress(f"{site}: waiting for {config.cameras} cameras to stream ...")
    wait_for(
        lambda: _streaming(cluster, site, config.cameras), timeout=config.timeout, what=f"{site} streaming"
    )
    # Let the plan settle on measured frame sizes before the window.
    time.sleep(min(10.0, config.window / 4))  # settling the meter's window, not a readiness wait
    start, counters = cluster.figures(site), cluster.counters()
    time.sleep(config.window)  # the measurement window
    end, after = cluster.figures(site), cluster.counters()
    seconds = max(after.at - counters.at, 1e-9)
    offered = rate(counters, after)
    frames = end.processed - start.processed
    plans = end.uplink
    run = LinkRun(
        budget_mbps=budget_mbps,
        mode=mode,
        bytes_per_s=round(offered, 1),
        effective_fps=round(frames / seconds, 3),
        bytes_per_frame=round(offered * seconds / frames, 1) if frames else None,
        quality=min((p["quality"] for p in plans), default=None),
        scale=min((p["scale"] for p in plans), default=None),
        stage=plans[0]["stage"] if plans else None,
    )
    # The outage, and how soon Triton analyses frames again.
    cluster.progress(f"{site}: link down for {config.outage:.0f} s ...")
    cluster.wan.down()
    time.sleep(config.outage)  # the outage itself
    down = cluster.figures(site)
    cluster.wan.restore()
    back = time.monotonic()
    with contextlib.suppress(StackError):
        wait_for(
            lambda: cluster.figures(site).by_triton > down.by_triton,
            timeout=min(config.timeout, 120.0),
            what="frames after the outage",
            interval=0.25,
        )
        run.recovery_s = round(time.monotonic() - back, 2)
    run.dropped = cluster.figures(
        site
    ).dropped  # frames not analysed, by reason (paused cameras leave /status)
    # Stop the cameras, let the sink drain, and count what reached the receiver.
    for name in names:
        cluster.tools.kubectl(
            "patch", "camera", name, "-n", NAMESPACE, "--type=merge", "-p", '{"spec":{"paused":true}}'
        )
    with contextlib.suppress(StackError):
        wait_for(
            lambda: cluster.figures(site).sink_pending == 0, timeout=config.timeout, what="the sink drained"
        )
    final = cluster.figures(site)
    got = _received(cluster)
    run.events_published = final.sink_published
    run.events_lost = max(final.sink_published - (got.get("unique", 0) - before_received.get("unique", 0)), 0)
    run.duplicates = got.get("duplicates", 0) - before_received.get("duplicates", 0)
    cluster.tools.kubectl("delete", "site", site, "-n", NAMESPACE, "--timeout=90s", check=False)
    cluster.tools.kubectl("delete", "cameras", *names, "-n", NAMESPACE, "--timeout=90s", check=False)
    wait_for(lambda: cluster.get("pod", f"{site}-ingest-0") is None, timeout=120, what=f"{site}'s pod gone")
    return run


@dataclass
class LinkReport:
    config: LinkConfig
    started: str
    runs: list[LinkRun]
    reference_recall: float | None  # quality 80, full scale: the unconstrained link's
    notes: list[str]

    def to_json(self) -> str:
        budgets = []
        for budget in self.config.budgets_mbps:
            pantau = next(r for r in self.runs if r.budget_mbps == budget and r.mode == "pantau")
            none = next(r for r in self.runs if r.budget_mbps == budget and r.mode == "none")
            budgets.append({**asdict(pantau), "no_adaptation": asdict(none)})
        return json.dumps(
            {
                "config": asdict(self.config),
                "started": self.started,
                "reference_recall": self.reference_recall,
                "budgets": budgets,
                "notes": self.notes,
            },
            indent=2,
        )


def run(
    cluster: LinkStack,
    config: LinkConfig,
    recall: Callable[[list[tuple[int, float]]], dict[tuple[int, float], float]],
) -> LinkReport:
    """Every budget, Pantau then no adaptation; `recall` scores (quality, scale) settings offline."""
    started = datetime.now().astimezone().isoformat(timespec="seconds")
    runs = [
        run_one(cluster, config, budget, mode)
        for budget in config.budgets_mbps
        for mode in ("pantau", "none")
    ]
    settings = sorted({(r.quality or RAW_QUALITY, r.scale or 1.0) for r in runs} | {REFERENCE})
    cluster.progress("scoring recall at each run's quality and scale (offline, PETS09-S2L1) ...")
    scores = recall(settings)
    for r in runs:
        r.recall = round(scores[(r.quality or RAW_QUALITY, r.scale or 1.0)], 4)
    notes = [
        "bytes_per_s: offered to the link toward the data centre, counted by nftables before the shaper",
        f"loss {config.loss_percent:g}%, {2 * DELAY_MS} ms added per round trip, tbf at the budget",
        f"no_adaptation sends raw pixels; its recall is scored at JPEG quality {RAW_QUALITY} (no loss seen)",
        "recall: persons matched at IoU >= 0.5 per analysed frame, at the run's lowest quality and scale",
    ]
    return LinkReport(config, started, runs, round(scores[REFERENCE], 4), notes)


RAW_QUALITY: Final = 95
REFERENCE: Final = (80, 1.0)
KEYS: Final = (
    "bytes_per_s", "effective_fps", "bytes_per_frame", "quality", "scale", "stage", "recall",
    "events_published", "events_lost", "duplicates", "recovery_s",
)  # fmt: skip


def render(report: LinkReport, console: Console) -> None:
    table = Table(title="pantau bench link (Pantau | no adaptation | ratio)")
    table.add_column("figure")
    for budget in report.config.budgets_mbps:
        table.add_column(f"{budget:g} Mbit/s", justify="right")
    for key in KEYS:
        cells = []
        for budget in report.config.budgets_mbps:
            a = getattr(next(r for r in report.runs if r.budget_mbps == budget and r.mode == "pantau"), key)
            b = getattr(next(r for r in report.runs if r.budget_mbps == budget and r.mode == "none"), key)
            ratio = (
                f" ({a / b:.2f})" if isinstance(a, int | float) and isinstance(b, int | float) and b else ""
            )
            cells.append(f"{a} | {b}{ratio}")
        table.add_row(key, *cells)
    console.print(table)
    console.print(f"recall on an unconstrained link (quality 80, full scale): {report.reference_recall}")
    goals = Table(title="goals (Pantau)")
    for column in (
        "budget",
        "within budget +-10%",
        "events lost 0",
        "recovery <= 10 s",
        "recall within 5 pts",
    ):
        goals.add_column(column)
    for r in (r for r in report.runs if r.mode == "pantau"):
        within = r.bytes_per_s * 8 <= 1.1 * r.budget_mbps * 1e6
        close = (
            r.recall is not None
            and report.reference_recall is not None
            and abs(r.recall - report.reference_recall) <= 0.05
        )
        goals.add_row(
            f"{r.budget_mbps:g}",
            f"{r.bytes_per_s * 8 / 1e6:.3f} Mbit/s {'yes' if within else 'NO'}",
            f"{r.events_lost} {'yes' if r.events_lost == 0 else 'NO'}",
            f"{r.recovery_s} {'yes' if r.recovery_s is not None and r.recovery_s <= 10 else 'NO'}",
            f"{r.recall} {'yes' if close else 'NO'}",
        )
    console.print(goals)
    for note in report.notes:
        console.print(f"[dim]{note}[/dim]")
