"""The ingest pod's HTTP endpoints: `/healthz`, `/readyz`, `/status` and `/metrics`.

The operator polls `/status` (per-camera facts, JSON of `PodStatusReport`) to write Camera and Site
status; Prometheus scrapes `/metrics` (the text exposition format, written by `prometheus_client`).
Both come from a snapshot of the pod, taken per request through the `snapshot` callable, so they never
disagree; /metrics adds each camera's inference latency histogram (`latency`). The kubelet probes
`/healthz` (liveness) and `/readyz` (readiness): 200 or 503.

Nothing served here holds a credential: camera URLs and messages pass through `redact_url` when the
report is built, whatever the caller already did.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Self

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from pantau.contract import CAMERA_STATES, CameraStatusReport, PodStatusReport, SinkStats
from pantau.ingest.latency import LatencyHistogram

log = logging.getLogger(__name__)

Check = Callable[[], bool]
Snapshot = Callable[[], PodStatusReport]
# Each camera's latency histogram, by `CameraStatusReport.camera` ("namespace/name").
Latency = Callable[[], Mapping[str, LatencyHistogram]]

# ----- /metrics -----


def _camera_families(cams: Sequence[CameraStatusReport]) -> list[Metric]:
    """The per-camera counters and gauges. Counters are the worker's own running totals: they restart
    from zero with the pod or the camera's worker, which Prometheus handles."""
    camera = ["camera"]
    processed = CounterMetricFamily(
        "pantau_frames_processed_total", "Frames read, detected and published, per camera.", labels=camera
    )
    dropped = CounterMetricFamily(
        "pantau_frames_dropped_total",
        "Frames given up before publishing, per camera and reason.",
        labels=["camera", "reason"],
    )
    detections = CounterMetricFamily(
        "pantau_detections_total", "Objects detected, per camera and class.", labels=["camera", "class"]
    )
    streaming = GaugeMetricFamily(
        "pantau_camera_streaming", "1 while the camera delivers frames, else 0.", labels=camera
    )
    state = GaugeMetricFamily(
        "pantau_camera_state",
        "The camera's state: 1 for the current one, 0 for the others.",
        labels=["camera", "state"],
    )
    fps = GaugeMetricFamily(
        "pantau_camera_fps", "Measured processed frames per second, per camera.", labels=camera
    )
    last_frame = GaugeMetricFamily(
        "pantau_camera_last_frame_timestamp_seconds",
        "Capture time of the camera's last processed frame, seconds since the epoch.",
        labels=camera,
    )
    load = _load_families(cams) + _analytics_families(cams)
    for c in cams:
        processed.add_metric([c.camera], c.frames_processed)
        for reason, count in sorted(c.frames_dropped.items()):
            dropped.add_metric([c.camera, reason], count)
        for cls, count in sorted(c.detections.items()):
            detections.add_metric([c.camera, cls], count)
        streaming.add_metric([c.camera], 1 if c.streaming else 0)
        for name in CAMERA_STATES:
            state.add_metric([c.camera, name], 1 if c.state == name else 0)
        fps.add_metric([c.camera], c.fps)
        if c.last_frame_time is not None:
            last_frame.add_metric([c.camera], c.last_frame_time.timestamp())
    return [processed, dropped, detections, streaming, state, fps, last_frame, *load]


def _analytics_families(cams: Sequence[CameraStatusReport]) -> list[Metric]:
    """Tracks, line crossings and zone figures per camera, rule and class."""
    tracks = GaugeMetricFamily("pantau_camera_tracks", "Objects tracked now, per camera.", labels=["camera"])
    crossings = CounterMetricFamily(
        "pantau_line_crossings",
        "Tracked objects that crossed a line, per camera, line, direction and class.",
        labels=["camera", "line", "direction", "class"],
    )
    zone_events = CounterMetricFamily(
        "pantau_zone_events",
        "Zone entries, exits and loitering, per camera, zone, event and class.",
        labels=["camera", "zone", "event", "class"],
    )
    occupancy = GaugeMetricFamily(
        "pantau_zone_occupancy",
        "Tracked objects in a zone now, per class.",
        labels=["camera", "zone", "class"],
    )
    for c in cams:
        if c.analytics is None:
            continue
        tracks.add_metric([c.camera], c.analytics.tracks)
        for line, counts in sorted(c.analytics.lines.items()):
            for cls, per in sorted(counts.classes.items()):
                for direction in ("forward", "backward"):
                    crossings.add_metric([c.camera, line, direction, cls], per.get(direction, 0))
        for zone, figures in sorted(c.analytics.zones.items()):
            for cls, per in sorted(figures.classes.items()):
                for event in ("entered", "exited", "loitering"):
                    zone_events.add_metric([c.camera, zone, event, cls], per.get(event, 0))
                occupancy.add_metric([c.camera, zone, cls], per.get("occupancy", 0))
    return [tracks, crossings, zone_events, occupancy]


