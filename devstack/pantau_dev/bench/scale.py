"""`pantau bench scale`: pool scaling on the real local stack, against a naive policy in the same run.

One stack (control plane, the real node, kwok nodes), Pantau installed with its chart, one RTSP camera
server (one shared media: every camera reads the same stream, so its cost does not grow with them), and a
webhook receiver on the node's address that timestamps every event it gets. The real node is labelled
zone `kota`, one kwok node zone `seluma`.

For each policy in turn (Pantau's: the Site's default `spec.ingest.scaling`; naive: tolerance 0, no
stabilisation, no rate limits, a 1 s period, so the pool resizes on every sample), a Site in zone
`kota` is created with `--cameras` cameras, and once every camera streams:

1. **Step.** `--step` cameras are added at once. `step_ready_s` runs from that apply to the moment the
   pool has as many ready pods as it wants, every one of them on a `kota` node, and every camera of the
   Site reports streaming. `moved_cameras` / `min_moves` are what the Site's status.scaling says of the
   resize: cameras that changed pod, and the fewest a balanced resize could have moved.
2. **Latency.** For `--latency-seconds` after the step, each event's receive time minus its capture
   time (`timestamp`): capture -> detection event delivered, p50 and p99.
3. **Flaps on the stack.** The pool's replicas are sampled every second through both phases; a change
   that reverses the previous one within the policy's scale-down window counts as a flap.
4. **Other Site.** A Site in zone `seluma` (kwok) holds steady: its replicas before and after.

**Noise, in accelerated time.** `flaps` is the number of reversals within the scale-down window over
`--noise-minutes` of load with +/-`--noise` uniform noise around the load at which the pool the step
settled on runs exactly at its target (a replica boundary inside the noise: the worst case), the same
`scaling.decide` the operator runs, called every 15 s of simulated time (a 30-minute run takes a moment).
The naive policy (`scaling.naive`) gets the same series. The stack's own measurements are too few and too
slow for that (one sample per 15 s, and the real noise is whatever the machine does).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from rich.console import Console
from rich.table import Table

from pantau.reconcile.scaling import Behavior, Sample, ScalerState, ScalingRule, decide, naive
from pantau_dev.bench.charted import Charted
from pantau_dev.cameras import RtspCameraServer, RtspMount
from pantau_dev.chart import Release, Tools, local_values
from pantau_dev.net import free_port
from pantau_dev.procs import ProcessTable, StackError, wait_for
from pantau_dev.receiver import EventReceiver
from pantau_dev.stack import KWOK_TAINT, DevStack

NAMESPACE: Final = "pantau-scale"
ZONE_LABEL: Final = "topology.kubernetes.io/zone"
HOME_ZONE, OTHER_ZONE = "kota", "seluma"
# The naive policy as Site fields: resize on every sample to exactly what the load asks.
NAIVE_SCALING: Final = {
    "tolerancePercent": 0,
    "scaleUp": {"stabilizationWindowSeconds": 0, "pods": 64, "percent": 1000, "periodSeconds": 1},
    "scaleDown": {"stabilizationWindowSeconds": 0, "pods": 64, "percent": 1000, "periodSeconds": 1},
}
DOWN_WINDOW_S: Final = 300.0  # Pantau's default scale-down window: what a flap is measured against


@dataclass(frozen=True)
class ScaleConfig:
    cameras: int = 4
    step: int = 20
    fps: float = 0.5  # a sample per keyframe interval: the cameras decode keyframes only
    per_pod: int = 8
    latency_seconds: float = 20.0
    noise_minutes: float = 30.0
    noise: float = 0.15
    timeout: float = 240.0
    seed: int = 7


@dataclass
class PolicyResult:
    step_ready_s: float
    pods_before: int
    pods_after: int
    moved_cameras: int | None
    min_moves: int | None
    flaps: int  # simulated noise, see the module docstring
    flaps_on_stack: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    events: int
    triton_replicas_max: int
    measured_cores: float | None
    other_site_replicas: tuple[int, int]


@dataclass
class Report:
    config: ScaleConfig
    started: str
    pantau: PolicyResult
    naive: PolicyResult
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        top = asdict(self.pantau)
        body = {
            **top,
            "naive": asdict(self.naive),
            "config": asdict(self.config),
            "started": self.started,
            "notes": self.notes,
        }
        return json.dumps(body, indent=2)


class ScaleStack(Charted):
    """The stack, Pantau installed with its chart, the camera server and the event receiver."""

    def __init__(self, stack: DevStack, work: Path, footage: Path, progress: Callable[[str], None]) -> None:
        self.stack, self.work, self.footage, self.progress = stack, work, footage, progress
        self.info = stack.status()
        tools = Tools(stack.settings, stack.kubeconfig)
        super().__init__(tools, Release(tools, name="scale", namespace="pantau-scale-system"), NAMESPACE)
        self.table = ProcessTable(work / "pids", work / "logs")
        self.camera: RtspCameraServer | None = None
        self.events: EventReceiver | None = None

    def up(self) -> None:
        host = self.info.host_ip
        assert self.info.node is not None, "the scale benchmark needs the stack's node"
        self.tools.kubectl("label", "node", self.info.node, f"{ZONE_LABEL}={HOME_ZONE}", "--overwrite")
        self.tools.kubectl(
            "label", "node", self.info.kwok_nodes[0], f"{ZONE_LABEL}={OTHER_ZONE}", "--overwrite"
        )
        mount = RtspMount(
            path="/simpang",
            source="file",
            file=self.footage,
            fps=10,
            width=768,
            height=576,
            keyframe_interval=20,
        )
        self.camera = RtspCameraServer(
            self.table, "rtsp-scale", free_port(host), [mount], self.work, host=host
        )
        self.camera.start()
        self.events = EventReceiver(host).start()
        self.tools.kubectl("create", "namespace", NAMESPACE, check=False)
        values = local_values(self.info, self.stack.settings, operator={"watchNamespaces": [NAMESPACE]})
        self.progress("installing Pantau with its chart ...")
        self.release.install(values)

    def down(self) -> None:
        self.uninstall()
        if self.events is not None:
            self.events.close()
        if self.camera is not None:
            self.camera.stop()

    # ----- objects -----

    def site(
        self, name: str, zone: str, per_pod: int, scaling: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        assert self.events is not None
        spec: dict[str, Any] = {
            "displayName": name,
            "region": "Bengkulu",
            "placement": {"zone": zone},
            "ingest": {"minPods": 1, "maxPods": 8, "podCapacity": {"cameras": per_pod}},
            "eventSinks": [{"name": "clock", "type": "webhook", "url": self.events.url}],
        }
        if zone == OTHER_ZONE:  # kwok's nodes are tainted
            spec["placement"]["tolerations"] = [{k: KWOK_TAINT[k] for k in ("key", "value", "effect")}]
        if scaling is not None:
            spec["ingest"]["scaling"] = scaling
        return {"apiVersion": "pantau.io/v1alpha1", "kind": "Site", "metadata": {"name": name}, "spec": spec}

    def cameras(self, site: str, names: list[str], fps: float) -> list[dict[str, Any]]:
        assert self.camera is not None
        url = self.camera.url("/simpang")
        return [
            {
                "apiVersion": "pantau.io/v1alpha1",
                "kind": "Camera",
                "metadata": {"name": name},
                "spec": {
                    "siteRef": {"name": site},
                    "sampling": {"fps": fps},
                    # One shared test stream stands for many cameras, each under its own URL (the
                    # server ignores the query), so no two share a session budget.
                    "source": {"url": f"{url}?camera={name}", "protocol": "rtsp"},
                },
            }
            for name in names
        ]

    # ----- observations -----

    def replicas(self, site: str) -> tuple[int, int]:
        sts = self.get("statefulset", f"{site}-ingest")
        if sts is None:
            return 0, 0
        return int(sts["spec"].get("replicas", 0)), int(sts.get("status", {}).get("readyReplicas", 0))

    def streaming(self, site: str) -> tuple[int, int]:
        cams = [c for c in self.get("cameras")["items"] if c["spec"]["siteRef"]["name"] == site]
        return sum(1 for c in cams if c.get("status", {}).get("streaming")), len(cams)

    def pods_in_zone(self, site: str, zone: str) -> bool:
        pods = self.get("pods")["items"]
        nodes = {
            n["metadata"]["name"]: n
            for n in json.loads(self.tools.kubectl("get", "nodes", "-o", "json").stdout)["items"]
        }
        mine = [p for p in pods if p["metadata"]["name"].startswith(f"{site}-ingest-")]
        return all(
            nodes.get(p["spec"].get("nodeName", ""), {}).get("metadata", {}).get("labels", {}).get(ZONE_LABEL)
            == zone
            for p in mine
        )

    def triton_replicas(self) -> int:
        """The chart's Triton Deployment's replicas; the stack's own Triton (one process) counts as 1."""
        deployments = json.loads(
            self.tools.kubectl(
                "get", "deployments", "-A", "-l", "app.kubernetes.io/component=triton", "-o", "json"
            ).stdout
        )["items"]
        return max((int(d["spec"].get("replicas", 1)) for d in deployments), default=1)


