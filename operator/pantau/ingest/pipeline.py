"""One camera's pipeline inside an ingest pod.

A reader thread runs the blocking source (PyAV or httpx): it samples on the wall clock, decodes
and resizes only what it samples, and offers each sample to a queue of a few slots that drops
the oldest sample when the pipeline is behind (counted as QueueFull). An asyncio task takes
samples from the queue, sends them to Triton through the shared batching client, and publishes
one event and one trace per processed frame. Failures are classified by the source; the worker
reconnects with capped, jittered exponential back-off, and after repeated authentication
failures waits at least `auth_backoff` seconds between attempts (a camera that locks accounts
must not be hammered). One source at a time: never more than one session per camera.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import av
import numpy as np
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Tracer

from pantau import telemetry
from pantau.analytics.engine import AnalyticsEvent
from pantau.ingest import jpeg
from pantau.ingest.analytics import IntervalCounts, engine_for, rules_of, wire_events
from pantau.ingest.budget import UplinkBudget
from pantau.ingest.events import DetectionEvent, EventSink, Inference
from pantau.ingest.fallback import Fallback
from pantau.ingest.latency import LatencyHistogram
from pantau.ingest.sources import Sample, Source, SourceConfig, SourceError, open_source
from pantau.models.camera import CameraSpec
from pantau.models.site import CameraDefaults
from pantau.redact import redact_url
from pantau.triton import yolox
from pantau.triton.client import Detector, InferenceError, Prepared
from pantau.triton.contract import Detection

log = logging.getLogger("pantau.ingest")
AUTH_FAILURES_BEFORE_SLOWDOWN = 3
# Failures that mean Triton cannot be reached (rather than a frame it refused): the fallback's cue.
UNREACHABLE = frozenset({"InferenceUnavailable", "Timeout"})
SILENT_UNAVAILABLE = 10.0  # seconds without an answer from Triton that make timeouts "unavailable"


@dataclass(frozen=True)
class Credentials:
    """What a camera's Secrets hold for its session: a login and/or the CA that signed its TLS
    certificate (PEM). A change of any of them restarts the session."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls_ca: str | None = field(default=None, repr=False)
    # (reason, message with the fix) when the Secrets cannot serve the camera (SecretNotFound,
    # SecretKeyMissing): the worker reports it and opens no session, rather than trying without a
    # login and reporting AuthFailed.
    problem: tuple[str, str] | None = None


@dataclass
class PodContext:
    """What every camera of the pod shares."""

    namespace: str
    site: str
    pod: str
    model: str
    detector: Detector
    sink: EventSink
    tracer: Tracer
    defaults: CameraDefaults
    queue_size: int = 2
    read_timeout: float = 10.0
    backoff_base: float = 1.0
    backoff_cap: float = 30.0
    auth_backoff: float = 60.0
    analytics_interval: float = 300.0  # seconds of the interval counts the Camera's status shows
    # The Site's uplink budget (Site spec.uplink): with one, frames go as JPEG at the plan's settings.
    uplink: UplinkBudget = field(default_factory=UplinkBudget)
    # The Site's fallback detector (Site spec.inference.fallback), for frames Triton cannot take.
    fallback: Fallback = field(default_factory=Fallback)


