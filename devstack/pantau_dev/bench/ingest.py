"""`pantau bench ingest`: how many cameras one core ingests, against a naive OpenCV loop, and the
capture -> event latency through Triton.

One RTSP test camera serves the footage as 1080p25 H.264 with a keyframe every 2 s. It has one shared
mount: every client of a run connects to the same media (one encoder), so the server's cost does not
grow with the cameras and is measured apart (never counted as Pantau's).

- Cameras per core: N sessions, each the real `open_source` with the ingest pipeline's letterbox
  converter (`_letterboxer`), read on a thread of its own in this process, as an ingest pod does up to
  the Triton call. Cores used = this process's CPU seconds per wall second over the window. Triton is
  not part of it: it is shared by every pod and measured by `pantau bench inference`.
- Naive baseline, in the same run: the same stream read with `cv2.VideoCapture`, every frame decoded
  and converted to BGR by `read()`, the due frames letterboxed with `cv2.resize`.
- Latency: `CameraWorker`s with a real `Detector` on the stack's Triton and a JSON-lines sink, from
  `Sample.captured_at` (the wall time the frame's packet arrived) to the moment `publish` returned.

Cameras per core count streams as received (cameras x frames received / the stream's frames), so a
session behind the camera or draining a backlog is counted for the work it did. A row "keeps up" when
the cameras got at least 90% of their samples and of the stream's frames; the goals prefer such rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import re
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal

import httpx
import numpy as np
import psutil
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from rich.console import Console
from rich.table import Table
from tritonclient import grpc as triton_grpc

from pantau import telemetry
from pantau.contract import SinkStats
from pantau.ingest.events import DetectionEvent, Event, EventSink, JsonLinesSink
from pantau.ingest.pipeline import CameraWorker, PodContext, _letterboxer
from pantau.ingest.sources import KEYFRAMES_ONLY_ABOVE, Source, SourceConfig, SourceError, open_source
from pantau.models.camera import CameraSpec
from pantau.models.site import CameraDefaults
from pantau.triton import builder, contract, yolox
from pantau.triton.client import ClientSettings, Detector, InferenceError
from pantau_dev.bench.inference import Endpoints, Goal, input_size
from pantau_dev.bench.machine import cores, cpu_model, fmt
from pantau_dev.cameras import RtspCameraServer, RtspMount
from pantau_dev.net import free_port
from pantau_dev.procs import ProcessTable, StackError
from pantau_dev.settings import DevSettings
from pantau_dev.stack import DevStack

# Issue 5, item 8.
GOAL_FPS: Final = 0.5  # the sampling rate the cameras-per-core goals are stated at
GOAL_CAMERAS_PER_CORE: Final = 80.0
GOAL_VS_NAIVE: Final = 5.0
GOAL_P50_MS: Final = 150.0
GOAL_P99_MS: Final = 500.0
KEEP_UP: Final = 0.9  # a row keeps up at >= 90% of its nominal rates (±10%)

CAMERA_NAME: Final = "bench-camera"
MOUNT: Final = "/cam"
OPEN_TIMEOUT: Final = 20.0  # seconds for every session of a row to open

PathId = Literal["pantau", "naive"]


@dataclass(frozen=True)
class StreamConfig:
    """The test camera's stream."""

    width: int = 1920
    height: int = 1080
    fps: int = 25
    keyframe_interval: int = 50  # frames: 2 s at 25 fps

    @property
    def gop_seconds(self) -> float:
        return self.keyframe_interval / self.fps

    def describe(self) -> str:
        return (
            f"H.264 {self.width}x{self.height} at {self.fps} fps, a keyframe every "
            f"{self.keyframe_interval} frames ({self.gop_seconds:g} s)"
        )


@dataclass(frozen=True)
class IngestConfig:
    cameras: tuple[int, ...] = (8, 16)  # concurrent sessions per Pantau row
    rates: tuple[float, ...] = (GOAL_FPS, 5.0)  # sampled frames per second per camera
    probe_fps: float | None = 0.4  # one more row sampling slower than 1.1 x the GOP (keyframes only)
    naive_cameras: int = 8
    seconds: float = 12.0  # measured window per row, rounded up to whole sample intervals
    warmup: float = 4.0  # once every session has measured its GOP (its decoder mode is chosen)
    # (cameras, fps per camera) of each latency run: the first is the nominal load the goals are
    # judged at, the others show the pipeline's own latency below it.
    latency_loads: tuple[tuple[int, float], ...] = ((8, 2.0), (2, 1.0))
    latency_seconds: float = 15.0
    stream: StreamConfig = field(default_factory=StreamConfig)
    # The latency runs' client and Triton build; None / the defaults: what ingest pods and
    # `pantau model build` use.
    max_batch: int | None = None
    build: builder.BuildOptions = field(default_factory=lambda: builder.BuildOptions(target="cpu"))

    def __post_init__(self) -> None:
        counts = [*self.cameras, self.naive_cameras, *(n for n, _ in self.latency_loads)]
        if not self.cameras or not self.latency_loads or min(counts) < 1:
            raise ValueError("camera counts must be at least 1")
        rates = [
            *self.rates,
            *(f for _, f in self.latency_loads),
            *([self.probe_fps] if self.probe_fps else []),
        ]
        if not self.rates or min(rates) <= 0:
            raise ValueError("sampling rates must be positive")
        if self.seconds <= 0 or self.latency_seconds <= 0 or self.warmup < 0:
            raise ValueError("windows must be positive and warm-up not negative")

    def window(self, fps: float) -> float:
        """`seconds` rounded up to whole sample intervals: periodic samples then fill it exactly."""
        return math.ceil(self.seconds * fps - 1e-9) / fps

    def goal_fps(self) -> float:
        return GOAL_FPS if GOAL_FPS in self.rates else min(self.rates)