def capture_to_arrival(receiver: EventReceiver, first: int) -> list[float]:
    """Seconds from each frame's capture to its detection event's arrival, for the events from `first` on."""
    return [
        arrived - datetime.fromisoformat(event["timestamp"]).timestamp()
        for event, arrived in zip(receiver.received[first:], receiver.arrivals[first:], strict=True)
        if "detections" in event
    ]


class ReplicaWatch:
    """Samples a Site's pool replicas every second in a thread: the flaps seen on the stack."""

    def __init__(self, cluster: ScaleStack, site: str) -> None:
        self.cluster, self.site = cluster, site
        self.seen: list[tuple[float, int]] = []
        self.triton_max = 1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            with contextlib.suppress(Exception):
                wanted, _ = self.cluster.replicas(self.site)
                if not self.seen or self.seen[-1][1] != wanted:
                    self.seen.append((time.monotonic(), wanted))
                self.triton_max = max(self.triton_max, self.cluster.triton_replicas())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def reversals(changes: list[tuple[float, int]], window: float) -> int:
    """Changes of direction within `window` seconds of the previous change: flaps."""
    flaps = 0
    last: tuple[float, int] | None = None  # (when, direction) of the previous change
    for (_, a), (t1, b) in itertools.pairwise(changes):
        direction = 1 if b > a else -1
        if last is not None and direction != last[1] and t1 - last[0] < window:
            flaps += 1
        last = (t1, direction)
    return flaps