@dataclass
class CameraStats:
    state: str = "Starting"
    reason: str | None = None
    message: str | None = None
    last_frame_time: datetime | None = None
    frames_processed: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    detections: Counter[str] = field(default_factory=Counter)
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=500))  # recent: p50, p99
    latency_histogram: LatencyHistogram = field(default_factory=LatencyHistogram)  # all, seconds
    processed_at: deque[float] = field(default_factory=lambda: deque(maxlen=2000))
    sessions_opened: int = 0
    # Seconds the worker waits before its next connection attempt; None while an attempt or a
    # session is under way. Shows the back-off (and the AuthFailed floor) actually applied.
    retry_delay: float | None = None
    # time.monotonic() when the frame now in processing was taken from the queue; None: none is.
    busy_since: float | None = None
    frames_sampled: int = 0  # samples the sources delivered, all sessions together
    frames_local: int = 0  # frames the pod's fallback detector analysed while Triton was unreachable
    # CPU seconds of the camera's own threads: ended sessions, and the one under way (updated per sample).
    cpu_ended: float = 0.0
    cpu_session: float = 0.0
    # Seconds from a sample's capture to the pipeline taking it (decode, letterbox, queue), recent.
    lags: deque[float] = field(default_factory=lambda: deque(maxlen=100))

    @property
    def cpu_seconds(self) -> float:
        return self.cpu_ended + self.cpu_session

    def decode_lag(self) -> float | None:
        """The median age of recent samples when the pipeline took them, seconds."""
        return float(np.median(np.array(self.lags))) if self.lags else None

    def fps(self, window: float = 60.0) -> float:
        """Processed frames per second over the last `window` seconds (or since the first)."""
        now = time.monotonic()
        recent = [t for t in self.processed_at if now - t <= window]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(recent[-1] - recent[0], 1e-6)

    def observe_latency(self, seconds: float) -> None:
        """One frame's inference latency: kept for the /status quantiles and the /metrics histogram."""
        self.latencies_ms.append(seconds * 1000)
        self.latency_histogram.observe(seconds)

    def latency(self) -> tuple[float, float] | None:
        if not self.latencies_ms:
            return None
        p50, p99 = np.percentile(np.array(self.latencies_ms), [50, 99])
        return float(p50), float(p99)