@dataclass(frozen=True)
class DecodeRow:
    path: PathId
    name: str
    cameras: int
    fps: float  # sampled frames per second per camera (nominal)
    seconds: float  # measured window
    cores: float  # CPU seconds of the reading process per wall second
    cameras_per_core: float  # cameras x (frames received / stream frames) / cores
    letterbox_cores: float | None  # Pantau: of `cores`, the threads calling read() (sample + letterbox)
    sampled_fps: float  # samples per second, all cameras
    sampled_pct: float  # of cameras x fps
    received_fps: float  # stream frames received per second per camera
    decoded_fps: float  # frames decoded per second per camera
    keyframes_only: int  # sessions whose decoder skipped non-key frames (Pantau)
    gop_s: float | None  # keyframe interval the sessions measured (Pantau)
    kept_up: bool
    errors: int  # sessions that failed during the row
    server_cores: float  # the camera server (excluded from `cores`)
    other_cpu_pct: float  # the machine's CPU used by other processes: noise


@dataclass(frozen=True)
class LatencyResult:
    cameras: int
    fps: float
    seconds: float
    events: int  # published inside the window
    events_pct: float  # of cameras x fps x seconds
    p50_ms: float  # capture -> event published
    p99_ms: float
    max_ms: float
    infer_p50_ms: float  # of which the Triton call (batching included)
    infer_p99_ms: float
    # Where the time goes, per frame from its trace spans: capture -> the Triton call starts (the
    # camera's queue, the event loop), and the call's end -> the event published (analyse, publish).
    to_call_p50_ms: float
    to_call_p99_ms: float
    after_call_p50_ms: float
    after_call_p99_ms: float
    # The Triton call's mean, split with Triton's metrics (means per request): the client's side
    # (batching wait, a free in-flight slot, serialising, gRPC) and the server's queue and compute.
    infer_mean_ms: float
    client_side_ms: float
    server_queue_ms: float
    server_compute_ms: float
    frames_per_request: float  # the client's batches
    frames_per_execution: float  # the batches the model ran (Triton's dynamic batcher merges requests)
    dropped: int  # samples dropped by the workers (queue full, inference errors)
    kept_up: bool
    ingest_cores: float  # this process: sessions, letterbox, client, events
    triton_cores: float
    server_cores: float
    other_cpu_pct: float


@dataclass(frozen=True)
class Report:
    date: str
    machine: str
    cores: int
    footage: str
    model: str
    stream: str
    config: IngestConfig
    rows: list[DecodeRow]
    latency: list[LatencyResult]  # the nominal load first
    goals: list[Goal]
    notes: list[str]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)


# ----- measuring CPU -----


@dataclass(frozen=True)
class _Usage:
    own: float  # CPU seconds of this process
    server: float  # of the camera server
    triton: float  # of tritonserver and its backend stubs
    busy: float  # the machine's busy CPU seconds


def _tree_seconds(proc: psutil.Process | None) -> float:
    if proc is None:
        return 0.0
    total = 0.0
    with contextlib.suppress(psutil.Error):
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
    return total


def _process(pid: int | None) -> psutil.Process | None:
    if pid is None:
        return None
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid)
    return None


class _Meter:
    def __init__(self, server_pid: int | None, triton_pid: int | None = None) -> None:
        self._me = psutil.Process()
        self._server = _process(server_pid)
        self._triton = _process(triton_pid)

    def sample(self) -> _Usage:
        own = self._me.cpu_times()
        cpu = psutil.cpu_times()
        return _Usage(
            own=own.user + own.system,
            server=_tree_seconds(self._server),
            triton=_tree_seconds(self._triton),
            busy=cpu.user + cpu.nice + cpu.system + cpu.irq + cpu.softirq,
        )


@dataclass(frozen=True)
class _Used:
    own: float  # cores
    server: float
    triton: float
    other_pct: float

    @classmethod
    def between(cls, before: _Usage, after: _Usage, seconds: float) -> _Used:
        own, server = after.own - before.own, after.server - before.server
        triton = after.triton - before.triton
        other = (after.busy - before.busy) - own - server - triton
        return cls(
            own=own / seconds,
            server=server / seconds,
            triton=triton / seconds,
            other_pct=max(0.0, 100 * other / (seconds * cores())),
        )


# ----- readers: one camera on one thread -----