def simulate(level: float, request: float, minutes: float, noise: float, seed: int, pantau: bool) -> int:
    """Flaps of a policy over `minutes` of load uniformly within +/-noise of `level` (cores), one decision
    per 15 s of simulated time, starting settled at what the level needs."""
    rng = random.Random(seed)  # noqa: S311 - reproducible noise, not crypto
    behavior = Behavior(
        up=ScalingRule(stabilization_s=0, pods=4, percent=100),
        down=ScalingRule(stabilization_s=300, pods=None, percent=100),
    )
    current = max(1, round(level / (request * behavior.target) + 0.5))
    state = ScalerState.resumed(0.0, current)
    changes: list[tuple[float, int]] = [(0.0, current)]
    for step in range(1, int(minutes * 4) + 1):
        at = step * 15.0
        sample = Sample(at=at, load=level * rng.uniform(1 - noise, 1 + noise), ready=current)
        if pantau:
            decision = decide(sample, current, 1, 64, behavior, state, request)
            replicas, state = decision.replicas, decision.state
        else:
            replicas = naive(sample, current, 1, 64, behavior, request)
        if replicas != current:
            changes.append((at, replicas))
            current = replicas
    return reversals(changes, DOWN_WINDOW_S)


def run_policy(
    cluster: ScaleStack, config: ScaleConfig, name: str, scaling: dict[str, Any] | None
) -> PolicyResult:
    progress = cluster.progress
    first = [f"{name}-cam-{i:02d}" for i in range(config.cameras)]
    added = [f"{name}-cam-{i:02d}" for i in range(config.cameras, config.cameras + config.step)]
    cluster.apply(
        cluster.site(name, HOME_ZONE, config.per_pod, scaling), *cluster.cameras(name, first, config.fps)
    )
    watch = ReplicaWatch(cluster, name)
    try:
        progress(f"{name}: waiting for {len(first)} cameras to stream ...")
        wait_for(
            lambda: cluster.streaming(name)[0] == len(first),
            timeout=config.timeout,
            what="first cameras streaming",
            interval=1,
        )
        before = cluster.replicas(name)[0]
        other_before = cluster.replicas("seluma")[0]
        progress(f"{name}: step +{config.step} cameras")
        started = time.monotonic()
        cluster.apply(*cluster.cameras(name, added, config.fps))

        # The capacity the Cameras' declared cost needs after the step (podCapacity.cameras per pod).
        needed = -(-(len(first) + len(added)) // config.per_pod)

        def ready() -> bool:
            wanted, up = cluster.replicas(name)
            live, total = cluster.streaming(name)
            return (
                wanted >= needed
                and up == wanted
                and live == total == len(first) + len(added)
                and cluster.pods_in_zone(name, HOME_ZONE)
            )

        try:
            wait_for(
                ready,
                timeout=config.timeout,
                what="new capacity ready and every camera streaming",
                interval=0.5,
            )
        except StackError:
            live, total = cluster.streaming(name)
            progress(
                f"{name}: pods (wanted, ready) {cluster.replicas(name)}, {live}/{total} live, need {needed}"
            )
            progress(json.dumps(cluster.get("site", name).get("status", {}), indent=1)[-3000:])
            logs = cluster.tools.kubectl(
                "logs", "-n", cluster.release.namespace, "-l", "app.kubernetes.io/component=operator",
                "--tail=40", check=False,
            )  # fmt: skip
            progress(logs.stdout + logs.stderr)
            progress(cluster.tools.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide", check=False).stdout)
            raise
        step_ready = time.monotonic() - started
        assert cluster.events is not None
        since = len(cluster.events.received)
        progress(
            f"{name}: ready after {step_ready:.1f} s; measuring latency for {config.latency_seconds:.0f} s"
        )
        time.sleep(config.latency_seconds)  # a measurement window, not a readiness wait
        delays = sorted(capture_to_arrival(cluster.events, since))
        status = cluster.get("site", name).get("status", {})
        scaling_status = status.get("scaling", {})
    finally:
        watch.stop()
    after = cluster.replicas(name)[0]
    cores = scaling_status.get("cpuCores")
    # The noise is centred where the pool the step settled on runs exactly at its target: a replica
    # boundary inside the noise, the worst case for flapping.
    request = 0.25
    level = after * request * 0.7
    return PolicyResult(
        step_ready_s=round(step_ready, 1),
        pods_before=before,
        pods_after=after,
        moved_cameras=scaling_status.get("movedCameras"),
        min_moves=scaling_status.get("minMoves"),
        flaps=simulate(
            level, request, config.noise_minutes, config.noise, config.seed, pantau=scaling is None
        ),
        flaps_on_stack=reversals([(t, r) for t, r in watch.seen], DOWN_WINDOW_S),
        latency_p50_ms=round(statistics.median(delays) * 1000, 1) if delays else None,
        latency_p99_ms=round(delays[min(len(delays) - 1, int(0.99 * len(delays)))] * 1000, 1)
        if delays
        else None,
        events=len(delays),
        triton_replicas_max=watch.triton_max,
        measured_cores=float(cores) if cores is not None else None,
        other_site_replicas=(other_before, cluster.replicas("seluma")[0]),
    )


def remove_site(cluster: ScaleStack, name: str, timeout: float) -> None:
    """The Site and its Cameras, and wait until its pods are gone (their CPU is not the next phase's)."""
    cameras = [
        c["metadata"]["name"] for c in cluster.get("cameras")["items"] if c["spec"]["siteRef"]["name"] == name
    ]
    cluster.tools.kubectl("delete", "site", name, "-n", NAMESPACE, "--timeout=90s", check=False)
    if cameras:
        cluster.tools.kubectl("delete", "cameras", *cameras, "-n", NAMESPACE, "--timeout=90s", check=False)
    prefix = f"{name}-ingest-"
    wait_for(
        lambda: not [p for p in cluster.get("pods")["items"] if p["metadata"]["name"].startswith(prefix)],
        timeout=timeout,
        what=f"{name}'s pods gone",
        interval=1,
    )


@contextlib.contextmanager
def scale_stack(
    stack: DevStack, work: Path, footage: Path, progress: Callable[[str], None]
) -> Iterator[ScaleStack]:
    cluster = ScaleStack(stack, work, footage, progress)
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.down()


def run(cluster: ScaleStack, config: ScaleConfig) -> Report:
    started = datetime.now().astimezone().isoformat(timespec="seconds")
    other = [f"seluma-cam-{i}" for i in range(config.per_pod + 1)]
    cluster.apply(
        cluster.site("seluma", OTHER_ZONE, config.per_pod), *cluster.cameras("seluma", other, config.fps)
    )
    wait_for(lambda: cluster.replicas("seluma")[0] >= 2, timeout=60, what="the other zone's pool", interval=1)
    pantau = run_policy(cluster, config, "kota", None)
    remove_site(cluster, "kota", config.timeout)
    baseline = run_policy(cluster, config, "naive", NAIVE_SCALING)
    notes = [
        "flaps: +/-noise around the stack's measured level, 15 s steps of simulated time, same decide()",
        "latency: capture -> event received by the webhook receiver (sink batching included)",
        "triton_replicas_max: 1 when Triton is the stack's own process (chart Triton disabled)",
    ]
    return Report(config=config, started=started, pantau=pantau, naive=baseline, notes=notes)


FIGURES: Final = (
    "step_ready_s", "pods_before", "pods_after", "moved_cameras", "min_moves", "flaps", "flaps_on_stack",
    "latency_p50_ms", "latency_p99_ms", "events", "triton_replicas_max", "measured_cores",
    "other_site_replicas",
)  # fmt: skip


def render(report: Report, console: Console) -> None:
    table = Table(title="pantau bench scale")
    table.add_column("figure")
    table.add_column("Pantau", justify="right")
    table.add_column("naive", justify="right")
    table.add_column("naive / Pantau", justify="right")
    for key in FIGURES:
        a, b = getattr(report.pantau, key), getattr(report.naive, key)
        ratio = f"{b / a:.2f}" if isinstance(a, int | float) and isinstance(b, int | float) and a else "-"
        table.add_row(key, str(a), str(b), ratio)
    console.print(table)
    goals = Table(title="goals")
    for column in ("goal", "target", "measured", "met"):
        goals.add_column(column)
    p = report.pantau
    rows = [
        ("step_ready_s", "<= 30", p.step_ready_s, p.step_ready_s <= 30),
        ("flaps", "= 0", p.flaps, p.flaps == 0),
        (
            "moved_cameras",
            "= min_moves",
            f"{p.moved_cameras} / {p.min_moves}",
            p.moved_cameras == p.min_moves,
        ),
        (
            "latency_p50_ms",
            "<= 150",
            p.latency_p50_ms,
            p.latency_p50_ms is not None and p.latency_p50_ms <= 150,
        ),
        (
            "latency_p99_ms",
            "<= 500",
            p.latency_p99_ms,
            p.latency_p99_ms is not None and p.latency_p99_ms <= 500,
        ),
    ]
    for name, target, measured, met in rows:
        goals.add_row(name, target, str(measured), "met" if met else "not met")
    console.print(goals)
    for note in report.notes:
        console.print(f"- {note}")