class CameraWorker:
    def __init__(
        self, name: str, uid: str, spec: CameraSpec, creds: Credentials | None, ctx: PodContext
    ) -> None:
        self.name, self.uid, self.spec, self.creds, self.ctx = name, uid, spec, creds, ctx
        self.stats = CameraStats()
        self._task: asyncio.Task[None] | None = None
        self._session = 0
        self.analytics = engine_for(spec)
        self.intervals = IntervalCounts(ctx.analytics_interval)
        self._source: Source | None = None  # the session's source, while one is open
        self._sent_fps: float | None = None  # the sampling rate last given to it

    def reconfigure(self, spec: CameraSpec) -> None:
        """A spec whose stream is unchanged: detection settings apply to the next frame, zones and lines
        to the next sample too, tracks and counts kept."""
        self.spec = spec
        self.analytics.configure(*rules_of(spec))
        self.ctx.uplink.ask(self.name, spec.priority, self.asked_fps)

    @property
    def asked_fps(self) -> float:
        spec = self.spec
        return float(spec.sampling.fps if spec.sampling and spec.sampling.fps else self.ctx.defaults.fps)

    def sampling_fps(self) -> float:
        """What the source samples at: the uplink plan's rate, else the asked one."""
        setting = self.ctx.uplink.setting(self.name)
        return min(setting.fps, self.asked_fps) if setting is not None else self.asked_fps

    def follow_plan(self) -> None:
        """The uplink's plan changed: the open session samples at its new rate from the next sample."""
        source, fps = self._source, self.sampling_fps()
        if source is not None and fps != self._sent_fps:
            source.set_fps(fps)
            self._sent_fps = fps

    # ----- lifecycle -----

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"camera-{self.name}")

    def stalled(self, limit: float) -> str | None:
        """Why this worker counts as stuck (a frame in processing for over `limit` seconds, or its task
        died of an unexpected error), or None."""
        task = self._task
        if task is not None and task.done() and not task.cancelled() and task.exception() is not None:
            return f"its task died: {type(task.exception()).__name__}"
        busy = self.stats.busy_since
        if busy is not None and time.monotonic() - busy > limit:
            return f"one frame in processing for {time.monotonic() - busy:.0f} s"
        return None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.stats.state = "Stopped"
        self.ctx.uplink.forget(self.name)
        self.ctx.fallback.forget(self.name)

    def source_config(self) -> SourceConfig:
        src = self.spec.source
        return SourceConfig(
            url=src.url,
            protocol=src.protocol,
            fps=self.sampling_fps(),
            transport=src.transport or "tcp",
            username=self.creds.username if self.creds else None,
            password=self.creds.password if self.creds else None,
            read_timeout=self.ctx.read_timeout,
            open_timeout=self.ctx.read_timeout,
            tls_insecure=bool(src.tls and src.tls.insecure_skip_verify),
            tls_ca=self.creds.tls_ca if self.creds else None,
            tls_server_name=src.tls.server_name if src.tls else None,
            loop_file=src.protocol == "file",
        )

    @property
    def classes(self) -> frozenset[str]:
        d = self.spec.detection
        return frozenset(d.classes if d and d.classes else self.ctx.defaults.classes)

    @property
    def min_score(self) -> float:
        d = self.spec.detection
        return float(d.min_score if d and d.min_score is not None else self.ctx.defaults.min_score)

    # ----- the loop: connect, stream, back off -----

    async def _run(self) -> None:
        failures = auth_failures = 0
        if self.creds is not None and self.creds.problem is not None:
            self.stats.state = "Failed"
            self.stats.reason, self.stats.message = self.creds.problem
            log.warning("camera %s: %s", self.name, self.creds.problem[1])
            return  # the pod's Secret refresh starts a new worker once the Secret is fixed
        while True:
            if self.spec.paused:
                self.stats.state, self.stats.reason = "Stopped", "Paused"
                return
            samples = self.stats.frames_sampled
            try:
                await self._stream()
                failures = auth_failures = 0  # a clean end (file done): start again promptly
            except (SourceError, InferenceError) as exc:
                if self.stats.frames_sampled > samples:
                    # The session delivered frames: this failure starts a new outage, so the back-off
                    # starts over (otherwise every outage in a worker's life would wait longer).
                    failures = auth_failures = 0
                failures += 1
                auth_failures = auth_failures + 1 if exc.reason == "AuthFailed" else 0
                self.stats.state, self.stats.reason, self.stats.message = "Backoff", exc.reason, str(exc)
                delay = min(self.ctx.backoff_cap, self.ctx.backoff_base * 2 ** (failures - 1))
                delay = random.uniform(delay / 2, delay)  # noqa: S311 - jitter, not crypto
                if auth_failures >= AUTH_FAILURES_BEFORE_SLOWDOWN:
                    delay = max(delay, self.ctx.auth_backoff)
                self.stats.retry_delay = delay
                log.warning("camera %s: %s (%s); retrying in %.1f s", self.name, exc.reason, exc, delay)
                await asyncio.sleep(delay)

    async def _stream(self) -> None:
        """One session: reader thread + processing until the source fails."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Sample] = asyncio.Queue(maxsize=self.ctx.queue_size)
        failure: asyncio.Future[SourceError] = loop.create_future()
        stop = threading.Event()
        self._session += 1
        self.stats.retry_delay = None
        # No session while the model cannot be asked (its input size unknown): InferenceUnavailable.
        await self.ctx.detector.ensure_ready()
        if self.stats.sessions_opened:
            # A reconnect: the tracks are gone (ids keep growing); whoever was in a zone has left it.
            await self._publish_track_events(
                self.analytics.reset(), f"{self.uid}:{self._session}:reset", None
            )
        self.stats.sessions_opened += 1
        size = self.ctx.detector.input_size
        self.ctx.uplink.ask(self.name, self.spec.priority, self.asked_fps)

        def offer(sample: Sample) -> None:
            self.stats.frames_sampled += 1
            if queue.full():
                queue.get_nowait()
                self.stats.dropped["QueueFull"] += 1
            queue.put_nowait(sample)

        def fail(exc: SourceError) -> None:
            if not failure.done():
                failure.set_result(exc)

        opened: list[Source] = []  # the reader's source, so stopping can close it from here

        def read() -> None:
            source = None
            started = time.thread_time()
            try:
                config = self.source_config()
                source = open_source(config, _letterboxer(size))
                opened.append(source)
                self._source, self._sent_fps = source, config.fps
                while not stop.is_set():
                    sample = source.read()
                    self.stats.cpu_session = time.thread_time() - started + source.stats.cpu_seconds
                    loop.call_soon_threadsafe(offer, sample)
            except SourceError as exc:
                loop.call_soon_threadsafe(fail, exc)
            except Exception as exc:
                message = f"unexpected error reading {redact_url(self.spec.source.url)}: {type(exc).__name__}"
                loop.call_soon_threadsafe(fail, SourceError(message, reason="Unreachable"))
            finally:
                self._source = None
                if source is not None:
                    source.close()
                    session = time.thread_time() - started + source.stats.cpu_seconds
                    self.stats.cpu_ended, self.stats.cpu_session = self.stats.cpu_ended + session, 0.0

        reader = threading.Thread(target=read, name=f"read-{self.name}", daemon=True)
        reader.start()
        self.stats.state, self.stats.reason, self.stats.message = "Starting", None, None
        try:
            while True:
                get: asyncio.Future[Sample] = asyncio.ensure_future(queue.get())
                waiting: set[asyncio.Future[Any]] = {get, failure}
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if failure in done:
                    get.cancel()
                    raise failure.result()
                await self._process_watched(get.result())
        finally:
            stop.set()
            if opened:  # wakes a read() blocked on the network; the camera's session ends now
                await asyncio.to_thread(opened[0].close)
            await asyncio.to_thread(reader.join, self.ctx.read_timeout + 5)

    async def _process_watched(self, sample: Sample) -> None:
        """`_process`, with the time it started on the stats while it runs (the stall check reads it)."""
        self.stats.busy_since = time.monotonic()
        self.stats.lags.append(max(time.time() - sample.captured_at, 0.0))
        try:
            await self._process(sample)
        finally:
            self.stats.busy_since = None

    async def _process(self, sample: Sample) -> None:
        """One frame, one trace: read/decode, infer, analyse, publish, every span and attribute through
        the telemetry helpers (which drop anything holding a credential)."""
        ctx, stats = self.ctx, self.stats
        captured_ns = int(sample.captured_at * 1e9)
        decoded_from = captured_ns - int(sample.decode_seconds * 1e9)
        frame_id = f"{self.uid}:{self._session}:{sample.seq}"
        camera = f"{ctx.namespace}/{self.name}"
        with telemetry.frame_span(
            ctx.tracer, camera, ctx.site, ctx.pod, decoded_from, frame_id=frame_id, model=ctx.model
        ) as root:
            telemetry.past_span(
                ctx.tracer,
                telemetry.SPAN_READ_DECODE,
                decoded_from,
                captured_ns,
                {telemetry.ATTR_KEYFRAME: sample.keyframe},
            )
            inferred = await self._infer(sample, root)
            if inferred is None:
                return
            found, where = inferred
            with telemetry.stage_span(ctx.tracer, telemetry.SPAN_ANALYSE):
                kept = [d for d in found if d.class_name in self.classes and d.score >= self.min_score]
                telemetry.set_detections(root, Counter(d.class_name for d in kept))
                analysed = self.analytics.update(sample.captured_at, sample.orig_hw, kept)
            with telemetry.stage_span(ctx.tracer, telemetry.SPAN_PUBLISH):
                traceparent = telemetry.traceparent_of(root)
                await ctx.sink.publish(self._event(sample, frame_id, kept, traceparent, where))
                await self._publish_track_events(analysed.events, frame_id, traceparent)
        stats.state = "Streaming"
        if where == "triton":  # a frame the fallback analysed leaves Triton's failure on the status
            stats.reason, stats.message = None, None
        stats.frames_processed += 1
        stats.processed_at.append(time.monotonic())
        stats.last_frame_time = datetime.fromtimestamp(sample.captured_at, UTC)
        stats.detections.update(d.class_name for d in kept)

    async def _infer(self, sample: Sample, root: trace.Span) -> tuple[list[Detection], Inference] | None:
        """The frame's detections and where they were made (Triton, or the pod's fallback detector while
        Triton cannot be reached), or None when it was dropped (counted, with the reason on the trace)."""
        ctx, stats = self.ctx, self.stats
        started = time.monotonic()
        attributes = {telemetry.ATTR_MODEL: ctx.model}
        with telemetry.stage_span(
            ctx.tracer, telemetry.SPAN_INFER, attributes, kind=SpanKind.CLIENT
        ) as infer:
            try:
                prepared, sent_hw = await self._prepare(sample)
                found = await ctx.detector.detect(prepared, headers=telemetry.grpc_metadata(infer))
            except InferenceError as exc:
                stats.reason, stats.message = self._why_not(exc)
                infer.set_status(trace.Status(trace.StatusCode.ERROR, exc.reason))
                local = None
                if exc.reason in UNREACHABLE:
                    local = await ctx.fallback.analyse(self.name, sample.image, sample.orig_hw)
                if local is not None:
                    stats.frames_local += 1
                    stats.message = f"{stats.message}; the pod's fallback detector analyses frames meanwhile"
                    telemetry.set_attributes(root, {telemetry.ATTR_INFERENCE: "local"})
                    return local, "local"
                stats.dropped[exc.reason] += 1
                telemetry.set_attributes(
                    root, {telemetry.ATTR_DETECTIONS: 0, telemetry.ATTR_DROP_REASON: exc.reason}
                )
                return None
        stats.observe_latency(time.monotonic() - started)
        return (found if sent_hw is None else jpeg.to_frame(found, sent_hw, sample.orig_hw)), "triton"

    def _why_not(self, exc: InferenceError) -> tuple[str, str]:
        """The camera's reason and message for a failed frame. A link that silently drops everything shows
        as deadlines, not refusals: once Triton has answered nothing for SILENT_UNAVAILABLE seconds, the
        camera says InferenceUnavailable (the frame itself still counts as a Timeout drop)."""
        silent = self.ctx.detector.health.silent_for()
        if exc.reason == "Timeout" and silent > SILENT_UNAVAILABLE:
            return "InferenceUnavailable", f"Triton has not answered for {silent:.0f} s (last: {exc})"
        return exc.reason, str(exc)

    async def _prepare(self, sample: Sample) -> tuple[Prepared, tuple[int, int] | None]:
        """What goes to Triton: the letterboxed pixels, or under an uplink budget the picture as a JPEG at
        the plan's quality and scale (with its size, to map the detections back). Raises InferenceError
        (`Stale`) for a frame older than the uplink's maxLatencyMilliseconds: sending it would only delay
        the ones behind it."""
        budget = self.ctx.uplink
        setting = budget.setting(self.name)
        if setting is None or budget.settings is None:
            return Prepared(orig_hw=sample.orig_hw, image=sample.image), None
        limit = budget.settings.max_latency_milliseconds
        age = time.time() - sample.captured_at
        if limit is not None and age * 1000 > limit:
            raise InferenceError(
                "Stale", f"the frame was {age:.1f} s old (uplink maxLatencyMilliseconds {limit})"
            )
        size = self.ctx.detector.input_size
        content = yolox.resized_shape(sample.orig_hw[0], sample.orig_hw[1], size)
        encoded = await asyncio.to_thread(jpeg.encode, sample.image, content, setting.quality, setting.scale)
        budget.frame_sent(self.name, len(encoded.jpeg), setting)
        budget.ask(self.name, self.spec.priority, self.asked_fps, pixels=content[0] * content[1])
        return Prepared(orig_hw=encoded.hw, jpeg=encoded.jpeg), encoded.hw

    async def _publish_track_events(
        self, found: Sequence[AnalyticsEvent], frame_id: str, traceparent: str | None
    ) -> None:
        ctx = self.ctx
        camera = f"{ctx.namespace}/{self.name}"
        for event in wire_events(
            found, camera=camera, site=ctx.site, pod=ctx.pod, frame_id=frame_id, traceparent=traceparent
        ):
            await ctx.sink.publish(event)

    def _event(
        self,
        sample: Sample,
        frame_id: str,
        kept: list[Detection],
        traceparent: str | None,
        where: Inference = "triton",
    ) -> DetectionEvent:
        ctx = self.ctx
        return DetectionEvent(
            camera=f"{ctx.namespace}/{self.name}",
            site=ctx.site,
            pod=ctx.pod,
            timestamp=datetime.fromtimestamp(sample.captured_at, UTC),
            frame_id=frame_id,
            detections=[
                {"class": d.class_name, "score": round(d.score, 4), "box": [round(v, 1) for v in d.box]}
                for d in kept
            ],
            traceparent=traceparent,
            inference=where,
        )


def _letterboxer(size: int) -> Callable[[av.VideoFrame], np.ndarray]:
    """Resize in FFmpeg's scaler straight to the letterboxed size, then pad (shared geometry)."""

    def convert(frame: av.VideoFrame) -> np.ndarray:
        nh, nw = yolox.resized_shape(frame.height, frame.width, size)
        resized = frame.reformat(width=nw, height=nh, format="bgr24", interpolation="BILINEAR").to_ndarray()
        return yolox.pad(resized, size)

    return convert