class _Reader:
    """Reads one camera on its own thread until stopped; records when each sample was taken."""

    def __init__(self, url: str, fps: float, size: int, index: int) -> None:
        self.url, self.fps, self.size = url, fps, size
        self.samples: list[float] = []  # time.monotonic() of each sample
        self.error: str | None = None
        self.native_id: int | None = None  # the thread's, for its CPU time
        self.opened = threading.Event()  # set once open, or failed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"bench-read-{index}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def counters(self) -> tuple[int, int]:
        """(stream frames received, frames decoded) so far."""
        raise NotImplementedError

    def settled(self) -> bool:
        """Open, and past what only the start of a session does."""
        return self.opened.is_set()

    def keyframes_only(self) -> bool:
        return False

    def gop(self) -> float | None:
        return None

    def _main(self) -> None:
        self.native_id = threading.get_native_id()
        try:
            self._run()
        except Exception as exc:
            if not self._stop.is_set():
                self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.opened.set()

    def _run(self) -> None:
        raise NotImplementedError


class _PantauReader(_Reader):
    """`open_source` with the pipeline's letterbox converter, as an ingest pod's reader thread."""

    def __init__(self, url: str, fps: float, size: int, index: int) -> None:
        super().__init__(url, fps, size, index)
        self._source: Source | None = None

    def stop(self) -> None:
        super().stop()
        source = self._source
        if source is not None:
            source.close()  # wakes a blocked read()

    def counters(self) -> tuple[int, int]:
        source = self._source
        if source is None:
            return 0, 0
        stats = source.stats
        return stats.frames_read, stats.frames_decoded

    def settled(self) -> bool:
        # Two keyframes seen: the decoder's mode (every frame or keyframes only) is chosen.
        return self.error is not None or self.gop() is not None

    def keyframes_only(self) -> bool:
        return self._source is not None and self._source.stats.keyframes_only

    def gop(self) -> float | None:
        return self._source.stats.keyframe_interval if self._source is not None else None

    def _run(self) -> None:
        config = SourceConfig(url=self.url, protocol="rtsp", fps=self.fps, open_timeout=OPEN_TIMEOUT)
        with open_source(config, _letterboxer(self.size)) as source:
            self._source = source
            self.opened.set()
            while not self._stop.is_set():
                try:
                    source.read()
                except SourceError:
                    if self._stop.is_set():
                        return
                    raise
                self.samples.append(time.monotonic())


class _NaiveReader(_Reader):
    """The naive loop: `cv2.VideoCapture.read()` on every frame (decode + BGR), letterbox when due."""

    def __init__(self, url: str, fps: float, size: int, index: int) -> None:
        super().__init__(url, fps, size, index)
        self._frames = 0

    def counters(self) -> tuple[int, int]:
        return self._frames, self._frames

    def _run(self) -> None:
        import cv2  # the dev extra (opencv-python-headless): only this baseline needs it

        capture = cv2.VideoCapture(self.url, cv2.CAP_FFMPEG)
        try:
            if not capture.isOpened():
                raise RuntimeError("cv2.VideoCapture could not open the stream")
            self.opened.set()
            interval, due = 1.0 / self.fps, time.monotonic()
            while not self._stop.is_set():
                ok, frame = capture.read()
                if not ok:
                    raise RuntimeError("cv2.VideoCapture.read() failed")
                self._frames += 1
                now = time.monotonic()
                if now >= due:
                    nh, nw = yolox.resized_shape(frame.shape[0], frame.shape[1], self.size)
                    resized = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_LINEAR)
                    yolox.pad(np.asarray(resized), self.size)
                    self.samples.append(now)
                    due = max(due + interval, now)  # like Source: no burst after falling behind
        finally:
            capture.release()


@contextlib.contextmanager
def _tcp_for_opencv() -> Iterator[None]:
    """RTSP over TCP for OpenCV's FFmpeg backend too (it reads the options when a capture opens):
    the same transport as Pantau's sessions."""
    key = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
    previous = os.environ.get(key)
    os.environ[key] = "rtsp_transport;tcp"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = previous


def _threads_seconds(native_ids: set[int]) -> float:
    """CPU seconds of these threads of this process (psutil names them by native id)."""
    with contextlib.suppress(psutil.Error):
        return sum(t.user_time + t.system_time for t in psutil.Process().threads() if t.id in native_ids)
    return 0.0


