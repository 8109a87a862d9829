"""`pantau ingest`: the program of the ingest pods.

It watches the Cameras assigned to this pod (label pantau.io/shard=<pod name>), reads the
Secrets they name, and keeps one CameraWorker per Camera: started on ADDED, restarted when
anything the stream depends on changes, stopped on DELETED or when the label moves away. Other
changes (classes, minimum score) apply without a reconnect. It serves /healthz, /readyz, /status
and /metrics on the pod's address.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pantau import telemetry
from pantau.contract import (
    LABEL_SHARD,
    CameraStatusReport,
    IngestSettings,
    LatencySummary,
    PodStatusReport,
    SinkStats,
    TritonReport,
)
from pantau.ingest.analytics import report as analytics_report
from pantau.ingest.budget import REPLAN, WAN_IN_FLIGHT, UplinkBudget
from pantau.ingest.events import EventSink, JsonLinesSink, MultiSink, WebhookSink
from pantau.ingest.fallback import Fallback
from pantau.ingest.latency import LatencyHistogram
from pantau.ingest.load import LoadMeter
from pantau.ingest.pipeline import CameraStats, CameraWorker, Credentials, PodContext
from pantau.ingest.server import serve
from pantau.k8s.api import SYNCED, ApiError, KubeApi
from pantau.models import GROUP, VERSION
from pantau.models.camera import CameraSpec
from pantau.models.site import EventSink as SinkSpec
from pantau.models.site import SiteSpec
from pantau.redact import redact_url
from pantau.triton.client import ClientSettings, Detector, InferenceError

log = logging.getLogger("pantau.ingest")
RECHECK = 5.0  # seconds: how soon a Secret that could not be read is asked again
LOAD_SAMPLE = 5.0  # seconds between CPU samples (the meter's window is 30 s)


def build_sink(
    specs: Sequence[SinkSpec],
    headers: Mapping[str, Mapping[str, str]] | None = None,
    spool_dir: str | None = None,
    on_sent: Callable[[int], None] | None = None,
) -> EventSink:
    """The pod's sink for the Site's `eventSinks` (several: one MultiSink over them); `headers` are each
    webhook sink's headers from Secrets, by sink name; `spool_dir` where they keep undelivered events;
    `on_sent` is told the bytes of each request sent (the uplink budget counts them)."""
    sinks: list[EventSink] = []
    spool = Path(spool_dir) if spool_dir else None
    for s in specs:
        if s.type == "webhook" and s.url:
            header = (headers or {}).get(s.name)
            sinks.append(WebhookSink(s.url, name=s.name, headers=header, spool_dir=spool, on_sent=on_sent))
        elif s.type == "stdout":
            sinks.append(JsonLinesSink())
    return MultiSink(sinks) if len(sinks) != 1 else sinks[0]


def _latency_summary(stats: CameraStats) -> LatencySummary | None:
    """Recent p50 and p99, with the count and sum of every frame since the worker started."""
    quantiles = stats.latency()
    if quantiles is None:
        return None
    histogram = stats.latency_histogram
    return LatencySummary(
        p50=quantiles[0], p99=quantiles[1], count=histogram.count, sum_ms=histogram.sum_seconds * 1000
    )


class IngestApp:
    def __init__(self, settings: IngestSettings, api: KubeApi, ctx: PodContext) -> None:
        self.settings, self.api, self.ctx = settings, api, ctx
        self.workers: dict[str, CameraWorker] = {}
        self.started_at = datetime.now(UTC)
        self.watching = False
        self.tasks: list[asyncio.Task[None]] = []
        self.sink_specs: tuple[SinkSpec, ...] = settings.event_sinks
        self.sink_headers: dict[str, dict[str, str]] = {}
        self.unread_secrets = False  # a Secret the pod needs could not be read: look again soon
        self.recheck = asyncio.Event()
        self.site_known = asyncio.Event()  # cameras start once the Site's settings are read
        self.closing: set[asyncio.Task[None]] = set()  # replaced sinks delivering what they hold
        self.load = LoadMeter()
        self.site_cameras = 0  # the Site's cameras (its status), for this pod's share of the uplink

    async def _secret_data(self, name: str) -> dict[str, str] | None:
        """A Secret's data; None when it is absent or this pod may not read it (the operator grants a
        pool only the Secrets that exist and consent to its Site)."""
        try:
            secret = await self.api.get("v1", "Secret", self.settings.namespace, name)
        except ApiError as exc:
            if exc.status != 403:
                raise
            secret = None
        return None if secret is None else dict(secret.get("data") or {})

    async def _credentials(self, spec: CameraSpec) -> Credentials | None:
        """The camera's login and TLS CA from the Secrets it names (None: it names none), or the
        reason they cannot serve it."""
        ref, tls = spec.source.credentials_secret_ref, spec.source.tls
        ca_ref = tls.ca_secret_ref if tls else None
        wanted: list[tuple[str, str, str, str]] = []  # (field, secret, key, the Camera field naming the key)
        if ref is not None:
            wanted += [
                ("username", ref.name, ref.username_key, "source.credentialsSecretRef.usernameKey"),
                ("password", ref.name, ref.password_key, "source.credentialsSecretRef.passwordKey"),
            ]
        if ca_ref is not None:
            wanted.append(("tls_ca", ca_ref.name, ca_ref.key, "source.tls.caSecretRef.key"))
        if not wanted:
            return None
        secrets = {name: await self._secret_data(name) for name in dict.fromkeys(w[1] for w in wanted)}
        found: dict[str, str] = {}
        for field, secret, key, where in wanted:
            data = secrets[secret]
            if data is None:
                why = f"Secret {secret!r} cannot be read by this pod: it does not exist or does not consent"
                return Credentials(problem=("SecretNotFound", why))
            if key not in data:
                why = f"Secret {secret!r} has no key {key!r}: add it, or name the right key in {where}"
                return Credentials(problem=("SecretKeyMissing", why))
            found[field] = base64.b64decode(data[key]).decode()
        return Credentials(found.get("username"), found.get("password"), found.get("tls_ca"))

    async def apply(self, kind: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        mine = obj["metadata"].get("labels", {}).get(LABEL_SHARD) == self.settings.shard
        worker = self.workers.get(name)
        if kind == "DELETED" or not mine:
            if worker is not None:
                await self.workers.pop(name).stop()
                log.info("camera %s: stopped", name)
            return
        try:
            spec = CameraSpec.model_validate(obj["spec"])
        except ValidationError:
            log.warning("camera %s: invalid spec, not started", name)
            return
        creds = await self._credentials(spec)
        if worker is not None:
            if (
                worker.spec.source == spec.source
                and worker.spec.sampling == spec.sampling
                and worker.creds == creds
                and worker.spec.paused == spec.paused
            ):
                worker.reconfigure(spec)  # detection settings, zones, lines: no reconnect
                return
            await self.workers.pop(name).stop()
        worker = CameraWorker(name, obj["metadata"]["uid"], spec, creds, self.ctx)
        self.workers[name] = worker
        worker.start()
        log.info("camera %s: streaming from %s", name, redact_url(spec.source.url))

    async def apply_site(self, obj: dict[str, Any]) -> None:
        """The Site's camera defaults and event sinks, applied to the running pod: detection settings
        on the next frame, a changed sampling rate by restarting the cameras it changes, new sinks by
        swapping the sink (the old one delivers what it holds before it closes)."""
        try:
            spec = SiteSpec.model_validate(obj.get("spec") or {})
        except ValidationError:
            log.warning("site %s: invalid spec; keeping the current settings", self.settings.site)
            return
        before = {name: w.source_config() for name, w in self.workers.items()}
        self.ctx.defaults = spec.camera_defaults
        for name, worker in list(self.workers.items()):
            if worker.source_config() != before[name]:
                await self._restart(name, worker.creds)
        self.site_cameras = int(((obj.get("status") or {}).get("cameras") or {}).get("total") or 0)
        self.ctx.uplink.configure(spec.uplink, self.uplink_share())
        self.follow_plan()
        in_flight = (
            max(self.settings.max_in_flight, WAN_IN_FLIGHT) if spec.uplink else self.settings.max_in_flight
        )
        await self.ctx.detector.set_max_in_flight(in_flight)
        self.ctx.fallback.configure(spec.inference.fallback if spec.inference else None)
        if spec.event_sinks != self.sink_specs or not self.site_known.is_set():
            await self._swap_sink(spec.event_sinks)
        self.site_known.set()

    async def _swap_sink(self, specs: tuple[SinkSpec, ...]) -> None:
        """A new sink for `specs` with their headers read now; the old one delivers what it holds."""
        headers = await self._sink_headers(specs)
        old, self.ctx.sink = (
            self.ctx.sink,
            build_sink(specs, headers, self.settings.spool_dir, self.ctx.uplink.event_bytes_sent),
        )
        self.sink_specs, self.sink_headers = specs, headers
        log.info("event sinks now: %s", ", ".join(s.name for s in specs) or "none")
        closing = asyncio.create_task(old.aclose(), name="close-old-sink")
        self.closing.add(closing)  # held: a task nobody references may be collected mid-flight
        closing.add_done_callback(self.closing.discard)

    async def _sink_headers(self, specs: Sequence[SinkSpec]) -> dict[str, dict[str, str]]:
        """Each webhook sink's header from its Secret; a sink whose Secret this pod cannot read (yet:
        the pool's Role may be a moment behind the Site) goes without it, says why, and is looked at
        again within RECHECK seconds."""
        found: dict[str, dict[str, str]] = {}
        self.unread_secrets = False
        for sink in specs:
            ref = sink.header_secret_ref
            if ref is None:
                continue
            data = await self._secret_data(ref.name)
            if data is None or ref.key not in data:
                log.warning("sink %s: Secret %r or its key %r cannot be read: sending without %s",
                            sink.name, ref.name, ref.key, ref.header)  # fmt: skip
                self.unread_secrets = True
                self.recheck.set()
                continue
            found[sink.name] = {ref.header: base64.b64decode(data[ref.key]).decode().strip()}
        return found

    async def watch_site(self) -> None:
        field = f"metadata.name={self.settings.site}"
        while True:
            try:
                async for kind, obj in self.api.watch(
                    f"{GROUP}/{VERSION}", "Site", self.settings.namespace, field_selector=field
                ):
                    if kind not in ("DELETED", SYNCED):
                        await self.apply_site(obj)
            except ApiError as exc:
                log.warning("watching site %s: %s; retrying", self.settings.site, exc)
                await asyncio.sleep(2)

    async def _restart(self, name: str, creds: Credentials | None) -> None:
        worker = self.workers[name]
        await worker.stop()
        fresh = CameraWorker(name, worker.uid, worker.spec, creds, self.ctx)
        self.workers[name] = fresh
        fresh.start()

    async def watch(self) -> None:
        await self.site_known.wait()
        selector = f"{LABEL_SHARD}={self.settings.shard}"
        while True:
            try:
                async for kind, obj in self.api.watch(
                    f"{GROUP}/{VERSION}", "Camera", self.settings.namespace, selector
                ):
                    # Ready once the listing is in, even with no Camera for this pod (yet).
                    self.watching = True
                    if kind != SYNCED:
                        await self.apply(kind, obj)
            except ApiError as exc:
                self.watching = False
                log.warning("watching cameras: %s; retrying", exc)
                await asyncio.sleep(2)

    async def refresh_secrets(self) -> None:
        """Rotated passwords reach running cameras (pods may `get` their Secrets, not watch them)."""
        while True:
            if self.unread_secrets or any(w.creds and w.creds.problem for w in self.workers.values()):
                await asyncio.sleep(min(RECHECK, self.settings.secret_refresh))
            else:  # a Secret found unreadable meanwhile wakes the loop early (`recheck`)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.recheck.wait(), self.settings.secret_refresh)
                if self.recheck.is_set():
                    self.recheck.clear()
                    await asyncio.sleep(min(RECHECK, self.settings.secret_refresh))
            with contextlib.suppress(ApiError):
                if await self._sink_headers(self.sink_specs) != self.sink_headers:
                    await self._swap_sink(self.sink_specs)  # a rotated or newly readable sink token
            for name, worker in list(self.workers.items()):
                with contextlib.suppress(ApiError):
                    creds = await self._credentials(worker.spec)
                    if creds != worker.creds and self.workers.get(name) is worker:
                        log.info("camera %s: its Secrets changed; reconnecting with them", name)
                        await self._restart(name, creds)

    async def watch_triton(self) -> None:
        """Keep the Triton health in /status current while no frame does: a readiness check (a real
        call) whenever the last inference is older than `triton_check` seconds or failed since."""
        detector = self.ctx.detector
        while True:
            health = detector.health
            last = health.last_success
            if (
                not health.reachable
                or last is None
                or (datetime.now(UTC) - last).total_seconds() > (self.settings.triton_check)
            ):
                with contextlib.suppress(InferenceError):
                    await detector.ensure_ready()
                await detector.check()
            await asyncio.sleep(self.settings.triton_check)

    def uplink_share(self) -> float:
        """This pod's share of its Site's uplink: its cameras of the Site's (all of it until the Site's
        status counts them)."""
        if not self.workers or self.site_cameras <= len(self.workers):
            return 1.0
        return len(self.workers) / self.site_cameras

    def follow_plan(self) -> None:
        for worker in self.workers.values():
            worker.follow_plan()

    async def plan_uplink(self) -> None:
        """Plan the uplink every REPLAN seconds from what was measured, and let the cameras follow."""
        while True:
            if self.ctx.uplink.active:
                self.ctx.uplink.configure(self.ctx.uplink.settings, self.uplink_share())
                self.ctx.uplink.replan()
                self.follow_plan()
            await asyncio.sleep(REPLAN)

    def sample_load(self) -> None:
        """The cameras' CPU sample, and the close of an analytics interval where one ended."""
        self.load.sample({name: w.stats.cpu_seconds for name, w in self.workers.items()})
        now = time.time()
        for worker in self.workers.values():
            worker.intervals.roll(now, worker.analytics.summary())

    async def measure_load(self) -> None:
        """Sample the cameras' CPU every LOAD_SAMPLE seconds (what /status reports as their load)."""
        while True:
            self.sample_load()
            await asyncio.sleep(LOAD_SAMPLE)

    def problems(self) -> list[str]:
        """Why the pod is not healthy (empty: it is): a stuck camera pipeline, or a loop that died."""
        found = [
            f"camera {name}: {why}"
            for name, w in sorted(self.workers.items())
            if (why := w.stalled(self.settings.stall_timeout)) is not None
        ]
        found += [f"task {t.get_name()} ended" for t in self.tasks if t.done()]
        return found

    def healthy(self) -> bool:
        problems = self.problems()
        if problems:
            log.warning("unhealthy: %s", "; ".join(problems))
        return not problems

    def _triton(self) -> TritonReport:
        health = self.ctx.detector.health
        return TritonReport(
            address=self.settings.triton_address,
            reachable=health.reachable,
            model=self.settings.model,
            model_ready=health.model_ready,
            last_success=health.last_success,
            last_error=health.last_error,
            last_error_time=health.last_error_at,
        )

    def _sinks(self) -> list[SinkStats]:
        sink = self.ctx.sink
        return sink.per_sink() if isinstance(sink, MultiSink) else [sink.stats]

    def snapshot(self) -> PodStatusReport:
        cameras = []
        cores = self.load.cores()
        for name, w in sorted(self.workers.items()):
            s = w.stats
            lag = s.decode_lag()
            cameras.append(
                CameraStatusReport(
                    namespace=self.settings.namespace,
                    name=name,
                    state=s.state,
                    reason=s.reason,
                    message=s.message,
                    last_frame_time=s.last_frame_time,
                    fps=round(s.fps(), 3),
                    frames_sampled=s.frames_sampled,
                    frames_processed=s.frames_processed,
                    cpu_cores=round(cores.get(name, 0.0), 4),
                    cpu_seconds=round(self.load.cpu_seconds(name), 3),
                    decode_lag_ms=None if lag is None else round(lag * 1000, 1),
                    frames_dropped=dict(s.dropped),
                    detections=dict(s.detections),
                    analytics=analytics_report(w.analytics, w.intervals),
                    uplink=self.ctx.uplink.report(name),
                    frames_local=s.frames_local,
                    inference_latency_ms=_latency_summary(s),
                    url=redact_url(w.spec.source.url),
                )
            )
        return PodStatusReport(
            pod=self.settings.pod_name,
            site=self.settings.site,
            shard=self.settings.shard,
            started_at=self.started_at,
            cpu_cores=round(self.load.pod_cores(), 4),
            cameras=cameras,
            triton=self._triton(),
            sinks=self._sinks(),
        )

    def latency(self) -> dict[str, LatencyHistogram]:
        """Each camera's inference latency histogram, by "namespace/name" (as in the snapshot)."""
        return {
            f"{self.settings.namespace}/{name}": w.stats.latency_histogram for name, w in self.workers.items()
        }