def _load_families(cams: Sequence[CameraStatusReport]) -> list[Metric]:
    """What each camera costs: the load the operator scales the pool on."""
    camera = ["camera"]
    sampled = CounterMetricFamily(
        "pantau_frames_sampled_total", "Samples the camera's source delivered.", labels=camera
    )
    cpu = CounterMetricFamily(
        "pantau_camera_cpu_seconds_total",
        "CPU seconds of the camera's threads and its share of the pod's other work.",
        labels=camera,
    )
    cores = GaugeMetricFamily(
        "pantau_camera_cpu_cores", "The camera's CPU seconds per second, recent.", labels=camera
    )
    lag = GaugeMetricFamily(
        "pantau_camera_decode_lag_seconds",
        "Median age of recent samples when the pipeline took them (decode, letterbox, queue).",
        labels=camera,
    )
    for c in cams:
        sampled.add_metric([c.camera], c.frames_sampled)
        cpu.add_metric([c.camera], c.cpu_seconds)
        cores.add_metric([c.camera], c.cpu_cores)
        if c.decode_lag_ms is not None:
            lag.add_metric([c.camera], c.decode_lag_ms / 1000)
    return [sampled, cpu, cores, lag]


def _le(bound: float) -> str:
    """A bucket's `le` label as Prometheus clients write it: "0.005", "1.0", "+Inf"."""
    return "+Inf" if bound == math.inf else repr(bound)


def _latency_family(cams: Sequence[CameraStatusReport], latency: Mapping[str, LatencyHistogram]) -> Metric:
    family = HistogramMetricFamily(
        "pantau_inference_latency_seconds",
        "Triton inference latency of the camera's frames (request to detections), seconds.",
        labels=["camera"],
    )
    for c in cams:
        histogram = latency.get(c.camera)
        if histogram is not None:
            buckets = [(_le(bound), float(n)) for bound, n in histogram.cumulative()]
            family.add_metric([c.camera], buckets, histogram.sum_seconds)
    return family


def _pod_families(report: PodStatusReport) -> list[Metric]:
    return [
        GaugeMetricFamily(
            "pantau_triton_reachable",
            "1 when the pod's last Triton call or check succeeded, else 0.",
            value=1 if report.triton.reachable else 0,
        ),
        GaugeMetricFamily(
            "pantau_ingest_cameras", "Cameras assigned to this pod.", value=len(report.cameras)
        ),
        GaugeMetricFamily(
            "pantau_ingest_start_time_seconds",
            "When this pod's ingest process started, seconds since the epoch.",
            value=report.started_at.timestamp(),
        ),
        GaugeMetricFamily(
            "pantau_ingest_cpu_cores",
            "CPU seconds per second of this pod's ingest process, recent.",
            value=report.cpu_cores,
        ),
    ]


def _sink_families(sinks: Sequence[SinkStats]) -> list[Metric]:
    sink = ["sink"]
    published = CounterMetricFamily(
        "pantau_events_published_total", "Detection events handed to the sink.", labels=sink
    )
    delivered = CounterMetricFamily(
        "pantau_events_delivered_total", "Detection events the sink delivered.", labels=sink
    )
    pending = GaugeMetricFamily(
        "pantau_events_pending", "Detection events buffered by the sink.", labels=sink
    )
    retries = CounterMetricFamily(
        "pantau_events_retries_total", "Failed deliveries that were retried.", labels=sink
    )
    dropped = CounterMetricFamily(
        "pantau_events_dropped_total",
        "Detection events the sink gave up, per reason.",
        labels=["sink", "reason"],
    )
    for s in sorted(sinks, key=lambda s: s.name):
        published.add_metric([s.name], s.published)
        delivered.add_metric([s.name], s.delivered)
        pending.add_metric([s.name], s.pending)
        retries.add_metric([s.name], s.retries)
        for reason, count in sorted(s.dropped_reasons.items()):
            dropped.add_metric([s.name, reason], count)
    return [published, delivered, pending, retries, dropped]