def measure_decode(
    path: PathId, url: str, cameras: int, fps: float, size: int, config: IngestConfig, meter: _Meter
) -> DecodeRow:
    """One row: `cameras` readers of `path` on threads of this process, measured over one window."""
    kind = _PantauReader if path == "pantau" else _NaiveReader
    readers = [kind(url, fps, size, i) for i in range(cameras)]
    transport = _tcp_for_opencv() if path == "naive" else contextlib.nullcontext()
    try:
        with transport:
            for r in readers:
                r.start()
            deadline = time.monotonic() + OPEN_TIMEOUT + 5
            for r in readers:
                r.opened.wait(max(0.0, deadline - time.monotonic()))
        failed = [r.error for r in readers if r.error is not None]
        if len(failed) == len(readers):
            raise StackError(f"no {path} session opened {url}: {failed[0]}")
        settle_by = time.monotonic() + 3 * config.stream.gop_seconds + 5
        while not all(r.settled() for r in readers) and time.monotonic() < settle_by:
            time.sleep(0.1)
        time.sleep(config.warmup)
        window = config.window(fps)
        callers = {r.native_id for r in readers if r.native_id is not None}
        start, before, counts0 = time.monotonic(), meter.sample(), [r.counters() for r in readers]
        callers0 = _threads_seconds(callers)
        time.sleep(window)
        end, after, counts1 = time.monotonic(), meter.sample(), [r.counters() for r in readers]
        callers1 = _threads_seconds(callers)
        keyframes_only = sum(r.keyframes_only() for r in readers)
        gops = [g for g in (r.gop() for r in readers) if g is not None]
    finally:
        for r in readers:
            r.stop()
        for r in readers:
            r.join(OPEN_TIMEOUT)
    seconds = end - start
    used = _Used.between(before, after, seconds)
    samples = sum(1 for r in readers for t in r.samples if start <= t < end)
    received = sum(c1[0] - c0[0] for c0, c1 in zip(counts0, counts1, strict=True)) / seconds / cameras
    decoded = sum(c1[1] - c0[1] for c0, c1 in zip(counts0, counts1, strict=True)) / seconds / cameras
    sampled_share = samples / (cameras * fps * seconds)
    stream_share = received / config.stream.fps
    kept_up = sampled_share >= KEEP_UP and stream_share >= KEEP_UP
    name = "Pantau: open_source + letterbox" if path == "pantau" else "naive: cv2.VideoCapture.read()"
    return DecodeRow(
        path=path,
        name=name,
        cameras=cameras,
        fps=fps,
        seconds=round(seconds, 3),
        cores=used.own,
        # Per stream received: a session behind the camera does less work, one draining a backlog more.
        cameras_per_core=cameras * stream_share / max(used.own, 1e-9),
        letterbox_cores=(callers1 - callers0) / seconds if path == "pantau" else None,
        sampled_fps=samples / seconds,
        sampled_pct=100 * sampled_share,
        received_fps=received,
        decoded_fps=decoded,
        keyframes_only=keyframes_only,
        gop_s=float(np.median(gops)) if gops else None,
        kept_up=kept_up,
        errors=sum(r.error is not None for r in readers),
        server_cores=used.server,
        other_cpu_pct=used.other_pct,
    )


def plan(config: IngestConfig) -> Iterator[tuple[PathId, int, float]]:
    """(path, cameras, fps) of every decode row, in the order they run."""
    for fps in config.rates:
        for cameras in config.cameras:
            yield "pantau", cameras, fps
    if config.probe_fps:
        yield "pantau", max(config.cameras), config.probe_fps
    yield "naive", config.naive_cameras, config.goal_fps()


# ----- latency through Triton -----


class _TimedSink:
    """The pod's JSON-lines sink (to a file), noting when each event was published and what it was
    captured at."""

    def __init__(self, inner: EventSink, cameras: int) -> None:
        self._inner = inner
        self._cameras = cameras
        self.records: list[tuple[float, float]] = []  # (published at, captured at), wall clock
        self.seen: set[str] = set()
        self.every_camera = asyncio.Event()  # each camera published an event

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def stats(self) -> SinkStats:
        return self._inner.stats

    async def publish(self, event: Event) -> None:
        await self._inner.publish(event)
        if not isinstance(event, DetectionEvent):
            return  # analytics events: the latency is the frame's, timed on its detection event
        self.records.append((time.time(), event.timestamp.timestamp()))
        self.seen.add(event.camera)
        if len(self.seen) >= self._cameras:
            self.every_camera.set()

    async def aclose(self, grace: float = 10.0) -> None:
        await self._inner.aclose(grace)


def load_model(model_path: Path, endpoints: Endpoints, options: builder.BuildOptions) -> None:
    """The cpu repository (as `pantau model build`) built into the server's repository; the detector
    model (re)loaded."""
    builder.build(model_path, endpoints.model_repository, options)
    client = triton_grpc.InferenceServerClient(endpoints.grpc)
    try:
        client.load_model(contract.MODEL)
        if not client.is_model_ready(contract.MODEL, contract.VERSION):
            raise StackError(f"Triton did not load {contract.MODEL}")
    finally:
        client.close()


# ----- where the time goes -----

_METRIC = re.compile(r"^(nv_inference_\w+)\{([^}]*)\}\s+(\S+)$", re.MULTILINE)


def triton_counters(metrics: str | None) -> dict[str, float]:
    """The detector model's cumulative `nv_inference_*` counters; empty when they cannot be read."""
    if not metrics:
        return {}
    try:
        text = httpx.get(f"{metrics}/metrics", timeout=2).text
    except httpx.HTTPError:
        return {}
    return {
        name: float(value)
        for name, labels, value in _METRIC.findall(text)
        if f'model="{contract.MODEL}"' in labels
    }