async def main(settings: IngestSettings) -> None:
    provider = telemetry.setup_tracing("pantau-ingest", {"pantau.site": settings.site})
    api = KubeApi.from_environment("pantau-ingest")
    # Not connected yet: the pod serves and reports at once; while Triton or its model is missing its
    # cameras say InferenceUnavailable and /status says what the checks found.
    detector = Detector(
        ClientSettings(
            url=settings.triton_address,
            model=settings.model,
            max_batch=settings.max_batch,
            max_in_flight=settings.max_in_flight,
        ),
        input_size=None,
    )
    budget = UplinkBudget()
    ctx = PodContext(
        namespace=settings.namespace,
        site=settings.site,
        pod=settings.pod_name,
        model=settings.model,
        detector=detector,
        sink=build_sink(settings.event_sinks, spool_dir=settings.spool_dir, on_sent=budget.event_bytes_sent),
        uplink=budget,
        fallback=Fallback(
            settings.fallback_model,
            settings.fallback_model_url,
            settings.fallback_model_sha256,
            cache_dir=settings.spool_dir,
        ),
        tracer=provider.get_tracer("pantau.ingest"),
        defaults=settings.camera_defaults,
        queue_size=settings.queue_size,
        analytics_interval=settings.analytics_interval,
        read_timeout=settings.read_timeout,
        backoff_base=settings.backoff_base,
        backoff_cap=settings.backoff_cap,
        auth_backoff=settings.auth_backoff,
    )
    app = IngestApp(settings, api, ctx)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await serve(
        settings.pod_ip,
        settings.port,
        app.snapshot,
        ready=lambda: app.watching,
        healthy=app.healthy,
        latency=app.latency,
    )
    app.tasks = [
        asyncio.create_task(app.watch_site(), name="watch-site"),
        asyncio.create_task(app.watch(), name="watch-cameras"),
        asyncio.create_task(app.refresh_secrets(), name="refresh-secrets"),
        asyncio.create_task(app.watch_triton(), name="watch-triton"),
        asyncio.create_task(app.measure_load(), name="measure-load"),
        asyncio.create_task(app.plan_uplink(), name="plan-uplink"),
    ]
    await stop.wait()
    for t in app.tasks:
        t.cancel()
    await asyncio.gather(*(w.stop() for w in app.workers.values()), return_exceptions=True)
    await server.aclose()
    await asyncio.gather(*app.closing, return_exceptions=True)
    await ctx.sink.aclose()
    await detector.aclose()
    await api.aclose()
    provider.shutdown()
