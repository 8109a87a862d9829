"""The ingest pod's HTTP endpoints: `/healthz`, `/readyz`, `/status` and `/metrics`.

The operator polls `/status` (per-camera facts, JSON of `PodStatusReport`) to write Camera and Site
status; Prometheus scrapes `/metrics` (text exposition format 0.0.4). Both come from one snapshot of
the pod, taken per request through the `snapshot` callable, so they never disagree. The kubelet probes
`/healthz` (liveness) and `/readyz` (readiness): 200 or 503.

Nothing served here holds a credential: camera URLs and messages pass through `redact_urls` when the
report is built, whatever the caller already did.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Final, Self

from aiohttp import web

from pantau.contract import CAMERA_STATES, CameraStatusReport, PodStatusReport

log = logging.getLogger(__name__)
METRICS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

# ----- /metrics -----


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


Sample = tuple[str, dict[str, str], float]


class _Exposition:
    def __init__(self) -> None:
        self._lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> None:
        """One metric family; families without samples still say what they are (HELP and TYPE)."""
        self._lines.append(f"# HELP {name} {help_text}")
        self._lines.append(f"# TYPE {name} {kind}")
        for sample_name, labels, value in samples:
            if labels:
                rendered = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
                self._lines.append(f"{sample_name}{{{rendered}}} {_number(value)}")
            else:
                self._lines.append(f"{sample_name} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"


def render_metrics(report: PodStatusReport) -> str:
    """The report in the Prometheus text exposition format (0.0.4). Counters are the pod's own running
    totals: they restart from zero with the pod or the camera's worker, which Prometheus handles."""
    out = _Exposition()
    cams = sorted(report.cameras, key=lambda c: (c.namespace, c.name))

    def per_camera(metric: str, value: Callable[[CameraStatusReport], float]) -> list[Sample]:
        return [(metric, {"camera": c.camera}, value(c)) for c in cams]

    out.family(
        "pantau_frames_processed_total",
        "counter",
        "Frames read, detected and published, per camera.",
        per_camera("pantau_frames_processed_total", lambda c: c.frames_processed),
    )
    out.family(
        "pantau_frames_dropped_total",
        "counter",
        "Frames given up before publishing, per camera and reason.",
        (
            ("pantau_frames_dropped_total", {"camera": c.camera, "reason": reason}, count)
            for c in cams
            for reason, count in sorted(c.frames_dropped.items())
        ),
    )
    out.family(
        "pantau_detections_total",
        "counter",
        "Objects detected, per camera and class.",
        (
            ("pantau_detections_total", {"camera": c.camera, "class": cls}, count)
            for c in cams
            for cls, count in sorted(c.detections.items())
        ),
    )
    out.family(
        "pantau_camera_streaming",
        "gauge",
        "1 while the camera delivers frames, else 0.",
        per_camera("pantau_camera_streaming", lambda c: 1 if c.state == "Streaming" else 0),
    )
    out.family(
        "pantau_camera_state",
        "gauge",
        "The camera's state: 1 for the current one, 0 for the others.",
        (
            ("pantau_camera_state", {"camera": c.camera, "state": state}, 1 if c.state == state else 0)
            for c in cams
            for state in CAMERA_STATES
        ),
    )
    out.family(
        "pantau_camera_fps",
        "gauge",
        "Measured processed frames per second, per camera.",
        per_camera("pantau_camera_fps", lambda c: c.fps),
    )
    out.family(
        "pantau_camera_last_frame_timestamp_seconds",
        "gauge",
        "Capture time of the camera's last processed frame, seconds since the epoch.",
        (
            (
                "pantau_camera_last_frame_timestamp_seconds",
                {"camera": c.camera},
                c.last_frame_time.timestamp(),
            )
            for c in cams
            if c.last_frame_time is not None
        ),
    )
    latency: list[Sample] = []
    for c in cams:
        summary = c.inference_latency_ms
        if summary is None:
            continue
        for quantile, ms in (("0.5", summary.p50), ("0.99", summary.p99)):
            latency.append(
                ("pantau_inference_latency_seconds", {"camera": c.camera, "quantile": quantile}, ms / 1000)
            )
        latency.append(("pantau_inference_latency_seconds_sum", {"camera": c.camera}, summary.sum_ms / 1000))
        latency.append(("pantau_inference_latency_seconds_count", {"camera": c.camera}, summary.count))
    out.family(
        "pantau_inference_latency_seconds",
        "summary",
        "Triton inference latency of the camera's frames (request to detections), seconds.",
        latency,
    )
    out.family(
        "pantau_triton_reachable",
        "gauge",
        "1 when the pod's last Triton call or check succeeded, else 0.",
        [("pantau_triton_reachable", {}, 1 if report.triton.reachable else 0)],
    )
    out.family(
        "pantau_ingest_cameras",
        "gauge",
        "Cameras assigned to this pod.",
        [("pantau_ingest_cameras", {}, len(cams))],
    )
    out.family(
        "pantau_ingest_start_time_seconds",
        "gauge",
        "When this pod's ingest process started, seconds since the epoch.",
        [("pantau_ingest_start_time_seconds", {}, report.started_at.timestamp())],
    )
    sinks = sorted(report.sinks, key=lambda s: s.name)
    for metric, kind, help_text, field in (
        ("pantau_events_published_total", "counter", "Detection events handed to the sink.", "published"),
        ("pantau_events_delivered_total", "counter", "Detection events the sink delivered.", "delivered"),
        ("pantau_events_pending", "gauge", "Detection events buffered by the sink.", "pending"),
        ("pantau_events_retries_total", "counter", "Failed deliveries that were retried.", "retries"),
    ):
        out.family(metric, kind, help_text, ((metric, {"sink": s.name}, getattr(s, field)) for s in sinks))
    out.family(
        "pantau_events_dropped_total",
        "counter",
        "Detection events the sink gave up, per reason.",
        (
            ("pantau_events_dropped_total", {"sink": s.name, "reason": reason}, count)
            for s in sinks
            for reason, count in sorted(s.dropped_reasons.items())
        ),
    )
    return out.text()