@dataclass(frozen=True)
class ServerTimes:
    """Triton's view of a window, means per request (its durations count each request of a batch)."""

    request_ms: float  # received -> response sent
    queue_ms: float  # waiting for a model instance (and the dynamic batcher's delay)
    compute_ms: float  # inputs to the backend, execution, outputs back
    frames_per_request: float
    frames_per_execution: float

    @classmethod
    def between(cls, before: dict[str, float], after: dict[str, float]) -> ServerTimes:
        def delta(name: str) -> float:
            return after.get(name, math.nan) - before.get(name, math.nan)

        requests = delta("nv_inference_request_success")
        if not requests > 0:
            return cls(math.nan, math.nan, math.nan, math.nan, math.nan)
        compute = sum(
            delta(f"nv_inference_compute_{part}_duration_us") for part in ("input", "infer", "output")
        )
        return cls(
            request_ms=delta("nv_inference_request_duration_us") / requests / 1000,
            queue_ms=delta("nv_inference_queue_duration_us") / requests / 1000,
            compute_ms=compute / requests / 1000,
            frames_per_request=delta("nv_inference_count") / requests,
            frames_per_execution=delta("nv_inference_count") / delta("nv_inference_exec_count"),
        )


def stage_times(spans: Sequence[ReadableSpan], start: float, end: float) -> tuple[list[float], list[float]]:
    """ms from capture to the Triton call, and from the call's end to the event published, of each frame
    whose event was published within [start, end) (wall clock, seconds)."""
    frames: defaultdict[int, dict[str, ReadableSpan]] = defaultdict(dict)
    for span in spans:
        if span.context is not None:
            frames[span.context.trace_id][span.name] = span
    to_call: list[float] = []
    after_call: list[float] = []
    for frame in frames.values():
        decode, infer = frame.get(telemetry.SPAN_READ_DECODE), frame.get(telemetry.SPAN_INFER)
        publish = frame.get(telemetry.SPAN_PUBLISH)
        if decode is None or infer is None or publish is None:
            continue
        times = (decode.end_time, infer.start_time, infer.end_time, publish.end_time)
        if None in times or not start * 1e9 <= (publish.end_time or 0) < end * 1e9:
            continue
        captured, called, answered, published = (int(t or 0) for t in times)
        to_call.append((called - captured) / 1e6)
        after_call.append((published - answered) / 1e6)
    return to_call, after_call