class PodCollector:
    """A `prometheus_client` collector over the pod: each scrape takes a fresh snapshot (`collect` raises
    what `snapshot` raises) and turns it into metric families."""

    def __init__(self, snapshot: Snapshot, latency: Latency | None = None) -> None:
        self._snapshot = snapshot
        self._latency = latency

    def collect(self) -> Iterator[Metric]:
        report = self._snapshot()
        latency = self._latency() if self._latency is not None else {}
        cams = sorted(report.cameras, key=lambda c: (c.namespace, c.name))
        yield from _camera_families(cams)
        yield _latency_family(cams, latency)
        yield from _pod_families(report)
        yield from _sink_families(report.sinks)


def metrics_registry(snapshot: Snapshot, latency: Latency | None = None) -> CollectorRegistry:
    """A registry of its own (never the process-wide default) holding the pod's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PodCollector(snapshot, latency))
    return registry


def render_metrics(report: PodStatusReport, latency: Mapping[str, LatencyHistogram] | None = None) -> str:
    """The report (and the cameras' latency histograms) in the Prometheus text exposition format."""
    return generate_latest(metrics_registry(lambda: report, lambda: latency or {})).decode()


# ----- the server -----


def _probe(check: Check, what: str) -> web.Response:
    try:
        ok = check()
    except Exception as exc:
        log.warning("%s check failed: %s", what, type(exc).__name__)
        ok = False
    return web.Response(text="ok\n" if ok else f"not {what}\n", status=200 if ok else 503)


def _respond(what: str, body: Callable[[], bytes], content_type: str) -> web.Response:
    """200 with what `body` returns (it takes the snapshot), or 500 when that fails."""
    try:
        data = body()
    except Exception as exc:
        log.exception("%s: status snapshot failed: %s", what, type(exc).__name__)
        return web.Response(text="status unavailable\n", status=500)
    return web.Response(body=data, headers={"Content-Type": content_type})


def make_app(
    snapshot: Snapshot, *, ready: Check, healthy: Check, latency: Latency | None = None
) -> web.Application:
    """The aiohttp application serving the four endpoints (GET and HEAD)."""
    registry = metrics_registry(snapshot, latency)

    async def healthz(_: web.Request) -> web.Response:
        return _probe(healthy, "healthy")

    async def readyz(_: web.Request) -> web.Response:
        return _probe(ready, "ready")

    async def status(_: web.Request) -> web.Response:
        return _respond("/status", lambda: snapshot().model_dump_json().encode(), "application/json")

    async def metrics(_: web.Request) -> web.Response:
        return _respond("/metrics", lambda: generate_latest(registry), CONTENT_TYPE_LATEST)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", metrics)
    return app


class IngestServer:
    """The endpoints on `host:port` (port 0: any free port; see `port` after `start`)."""

    def __init__(
        self,
        snapshot: Snapshot,
        *,
        ready: Check,
        healthy: Check,
        latency: Latency | None = None,
        host: str = "127.0.0.1",
        port: int = 8080,
    ) -> None:
        self._app = make_app(snapshot, ready=ready, healthy=healthy, latency=latency)
        self._host = host
        self._requested_port = port
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    async def start(self) -> None:
        # No access log: the kubelet probes and Prometheus scrapes would fill the pod log.
        runner = web.AppRunner(self._app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._requested_port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        log.info("serving /healthz /readyz /status /metrics on %s:%d", self._host, self._port)

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the server is not started")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


async def serve(
    host: str, port: int, snapshot: Snapshot, *, ready: Check, healthy: Check, latency: Latency | None = None
) -> IngestServer:
    """Start serving the endpoints on `host:port` (the pod IP); `aclose()` the result to stop."""
    server = IngestServer(snapshot, ready=ready, healthy=healthy, latency=latency, host=host, port=port)
    await server.start()
    return server