# ----- the server -----

Check = Callable[[], bool]
Snapshot = Callable[[], PodStatusReport]


def _probe(check: Check, what: str) -> web.Response:
    try:
        ok = check()
    except Exception as exc:
        log.warning("%s check failed: %s", what, type(exc).__name__)
        ok = False
    return web.Response(text="ok\n" if ok else f"not {what}\n", status=200 if ok else 503)


def make_app(snapshot: Snapshot, *, ready: Check, healthy: Check) -> web.Application:
    """The aiohttp application serving the four endpoints (GET and HEAD)."""

    def take() -> PodStatusReport | web.Response:
        try:
            return snapshot()
        except Exception as exc:
            log.exception("status snapshot failed: %s", type(exc).__name__)
            return web.Response(text="status unavailable\n", status=500)

    async def healthz(_: web.Request) -> web.Response:
        return _probe(healthy, "healthy")

    async def readyz(_: web.Request) -> web.Response:
        return _probe(ready, "ready")

    async def status(_: web.Request) -> web.Response:
        report = take()
        if isinstance(report, web.Response):
            return report
        return web.Response(body=report.model_dump_json().encode(), content_type="application/json")

    async def metrics(_: web.Request) -> web.Response:
        report = take()
        if isinstance(report, web.Response):
            return report
        return web.Response(
            body=render_metrics(report).encode(), headers={"Content-Type": METRICS_CONTENT_TYPE}
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", metrics)
    return app


class IngestServer:
    """The endpoints on `host:port` (port 0: any free port; see `port` after `start`)."""

    def __init__(
        self, snapshot: Snapshot, *, ready: Check, healthy: Check, host: str = "127.0.0.1", port: int = 8080
    ) -> None:
        self._app = make_app(snapshot, ready=ready, healthy=healthy)
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


async def serve(host: str, port: int, snapshot: Snapshot, *, ready: Check, healthy: Check) -> IngestServer:
    """Start serving the endpoints on `host:port` (the pod IP); `aclose()` the result to stop."""
    server = IngestServer(snapshot, ready=ready, healthy=healthy, host=host, port=port)
    await server.start()
    return server