def _percentiles(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    p50, p99 = np.percentile(values, [50, 99])
    return float(p50), float(p99)


@dataclass
class _Window:
    """What one latency window collected."""

    start: float = 0.0  # wall clock
    end: float = 0.0
    used: _Used | None = None
    infer_ms: list[float] = field(default_factory=list)  # the workers' Triton calls
    dropped: int = 0
    server: ServerTimes | None = None


async def measure_latency(
    url: str,
    endpoints: Endpoints,
    config: IngestConfig,
    load: tuple[int, float],
    meter: _Meter,
    events_path: Path,
) -> LatencyResult:
    """`n` CameraWorkers sampling at `fps`, as in an ingest pod, over one window."""
    n, fps = load
    provider = telemetry.setup_tracing("pantau-bench-ingest", {"pantau.site": "bench"})
    spans = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    sink = _TimedSink(JsonLinesSink(events_path, name="events-file"), n)
    spec = CameraSpec.model_validate(
        {"siteRef": {"name": "bench"}, "source": {"url": url, "protocol": "rtsp"}, "sampling": {"fps": fps}}
    )
    settings = ClientSettings(url=endpoints.grpc)
    if config.max_batch is not None:
        settings = replace(settings, max_batch=config.max_batch)
    try:
        detector = await Detector.connect(settings)
    except InferenceError as exc:
        raise StackError(f"Triton at {endpoints.grpc}: {exc}") from exc
    async with detector:
        ctx = PodContext(
            namespace="bench",
            site="bench",
            pod="bench-ingest-0",
            model=contract.MODEL,
            detector=detector,
            sink=sink,
            tracer=telemetry.get_tracer(provider),
            defaults=CameraDefaults(fps=fps),
        )
        workers = [CameraWorker(f"cam-{i}", f"bench-{i}", spec, None, ctx) for i in range(n)]
        for w in workers:
            w.start()
        try:
            window = await _measure_window(workers, sink, config, meter, endpoints)
        finally:
            await asyncio.gather(*(w.stop() for w in workers))
            await sink.aclose(grace=2)
            telemetry.shutdown(provider, timeout=2)
    to_call, after_call = stage_times(spans.get_finished_spans(), window.start, window.end)
    return _latency_result(load, sink, window, to_call, after_call)


async def _measure_window(
    workers: Sequence[CameraWorker],
    sink: _TimedSink,
    config: IngestConfig,
    meter: _Meter,
    endpoints: Endpoints,
) -> _Window:
    """Once every camera published, after the warm-up: one window of `latency_seconds`."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(sink.every_camera.wait(), OPEN_TIMEOUT + 5)
    if not sink.records:
        reasons = {f"{w.stats.reason}: {w.stats.message}" for w in workers}
        raise StackError(f"no camera worker processed a frame: {sorted(reasons)}")
    await asyncio.sleep(config.warmup)
    window = _Window()
    before = await asyncio.to_thread(meter.sample)
    counters0 = await asyncio.to_thread(triton_counters, endpoints.metrics)
    window.start, first = time.time(), [len(w.stats.latencies_ms) for w in workers]
    dropped0 = sum(sum(w.stats.dropped.values()) for w in workers)
    await asyncio.sleep(config.latency_seconds)
    after = await asyncio.to_thread(meter.sample)
    counters1 = await asyncio.to_thread(triton_counters, endpoints.metrics)
    window.end = time.time()
    window.infer_ms = [
        ms for w, k in zip(workers, first, strict=True) for ms in list(w.stats.latencies_ms)[k:]
    ]
    window.dropped = sum(sum(w.stats.dropped.values()) for w in workers) - dropped0
    window.used = _Used.between(before, after, window.end - window.start)
    window.server = ServerTimes.between(counters0, counters1)
    return window


def _latency_result(
    load: tuple[int, float], sink: _TimedSink, window: _Window, to_call: list[float], after_call: list[float]
) -> LatencyResult:
    n, fps = load
    seconds = window.end - window.start
    latencies = [(p - c) * 1000 for p, c in sink.records if window.start <= p < window.end]
    if not latencies or window.used is None or window.server is None:
        raise StackError("no event was published inside the latency window")
    used, server = window.used, window.server
    share = len(latencies) / (n * fps * seconds)
    p50, p99 = _percentiles(latencies)
    i50, i99 = _percentiles(window.infer_ms)
    infer_mean = float(np.mean(window.infer_ms)) if window.infer_ms else math.nan
    (c50, c99), (a50, a99) = _percentiles(to_call), _percentiles(after_call)
    return LatencyResult(
        cameras=n,
        fps=fps,
        seconds=round(seconds, 3),
        events=len(latencies),
        events_pct=100 * share,
        p50_ms=p50,
        p99_ms=p99,
        max_ms=max(latencies),
        infer_p50_ms=i50,
        infer_p99_ms=i99,
        to_call_p50_ms=c50,
        to_call_p99_ms=c99,
        after_call_p50_ms=a50,
        after_call_p99_ms=a99,
        infer_mean_ms=infer_mean,
        client_side_ms=infer_mean - server.request_ms,
        server_queue_ms=server.queue_ms,
        server_compute_ms=server.compute_ms,
        frames_per_request=server.frames_per_request,
        frames_per_execution=server.frames_per_execution,
        dropped=window.dropped,
        kept_up=share >= KEEP_UP,
        ingest_cores=used.own,
        triton_cores=used.triton,
        server_cores=used.server,
        other_cpu_pct=used.other_pct,
    )


# ----- the run -----


@contextlib.contextmanager
def stack_endpoints(
    state_dir: Path | None, progress: Callable[[str], None] = lambda _: None
) -> Iterator[Endpoints]:
    """Triton of the running stack at `state_dir`, or of a throwaway stack (Triton and a control plane only)
    started now and stopped on exit."""
    if state_dir is not None:
        yield Endpoints.of_stack(DevStack(DevSettings(state_dir=state_dir)))
        return
    with tempfile.TemporaryDirectory(prefix="pantau-bench-") as tmp:
        stack = DevStack(DevSettings(state_dir=Path(tmp), kwok_nodes=0, with_jaeger=False, real_node=False))
        try:
            progress("starting a throwaway local stack for Triton")
            stack.up()
            yield Endpoints.of_stack(stack)
        finally:
            stack.down()


def run(
    config: IngestConfig,
    footage: Path,
    model_path: Path,
    triton: Callable[[], AbstractContextManager[Endpoints]],
    progress: Callable[[str], None] = lambda _: None,
) -> Report:
    """Decode rows first (no Triton running: less noise), then the latency through `triton()`."""
    size = input_size(model_path)
    s = config.stream
    mount = RtspMount(
        path=MOUNT,
        file=footage,
        fps=s.fps,
        width=s.width,
        height=s.height,
        keyframe_interval=s.keyframe_interval,
    )
    with tempfile.TemporaryDirectory(prefix="pantau-bench-ingest-") as tmp:
        work = Path(tmp)
        table = ProcessTable(work / "pids", work / "logs")
        progress(f"starting the RTSP test camera: {s.describe()}")
        with RtspCameraServer(table, CAMERA_NAME, free_port(), [mount], work) as camera:
            url = camera.url(MOUNT)
            record = table.running(CAMERA_NAME)
            meter = _Meter(record.pid if record else None)
            rows: list[DecodeRow] = []
            for path, cameras, fps in plan(config):
                progress(f"{path}: {cameras} cameras at {fps:g} fps")
                rows.append(measure_decode(path, url, cameras, fps, size, config, meter))
            with triton() as endpoints:
                progress("building and loading the detector model")
                load_model(model_path, endpoints, config.build)
                meter = _Meter(record.pid if record else None, endpoints.server_pid)
                latency: list[LatencyResult] = []
                for load in config.latency_loads:
                    progress(f"latency: {load[0]} cameras at {load[1]:g} fps through Triton")
                    events = work / f"events-{load[0]}x{load[1]:g}.jsonl"
                    latency.append(asyncio.run(measure_latency(url, endpoints, config, load, meter, events)))
    return Report(
        date=datetime.now(UTC).isoformat(timespec="seconds"),
        machine=f"{cpu_model()}, {cores()} cores, {platform.system()} {platform.release()}",
        cores=cores(),
        footage=footage.name,
        model=model_path.name,
        stream=s.describe(),
        config=config,
        rows=rows,
        latency=latency,
        goals=goals(rows, latency, config),
        notes=notes(rows, latency, config),
    )


def _best(rows: Sequence[DecodeRow], path: PathId, fps: float) -> DecodeRow | None:
    """The row with the most cameras per core at `fps`, rows that kept up first."""
    candidates = [r for r in rows if r.path == path and r.fps == fps]
    return max(candidates, key=lambda r: (r.kept_up, r.cameras_per_core), default=None)


def naive_row(rows: Sequence[DecodeRow]) -> DecodeRow | None:
    return next((r for r in rows if r.path == "naive"), None)


def goals(rows: Sequence[DecodeRow], latency: Sequence[LatencyResult], config: IngestConfig) -> list[Goal]:
    out: list[Goal] = []
    fps = config.goal_fps()
    best, naive = _best(rows, "pantau", fps), naive_row(rows)
    if best is not None:
        detail = f"{best.cameras} cameras on {best.cores:.3f} cores" + ("" if best.kept_up else ", saturated")
        met = best.kept_up and best.cameras_per_core >= GOAL_CAMERAS_PER_CORE
        out.append(
            Goal(
                f"cameras/core at {fps:g} fps",
                f">= {GOAL_CAMERAS_PER_CORE:g}",
                best.cameras_per_core,
                met,
                detail,
            )
        )
        if naive is not None and naive.cameras_per_core > 0:
            ratio = best.cameras_per_core / naive.cameras_per_core
            out.append(
                Goal(
                    f"cameras/core at {fps:g} fps / naive",
                    f">= {GOAL_VS_NAIVE:g}x",
                    ratio,
                    best.kept_up and ratio >= GOAL_VS_NAIVE,
                    f"{best.cameras_per_core:.1f} vs {naive.cameras_per_core:.1f} "
                    f"({naive.cameras} naive cameras)",
                )
            )
    if latency:
        nominal = latency[0]
        load = f"{nominal.cameras} cameras at {nominal.fps:g} fps, {nominal.events} events"
        for name, value, target in (
            ("capture -> event p50 ms", nominal.p50_ms, GOAL_P50_MS),
            ("capture -> event p99 ms", nominal.p99_ms, GOAL_P99_MS),
        ):
            out.append(Goal(name, f"<= {target:g}", value, nominal.kept_up and value <= target, load))
    return out


def notes(rows: Sequence[DecodeRow], latency: Sequence[LatencyResult], config: IngestConfig) -> list[str]:
    """What the numbers say about their limits, read off the rows."""
    out: list[str] = []
    gop = config.stream.gop_seconds
    for fps in sorted({r.fps for r in rows if r.path == "pantau"}):
        full = [r for r in rows if r.path == "pantau" and r.fps == fps and r.keyframes_only < r.cameras]
        if full and 1 / fps >= gop:
            measured = ", ".join(fmt(r.gop_s, 2) for r in full)
            out.append(
                f"pantau at {fps:g} fps: a sample every {1 / fps:.3g} s and a keyframe every {gop:g} s "
                f"(measured {measured} s), yet sessions decoded every frame: keyframes-only decoding starts "
                f"once the sample interval exceeds {KEYFRAMES_ONLY_ABOVE:g} x the keyframe interval"
            )
    for r in rows:
        label = f"{r.path} {r.cameras} cameras at {r.fps:g} fps"
        if not r.kept_up:
            out.append(
                f"{label}: saturated ({r.sampled_pct:.0f}% of samples, {r.received_fps:.1f} of "
                f"{config.stream.fps} stream frames/s per camera)"
            )
        if r.errors:
            out.append(f"{label}: {r.errors} session(s) failed")
    for lat in latency:
        if not lat.kept_up:
            out.append(
                f"latency at {lat.cameras} x {lat.fps:g} fps: {lat.events_pct:.0f}% of the events published, "
                f"{lat.dropped} samples dropped: over this machine's capacity, the latency is queueing"
            )
    if rows:
        server = max(r.server_cores for r in rows)
        out.append(f"the camera server (one shared x264 encoder, excluded) used up to {server:.2f} cores")
        other = max(r.other_cpu_pct for r in rows)
        out.append(f"other processes used up to {other:.0f}% of the machine during a row")
    return out


# ----- output -----


def render(report: Report, console: Console) -> None:
    cfg = report.config
    console.print(
        f"[bold]pantau bench ingest[/bold]  {report.date}  {report.machine}\n"
        f"one RTSP camera, shared mount: {report.stream} from {report.footage}\n"
        f"{cfg.seconds:g} s per row (whole sample intervals) after {cfg.warmup:g} s warm-up; "
        f"model {report.model} for the latency"
    )
    naive = naive_row(report.rows)
    table = Table(title="Cameras per core: sessions reading, decoding and letterboxing (Triton excluded)")
    for column in ("path", "cameras", "fps/cam", "cores", "cameras/core", "x naive", "sampled %"):
        table.add_column(column, justify="left" if column == "path" else "right", no_wrap=column == "path")
    for column in ("letterbox cores", "recv f/s/cam", "decoded f/s/cam", "kf-only", "GOP s", "kept up"):
        table.add_column(column, justify="right")
    table.add_column("server cores", justify="right", style="dim")
    table.add_column("other load %", justify="right", style="dim")
    for r in report.rows:
        ratio = r.cameras_per_core / naive.cameras_per_core if naive and naive.cameras_per_core else None
        table.add_row(
            r.name,
            str(r.cameras),
            f"{r.fps:g}",
            fmt(r.cores, 3),
            fmt(r.cameras_per_core),
            fmt(ratio, 2) if r.path == "pantau" else "",
            fmt(r.sampled_pct, 0),
            fmt(r.letterbox_cores, 3),
            fmt(r.received_fps),
            fmt(r.decoded_fps),
            f"{r.keyframes_only}/{r.cameras}" if r.path == "pantau" else "-",
            fmt(r.gop_s, 2),
            "yes" if r.kept_up else "[red]no[/red]",
            fmt(r.server_cores, 2),
            fmt(r.other_cpu_pct, 0),
        )
    console.print(table)

    if report.latency:
        latency = Table(title="Capture -> event latency through Triton (CameraWorker, JSON-lines sink)")
        for column in (
            "load",
            "cameras",
            "fps/cam",
            "events",
            "events %",
            "p50 ms",
            "p99 ms",
            "max ms",
            "Triton call p50 / p99 ms",
            "dropped",
            "ingest cores",
            "Triton cores",
            "server cores",
            "other load %",
        ):
            latency.add_column(column, justify="left" if column == "load" else "right")
        for i, lat in enumerate(report.latency):
            latency.add_row(
                "nominal" if i == 0 else "",
                str(lat.cameras),
                f"{lat.fps:g}",
                str(lat.events),
                fmt(lat.events_pct, 0),
                fmt(lat.p50_ms),
                fmt(lat.p99_ms),
                fmt(lat.max_ms),
                f"{fmt(lat.infer_p50_ms)} / {fmt(lat.infer_p99_ms)}",
                str(lat.dropped),
                fmt(lat.ingest_cores, 3),
                fmt(lat.triton_cores, 3),
                fmt(lat.server_cores, 2),
                fmt(lat.other_cpu_pct, 0),
            )
        console.print(latency)
        _render_breakdown(report.latency, console)

    summary = Table(title="Goals")
    for column in ("goal", "target", "reached", "", "measured on"):
        summary.add_column(column)
    for g in report.goals:
        mark = "[green]met[/green]" if g.met else "[red]not met[/red]"
        summary.add_row(g.name, g.target, f"{g.value:.2f}", mark, g.detail)
    console.print(summary)
    for note in report.notes:
        console.print(f"- {note}")


def _render_breakdown(results: Sequence[LatencyResult], console: Console) -> None:
    table = Table(
        title="Where the time goes: per frame from its spans (p50 / p99), the Triton call's mean split "
        "with Triton's metrics (means per request)"
    )
    for column in (
        "cameras x fps",
        "capture -> call ms",
        "call ms",
        "call mean ms",
        "client side ms",
        "server queue ms",
        "server compute ms",
        "call -> event ms",
        "frames/request",
        "frames/execution",
    ):
        table.add_column(column, justify="right")
    for lat in results:
        table.add_row(
            f"{lat.cameras} x {lat.fps:g}",
            f"{fmt(lat.to_call_p50_ms)} / {fmt(lat.to_call_p99_ms)}",
            f"{fmt(lat.infer_p50_ms)} / {fmt(lat.infer_p99_ms)}",
            fmt(lat.infer_mean_ms),
            fmt(lat.client_side_ms),
            fmt(lat.server_queue_ms),
            fmt(lat.server_compute_ms),
            f"{fmt(lat.after_call_p50_ms)} / {fmt(lat.after_call_p99_ms)}",
            fmt(lat.frames_per_request, 2),
            fmt(lat.frames_per_execution, 2),
        )
    console.print(table)


def parse_counts(value: str) -> tuple[int, ...]:
    """'8,16' -> (8, 16); ValueError unless every item is a positive integer."""
    counts = tuple(int(v) for v in value.split(",") if v.strip())
    if not counts or min(counts) < 1:
        raise ValueError("give positive integers, comma-separated, e.g. 8,16")
    return counts


def parse_loads(value: str) -> tuple[tuple[int, float], ...]:
    """'8x2,2x1' -> ((8, 2.0), (2, 1.0)): cameras x fps per camera."""
    loads: list[tuple[int, float]] = []
    for item in (v.strip() for v in value.split(",") if v.strip()):
        cameras, sep, fps = item.lower().partition("x")
        if not sep:
            raise ValueError(f"{item!r}: give CAMERASxFPS, e.g. 8x2")
        loads.append((int(cameras), float(fps)))
    if not loads or min(n for n, _ in loads) < 1 or min(f for _, f in loads) <= 0:
        raise ValueError("give CAMERASxFPS items, comma-separated, e.g. 8x2,2x1")
    return tuple(loads)


def parse_rates(value: str) -> tuple[float, ...]:
    """'0.5,5' -> (0.5, 5.0); ValueError unless every item is a positive number."""
    rates = tuple(float(v) for v in value.split(",") if v.strip())
    if not rates or min(rates) <= 0:
        raise ValueError("give positive numbers, comma-separated, e.g. 0.5,5")
    return rates
