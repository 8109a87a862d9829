"""`pantau bench inference`: what the detector's serving path delivers, against its own limit.

Three paths take the same decoded BGR frames to the same detections (same network, same numpy
post-processing, the same onnxruntime thread setting on both sides of the wire):

- (a) in-process onnxruntime (`LocalDetector`): no server and no wire, so the limit of these cores.
- (b) Pantau's client (`Detector`): async gRPC to Triton, batching frames across callers; the uint8
  wire (letterboxed pixels) and the JPEG wire.
- (c) a naive client: synchronous HTTP (tritonclient's defaults), one float32 NCHW frame per
  request, the export's own input, to a Python-backend model generated here (`yolox_fp32`) that
  runs the original export.

Timed work starts at a decoded frame and includes the client's own preparation (letterbox, JPEG
encoding or float conversion), because that is what an ingest pod pays per frame. Latency is per
frame, from submission to detections. Client and Triton share the machine's cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import platform
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import av
import httpx
import numpy as np
import onnx
import psutil
import tritonclient.http as triton_http
from google.protobuf import text_format
from rich.console import Console
from rich.table import Table
from tritonclient import grpc as triton_grpc
from tritonclient.grpc import model_config_pb2 as mc

from pantau.triton import builder, contract, yolox
from pantau.triton.client import ClientSettings, Detector, Wire, encode_jpeg, split_result
from pantau.triton.local import LocalDetector
from pantau_dev.bench.machine import cores, cpu_model, fmt
from pantau_dev.procs import StackError
from pantau_dev.stack import DevStack

FP32_MODEL = "yolox_fp32"
FP32_INPUT = "IMAGES"
MB = 1e6  # goals and tables use decimal megabytes

# Issue goals: (b) >= 0.85 x (a); (b) >= 2 x (c); <= 0.25 MB on the wire per frame.
GOAL_VS_LOCAL = 0.85
GOAL_VS_NAIVE = 2.0
GOAL_MB_PER_FRAME = 0.25

PathId = Literal["a", "b", "c"]


@dataclass(frozen=True)
class BenchConfig:
    frames: int = 64  # decoded once, cycled through by every caller of every path
    seconds: float = 2.0  # measured window per row and round
    warmup: float = 0.5  # per row and round, before the window opens
    rounds: int = 3  # the whole sweep again, rows pooled over the rounds (spreads others' load evenly)
    concurrency: tuple[int, ...] = (1, 4, 8)
    max_batch: int = 8  # Pantau client's batch limit, and the batch of the batched (a) row
    wire_frames: int = 16  # frames sent one at a time through the byte-counting relay
    build: builder.BuildOptions = field(default_factory=builder.BuildOptions)

    def __post_init__(self) -> None:
        counts = (self.frames, self.wire_frames, self.rounds, *self.concurrency)
        if not self.concurrency or min(counts) < 1:
            raise ValueError("frames, wire_frames, rounds and every concurrency must be at least 1")
        if self.seconds <= 0 or self.warmup < 0:
            raise ValueError("seconds must be positive and warmup not negative")
        if not 1 <= self.max_batch <= contract.MAX_BATCH:
            raise ValueError(f"max_batch must be within 1..{contract.MAX_BATCH}")


@dataclass(frozen=True)
class Endpoints:
    """Where the benchmark reaches Triton, and what it measures of it."""

    grpc: str  # host:port
    http: str  # host:port
    model_repository: Path  # the server's repository (explicit model control)
    metrics: str | None = None  # base URL of Triton's Prometheus metrics
    server_pid: int | None = None  # tritonserver, whose process tree's CPU time is measured

    @classmethod
    def of_stack(cls, stack: DevStack) -> Endpoints:
        info = stack.status()
        record = stack.procs.running("triton")
        if record is None or not info.triton_grpc or not info.triton_http or not info.model_repository:
            raise StackError(
                f"no Triton running in the stack at {stack.state} (start it with `pantau dev up`)"
            )
        return cls(
            grpc=info.triton_grpc,
            http=info.triton_http.removeprefix("http://"),
            model_repository=Path(info.model_repository),
            metrics=info.triton_metrics,
            server_pid=record.pid,
        )


@dataclass(frozen=True)
class Row:
    path: PathId
    name: str
    wire: str
    concurrency: int
    batch: int  # frames per call for (a) and (c); the client's batch limit for (b)
    frames: int  # completed inside the window
    seconds: float
    fps: float
    p50_ms: float | None
    p99_ms: float | None
    client_cpu_ms: float | None  # CPU time of this process per frame
    server_cpu_ms: float | None  # CPU time of tritonserver and its backend stubs per frame
    backend_cpu_ms: float | None  # of which the Python-backend stubs (model code, onnxruntime)
    server_batch: float | None  # mean batch the detector model executed (Triton's metrics)
    other_cpu_pct: float | None  # share of the machine busy with other processes: noise
    cpu_bound_fps: float | None  # what the CPU time per frame (client + Triton) allows on all cores


@dataclass(frozen=True)
class WireSize:
    wire: str
    model: str
    tensor_bytes: float  # input tensor payload per frame
    request_bytes: float  # measured: TCP payload client -> Triton per frame (headers, framing included)
    response_bytes: float  # measured: TCP payload Triton -> client per frame
    detections: int  # on the first frame: the same work on every path


@dataclass(frozen=True)
class Goal:
    name: str
    target: str
    value: float  # measured; decides `met`
    met: bool
    detail: str
    cpu_bound: float | None = None  # the same ratio from CPU time per frame: robust to others' load


@dataclass(frozen=True)
class Report:
    date: str
    machine: str
    cores: int
    model: str
    footage: str
    config: BenchConfig
    rows: list[Row]  # each row's rounds pooled
    runs: list[Row]  # every round on its own, in the order they ran
    wire: list[WireSize]
    goals: list[Goal]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)


# ----- frames and models -----


def load_frames(footage: Path, count: int) -> list[np.ndarray]:
    """The first `count` frames of a clip, decoded once to BGR."""
    frames: list[np.ndarray] = []
    with av.open(str(footage)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="bgr24"))
            if len(frames) == count:
                break
    if not frames:
        raise ValueError(f"no frames in {footage}")
    return frames


def input_size(model_path: Path) -> int:
    """S of the export's [1, 3, S, S] input (builder.prepare_onnx validates the rest)."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    return int(graph.input[0].type.tensor_type.shape.dim[2].dim_value)


# The naive baseline's server side, written into the model repository by `write_fp32_model`.
_FP32_MODEL_PY = '''"""Triton Python-backend model `yolox_fp32`, written by `pantau bench inference`
as the naive baseline: one float32 NCHW frame per request, the original export, the shared
post-processing."""

import json
import os
import sys
from pathlib import Path

# As in triton/backends/yolox/model.py: the embedded interpreter ignores PYTHONPATH (numpy<2 is there).
sys.path.extend(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path)

import onnxruntime as ort
import triton_python_backend_utils as pb_utils
import yolox

OUTPUTS = ("NUM_DETECTIONS", "BOXES", "SCORES", "CLASSES")


class TritonPythonModel:
    def initialize(self, args):
        params = {k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()}
        self.size = int(params["input_size"])
        self.score = float(params["score_threshold"])
        self.iou = float(params["iou_threshold"])
        self.max_det = int(params["max_detections"])
        options = ort.SessionOptions()
        yolox.tune_session(options, int(params["intra_op_threads"]))  # as the yolox model's session
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name

    def execute(self, requests):
        responses = []
        for request in requests:
            image = pb_utils.get_input_tensor_by_name(request, "IMAGES").as_numpy()
            h, w = (int(v) for v in pb_utils.get_input_tensor_by_name(request, "ORIG_HW").as_numpy()[0])
            raw = self.session.run([self.output], {self.input: image})[0][0]
            found = yolox.postprocess(raw, self.size, (h, w), self.score, self.iou, self.max_det)
            padded = yolox.pad_detections(*found, self.max_det)
            responses.append(
                pb_utils.InferenceResponse([pb_utils.Tensor(n, o[None]) for n, o in zip(OUTPUTS, padded)])
            )
        return responses
'''


def fp32_config(size: int, options: builder.BuildOptions) -> mc.ModelConfig:
    """No batching at all (max_batch_size 0, the export's fixed batch of 1): the naive way."""
    config = mc.ModelConfig(name=FP32_MODEL, backend="python", max_batch_size=0)
    config.input.append(mc.ModelInput(name=FP32_INPUT, data_type=mc.TYPE_FP32, dims=[1, 3, size, size]))
    config.input.append(
        mc.ModelInput(name=contract.ORIG_HW.name, data_type=mc.TYPE_INT32, dims=[1, *contract.ORIG_HW.dims])
    )
    config.output.extend(
        mc.ModelOutput(name=t.name, data_type=mc.DataType.Value(t.dtype), dims=[1, *t.dims])
        for t in contract.OUTPUTS
    )
    config.instance_group.append(
        mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=options.instances)
    )
    params = {
        "input_size": str(size),
        "score_threshold": str(contract.SCORE_THRESHOLD),
        "iou_threshold": str(contract.IOU_THRESHOLD),
        "max_detections": str(contract.MAX_DETECTIONS),
        "intra_op_threads": str(options.intra_op_threads),
    }
    for key, value in params.items():
        config.parameters[key].string_value = value
    return config


def write_fp32_model(model_path: Path, repository: Path, options: builder.BuildOptions) -> Path:
    folder = repository / FP32_MODEL
    if folder.exists():
        shutil.rmtree(folder)
    version = folder / contract.VERSION
    version.mkdir(parents=True)
    config = fp32_config(input_size(model_path), options)
    (folder / "config.pbtxt").write_text(text_format.MessageToString(config))
    (version / "model.py").write_text(_FP32_MODEL_PY)
    shutil.copy2(Path(yolox.__file__), version / "yolox.py")
    shutil.copy2(model_path, version / "model.onnx")  # the original export, batch fixed at 1
    return folder


def prepare_models(model_path: Path, endpoints: Endpoints, options: builder.BuildOptions) -> None:
    """Build the cpu repository plus the naive model into the server's repository, then (re)load."""
    builder.build(model_path, endpoints.model_repository, options)
    write_fp32_model(model_path, endpoints.model_repository, options)
    client = triton_grpc.InferenceServerClient(endpoints.grpc)
    try:
        for name in (contract.MODEL, contract.JPEG_MODEL, FP32_MODEL):  # yolox_jpeg calls yolox
            client.load_model(name)
            if not client.is_model_ready(name, contract.VERSION):
                raise RuntimeError(f"Triton did not load {name}")
    finally:
        client.close()


# ----- measuring -----


@dataclass(frozen=True)
class _Window:
    start: float
    end: float

    @classmethod
    def after_warmup(cls, config: BenchConfig) -> _Window:
        start = time.perf_counter() + config.warmup
        return cls(start, start + config.seconds)


def _sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.perf_counter()))


@dataclass(frozen=True)
class _Sample:
    client: float  # CPU seconds
    server: float  # tritonserver and its children
    backend: float  # its children alone: the Python-backend stubs
    busy: float  # machine-wide busy CPU seconds
    counters: tuple[float, float] | None  # the detector model's (inferences, executions)


_COUNTER = re.compile(r"^(nv_inference_count|nv_inference_exec_count)\{([^}]*)\}\s+(\S+)$", re.MULTILINE)


class _Meter:
    """CPU time of this process, of Triton's process tree and of the machine; Triton's counters."""

    def __init__(self, endpoints: Endpoints) -> None:
        self._me = psutil.Process()
        self._server: psutil.Process | None = None
        if endpoints.server_pid:
            with contextlib.suppress(psutil.Error):
                self._server = psutil.Process(endpoints.server_pid)
        self._metrics = endpoints.metrics

    def sample(self) -> _Sample:
        counters = None
        if self._metrics:
            with contextlib.suppress(httpx.HTTPError, KeyError):
                text = httpx.get(f"{self._metrics}/metrics", timeout=2).text
                found = {
                    name: float(value)
                    for name, labels, value in _COUNTER.findall(text)
                    if f'model="{contract.MODEL}"' in labels
                }
                counters = (found["nv_inference_count"], found["nv_inference_exec_count"])
        cpu = psutil.cpu_times()
        return _Sample(
            client=_cpu_seconds(self._me),
            server=_cpu_seconds(self._server) + _children_cpu_seconds(self._server),
            backend=_children_cpu_seconds(self._server),
            busy=cpu.user + cpu.nice + cpu.system + cpu.irq + cpu.softirq,
            counters=counters,
        )


def _cpu_seconds(proc: psutil.Process | None) -> float:
    if proc is None:
        return 0.0
    with contextlib.suppress(psutil.Error):
        t = proc.cpu_times()
        return float(t.user + t.system)
    return 0.0


def _children_cpu_seconds(proc: psutil.Process | None) -> float:
    if proc is None:
        return 0.0
    with contextlib.suppress(psutil.Error):
        return sum(_cpu_seconds(p) for p in proc.children(recursive=True))
    return 0.0


class _Recorder:
    """(submitted, done, frames) per call; appends are atomic, so callers on threads share one."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, float, int]] = []

    def add(self, submitted: float, frames: int) -> None:
        self.calls.append((submitted, time.perf_counter(), frames))


@dataclass(frozen=True)
class Label:
    path: PathId
    name: str
    wire: str
    concurrency: int
    batch: int

    @property
    def key(self) -> tuple[PathId, str, int, int]:
        return self.path, self.wire, self.concurrency, self.batch


@dataclass(frozen=True)
class Measurement:
    """One row's window in one round; `pool` merges the rounds of a row."""

    label: Label
    latencies_ms: tuple[float, ...]  # one per frame finished inside the window
    seconds: float
    client_cpu: float  # seconds
    server_cpu: float
    backend_cpu: float
    other_cpu: float
    batch_counts: tuple[float, float]  # the detector model's (inferences, executions); 0, 0 if unknown


def _measure(
    label: Label, recorder: _Recorder, window: _Window, before: _Sample, after: _Sample
) -> Measurement:
    """Throughput counts calls that finished inside the window; latency is each such frame's."""
    done = [(s, d, n) for s, d, n in recorder.calls if window.start <= d <= window.end]
    client = after.client - before.client
    server = after.server - before.server
    counts = (0.0, 0.0)
    if before.counters and after.counters:
        counts = (after.counters[0] - before.counters[0], after.counters[1] - before.counters[1])
    return Measurement(
        label=label,
        latencies_ms=tuple(float((d - s) * 1000) for s, d, n in done for _ in range(n)),
        seconds=window.end - window.start,
        client_cpu=client,
        server_cpu=server,
        backend_cpu=after.backend - before.backend,
        other_cpu=max(0.0, (after.busy - before.busy) - client - server),
        batch_counts=counts,
    )


def pool(measurements: Sequence[Measurement]) -> Row:
    """One row from its rounds: frames over the summed windows, latencies pooled, CPU per frame."""
    label = measurements[0].label
    latencies = [x for m in measurements for x in m.latencies_ms]
    frames = len(latencies)
    seconds = sum(m.seconds for m in measurements)
    per_frame = 1000 / frames if frames else None
    served = label.path != "a"
    inferences, executions = (sum(m.batch_counts[i] for m in measurements) for i in (0, 1))

    def cpu_ms(total: float, when: bool = True) -> float | None:
        return total * per_frame if per_frame and when else None

    client_ms = cpu_ms(sum(m.client_cpu for m in measurements))
    server_ms = cpu_ms(sum(m.server_cpu for m in measurements), served)
    total_ms = (client_ms or 0) + (server_ms or 0)
    return Row(
        path=label.path,
        name=label.name,
        wire=label.wire,
        concurrency=label.concurrency,
        batch=label.batch,
        frames=frames,
        seconds=round(seconds, 3),
        fps=frames / seconds,
        p50_ms=float(np.percentile(latencies, 50)) if frames else None,
        p99_ms=float(np.percentile(latencies, 99)) if frames else None,
        client_cpu_ms=client_ms,
        server_cpu_ms=server_ms,
        backend_cpu_ms=cpu_ms(sum(m.backend_cpu for m in measurements), served),
        server_batch=inferences / executions if label.path == "b" and executions else None,
        other_cpu_pct=100 * sum(m.other_cpu for m in measurements) / (seconds * cores()),
        cpu_bound_fps=cores() * 1000 / total_ms if total_ms else None,
    )


def _threaded_row(
    label: Label, config: BenchConfig, meter: _Meter, caller: Callable[[int, _Window, _Recorder], None]
) -> Measurement:
    """`caller(index, window, recorder)` on `label.concurrency` threads; samples at the window's edges."""
    recorder = _Recorder()
    window = _Window.after_warmup(config)
    with ThreadPoolExecutor(label.concurrency, thread_name_prefix="bench") as pool:
        futures = [pool.submit(caller, i, window, recorder) for i in range(label.concurrency)]
        _sleep_until(window.start)
        before = meter.sample()
        _sleep_until(window.end)
        after = meter.sample()
        for f in futures:
            f.result()  # re-raises a caller's error
    return _measure(label, recorder, window, before, after)


def _offset(index: int, concurrency: int, frames: Sequence[np.ndarray]) -> int:
    """Callers start spread over the clip, so concurrent frames differ."""
    return index * len(frames) // concurrency


def bench_local(
    local: LocalDetector,
    frames: Sequence[np.ndarray],
    concurrency: int,
    batch: int,
    config: BenchConfig,
    meter: _Meter,
) -> Measurement:
    """(a): callers on threads share one session (thread-safe; onnxruntime releases the GIL)."""

    def caller(index: int, window: _Window, recorder: _Recorder) -> None:
        k = _offset(index, concurrency, frames)
        while time.perf_counter() < window.end:
            chunk = [frames[(k + j) % len(frames)] for j in range(batch)]
            k += batch
            submitted = time.perf_counter()
            local.detect(chunk)  # letterbox, network, post-processing
            recorder.add(submitted, batch)

    return _threaded_row(Label("a", "onnxruntime in-process", "-", concurrency, batch), config, meter, caller)


def naive_inputs(frame: np.ndarray, size: int) -> list[triton_http.InferInput]:
    """The export's own input: letterboxed, NCHW float32; plus the frame's size for the boxes."""
    image = yolox.letterbox(frame, size).transpose(2, 0, 1)[None].astype(np.float32)
    hw = np.array([frame.shape[:2]], dtype=np.int32)
    inputs = [
        triton_http.InferInput(FP32_INPUT, list(image.shape), "FP32"),
        triton_http.InferInput(contract.ORIG_HW.name, list(hw.shape), contract.ORIG_HW.wire_type),
    ]
    inputs[0].set_data_from_numpy(image)
    inputs[1].set_data_from_numpy(hw)
    return inputs


def naive_detect(
    client: triton_http.InferenceServerClient, frame: np.ndarray, size: int
) -> list[contract.Detection]:
    result = client.infer(FP32_MODEL, naive_inputs(frame, size))  # all outputs, as JSON: the defaults
    return split_result({t.name: result.as_numpy(t.name) for t in contract.OUTPUTS})[0]


def bench_naive(
    url: str, size: int, frames: Sequence[np.ndarray], concurrency: int, config: BenchConfig, meter: _Meter
) -> Measurement:
    """(c): each caller thread has its own synchronous client (they are not thread-safe)."""

    def caller(index: int, window: _Window, recorder: _Recorder) -> None:
        client = triton_http.InferenceServerClient(url)
        try:
            k = _offset(index, concurrency, frames)
            while time.perf_counter() < window.end:
                frame = frames[k % len(frames)]
                k += 1
                submitted = time.perf_counter()
                naive_detect(client, frame, size)
                recorder.add(submitted, 1)
        finally:
            client.close()

    label = Label("c", "naive client, sync HTTP", "fp32", concurrency, 1)
    return _threaded_row(label, config, meter, caller)


async def bench_pantau(
    url: str, wire: Wire, frames: Sequence[np.ndarray], concurrency: int, config: BenchConfig, meter: _Meter
) -> Measurement:
    """(b): `concurrency` tasks, each awaiting detect() frame after frame, like cameras of a pod."""
    recorder = _Recorder()
    settings = ClientSettings(url=url, wire=wire, max_batch=config.max_batch)
    async with await Detector.connect(settings) as detector:
        window = _Window.after_warmup(config)

        async def caller(index: int) -> None:
            k = _offset(index, concurrency, frames)
            while time.perf_counter() < window.end:
                frame = frames[k % len(frames)]
                k += 1
                submitted = time.perf_counter()
                await detector.detect(frame)  # prepare (letterbox or JPEG) + batched gRPC
                recorder.add(submitted, 1)

        async def sample_at(t: float) -> _Sample:
            await asyncio.sleep(max(0.0, t - time.perf_counter()))
            return await asyncio.to_thread(meter.sample)  # off the loop the callers run on

        callers = asyncio.gather(*(caller(i) for i in range(concurrency)))
        before = await sample_at(window.start)
        after = await sample_at(window.end)
        await callers
    label = Label("b", "Pantau client, gRPC", wire, concurrency, config.max_batch)
    return _measure(label, recorder, window, before, after)


# ----- bytes on the wire -----


class CountingRelay:
    """A loopback TCP relay, on its own thread, counting the bytes each way: what really crosses."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))
        self.up = 0
        self.down = 0
        self.address = ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), name="relay", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("byte-counting relay did not start")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def reset(self) -> None:
        self.up = self.down = 0

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        self._ready.set()
        async with server:
            await self._stop.wait()
            # Close what clients left open, so every handler ends on EOF instead of being cancelled.
            for writer in self._writers:
                writer.close()
            if self._handlers:
                await asyncio.wait(self._handlers, timeout=5)

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        self._writers.add(client_w)
        try:
            server_r, server_w = await asyncio.open_connection(*self._target)
        except OSError:
            client_w.close()
            return
        self._writers.add(server_w)
        await asyncio.gather(
            self._pipe(client_r, server_w, up=True), self._pipe(server_r, client_w, up=False)
        )

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
        try:
            while data := await src.read(1 << 16):
                if up:
                    self.up += len(data)
                else:
                    self.down += len(data)
                dst.write(data)
                await dst.drain()
        except ConnectionError:
            pass  # either side went away: the other is closed below
        finally:
            dst.close()


async def _pantau_wire(url: str, wire: Wire, frames: Sequence[np.ndarray]) -> tuple[float, float, int]:
    """Bytes per frame, one frame per request (the most overhead per frame), after a first frame
    that opens the connection."""
    with CountingRelay(url) as relay:
        async with await Detector.connect(ClientSettings(url=relay.address, wire=wire, max_batch=1)) as d:
            first = await d.detect(frames[0])
            relay.reset()
            for frame in frames:
                await d.detect(frame)
            up, down = relay.up, relay.down
    return up / len(frames), down / len(frames), len(first)


def _naive_wire(url: str, size: int, frames: Sequence[np.ndarray]) -> tuple[float, float, int]:
    with CountingRelay(url) as relay:
        client = triton_http.InferenceServerClient(relay.address)
        try:
            first = naive_detect(client, frames[0], size)
            relay.reset()
            for frame in frames:
                naive_detect(client, frame, size)
            up, down = relay.up, relay.down
        finally:
            client.close()
    return up / len(frames), down / len(frames), len(first)


def measure_wire(
    endpoints: Endpoints, size: int, frames: Sequence[np.ndarray], local: LocalDetector
) -> list[WireSize]:
    tensors = {
        "uint8": size * size * 3 + 8,  # pixels + ORIG_HW
        "jpeg": float(np.mean([len(encode_jpeg(f)) + 4 for f in frames])),  # + BYTES length prefix
        "fp32": 3 * size * size * 4 + 8,
    }
    out = [WireSize("-", "in-process", 0, 0, 0, len(local.detect([frames[0]])[0]))]
    wires: tuple[tuple[Wire, str], ...] = (("uint8", contract.MODEL), ("jpeg", contract.JPEG_MODEL))
    for wire, model in wires:
        up, down, found = asyncio.run(_pantau_wire(endpoints.grpc, wire, frames))
        out.append(WireSize(wire, model, tensors[wire], up, down, found))
    up, down, found = _naive_wire(endpoints.http, size, frames)
    out.append(WireSize("fp32", FP32_MODEL, tensors["fp32"], up, down, found))
    return out


# ----- the run -----


def plan(config: BenchConfig) -> Iterator[tuple[PathId, str, int, int]]:
    """(path, wire, concurrency, batch) of every row, in the order they are reported."""
    for c in config.concurrency:
        yield "a", "-", c, 1
    if config.max_batch > 1:
        yield "a", "-", 1, config.max_batch
    for wire in ("uint8", "jpeg"):
        for c in config.concurrency:
            yield "b", wire, c, config.max_batch
    for c in config.concurrency:
        yield "c", "fp32", c, 1


def schedule(config: BenchConfig) -> list[tuple[PathId, str, int, int]]:
    """The order rows run in: all paths side by side at each concurrency, so that load from other
    processes (a shared machine) falls alike on the rows that are compared."""
    rows = list(plan(config))
    batched = [key for key in rows if key[0] == "a" and key[3] > 1]
    rest = [key for key in rows if key not in batched]
    return sorted(rest, key=lambda key: config.concurrency.index(key[2])) + batched  # stable


def run(
    config: BenchConfig,
    endpoints: Endpoints,
    model_path: Path,
    footage: Path,
    progress: Callable[[str], None] = lambda _: None,
) -> Report:
    progress("building and loading the models")
    prepare_models(model_path, endpoints, config.build)
    size = input_size(model_path)
    progress(f"decoding {config.frames} frames")
    frames = load_frames(footage, config.frames)
    # The same onnxruntime thread setting as each Triton instance: the same thread budget.
    local = LocalDetector(model_path, threads=config.build.intra_op_threads)
    meter = _Meter(endpoints)

    progress("bytes on the wire")
    wire = measure_wire(endpoints, size, frames[: config.wire_frames], local)

    # Whole sweeps one after another, each running the paths side by side: load from other processes
    # then falls alike on the rows compared, and pooling the rounds averages it out.
    measured: list[Measurement] = []
    for round_ in range(1, config.rounds + 1):
        for path, wire_name, concurrency, batch in schedule(config):
            progress(f"round {round_}: ({path}) {wire_name} concurrency {concurrency} batch {batch}")
            if path == "a":
                measured.append(bench_local(local, frames, concurrency, batch, config, meter))
            elif path == "b":
                w: Wire = "jpeg" if wire_name == "jpeg" else "uint8"
                measured.append(
                    asyncio.run(bench_pantau(endpoints.grpc, w, frames, concurrency, config, meter))
                )
            else:
                measured.append(bench_naive(endpoints.http, size, frames, concurrency, config, meter))
    rows = [pool([m for m in measured if m.label.key == key]) for key in plan(config)]

    return Report(
        date=datetime.now(UTC).isoformat(timespec="seconds"),
        machine=f"{cpu_model()}, {cores()} cores, {platform.system()} {platform.release()}",
        cores=cores(),
        model=model_path.name,
        footage=footage.name,
        config=config,
        rows=rows,
        runs=[pool([m]) for m in measured],
        wire=wire,
        goals=goals(rows, wire),
    )


def _best(rows: Sequence[Row], path: PathId, wire: str | None = None, cpu: bool = False) -> Row | None:
    """The fastest row of a path: by measured frames/s, or by CPU-bound frames/s."""
    candidates = [r for r in rows if r.path == path and (wire is None or r.wire == wire)]
    return max(candidates, key=lambda r: (r.cpu_bound_fps or 0) if cpu else r.fps, default=None)


def _cpu_ratio(rows: Sequence[Row], wire: str, base: PathId) -> float | None:
    pantau, other = _best(rows, "b", wire, cpu=True), _best(rows, base, cpu=True)
    if pantau is None or other is None or not pantau.cpu_bound_fps or not other.cpu_bound_fps:
        return None
    return pantau.cpu_bound_fps / other.cpu_bound_fps


def goals(rows: Sequence[Row], wire: Sequence[WireSize]) -> list[Goal]:
    """The issue's goals, best row against best row, per wire of Pantau's client."""
    out: list[Goal] = []
    local, naive = _best(rows, "a"), _best(rows, "c")
    for w in ("uint8", "jpeg"):
        pantau = _best(rows, "b", w)
        if pantau is None:
            continue
        bases: tuple[tuple[Row | None, PathId, float, str], ...] = (
            (local, "a", GOAL_VS_LOCAL, "(a) in-process"),
            (naive, "c", GOAL_VS_NAIVE, "(c) naive"),
        )
        for base, base_path, target, name in bases:
            if base is None or not base.fps:
                continue
            ratio = pantau.fps / base.fps
            detail = (
                f"{pantau.fps:.1f} fps (c={pantau.concurrency}, {_noise(pantau)}) vs "
                f"{base.fps:.1f} fps (c={base.concurrency}, {_noise(base)})"
            )
            cpu = _cpu_ratio(rows, w, base_path)
            out.append(Goal(f"(b) {w} / {name}", f">= {target:g}x", ratio, ratio >= target, detail, cpu))
    for size in wire:
        if size.wire in ("uint8", "jpeg"):
            mb = size.request_bytes / MB
            detail = f"{size.request_bytes:,.0f} B measured, {size.tensor_bytes:,.0f} B of tensors"
            out.append(
                Goal(
                    f"MB/frame on the wire, {size.wire}",
                    f"<= {GOAL_MB_PER_FRAME:g}",
                    mb,
                    mb <= GOAL_MB_PER_FRAME,
                    detail,
                )
            )
    return out


def _noise(row: Row) -> str:
    return f"other load {fmt(row.other_cpu_pct, 0)}%"


# ----- output -----


def render(report: Report, console: Console) -> None:
    cfg, build = report.config, report.config.build
    console.print(
        f"[bold]pantau bench inference[/bold]  {report.date}  {report.machine}\n"
        f"model {report.model}, footage {report.footage} ({cfg.frames} frames), "
        f"{cfg.seconds} s per row after {cfg.warmup} s warm-up, {cfg.rounds} round(s) pooled\n"
        f"Triton cpu build: {build.instances} instance(s), onnxruntime intra-op threads "
        f"{build.intra_op_threads or 'default (all cores)'}, the same threads in-process"
    )
    best = _best(report.rows, "a")
    naive = {r.concurrency: r for r in report.rows if r.path == "c"}
    table = Table(title="Throughput and latency per frame (decoded frame -> detections)")
    for column in ("path", "wire", "conc.", "batch", "frames/s", "p50 ms", "p99 ms", "x (a) best", "x (c)"):
        left = column in ("path", "wire")
        table.add_column(column, justify="left" if left else "right", no_wrap=column == "path")
    dim = (
        "client CPU ms/f",
        "Triton CPU ms/f",
        "backend ms/f",
        "CPU-bound frames/s",
        "server batch",
        "other load %",
    )
    for column in dim:
        table.add_column(column, justify="right", style="dim")
    for r in report.rows:
        same_c = naive.get(r.concurrency) if r.path == "b" else None
        table.add_row(
            f"({r.path}) {r.name}",
            r.wire,
            str(r.concurrency),
            f"<={r.batch}" if r.path == "b" else str(r.batch),
            fmt(r.fps),
            fmt(r.p50_ms),
            fmt(r.p99_ms),
            fmt(r.fps / best.fps if best and best.fps else None, 2),
            fmt(r.fps / same_c.fps if same_c and same_c.fps else None, 2),
            fmt(r.client_cpu_ms),
            fmt(r.server_cpu_ms),
            fmt(r.backend_cpu_ms),
            fmt(r.cpu_bound_fps),
            fmt(r.server_batch),
            fmt(r.other_cpu_pct, 0),
        )
    console.print(table)

    sizes = Table(title="Bytes on the wire per frame (one frame per request)")
    for column in (
        "wire",
        "model",
        "tensors B",
        "request B (measured)",
        "MB",
        "response B",
        "detections, frame 0",
    ):
        sizes.add_column(column, justify="left" if column in ("wire", "model") else "right")
    for s in report.wire:
        sizes.add_row(
            s.wire,
            s.model,
            fmt(s.tensor_bytes, 0),
            fmt(s.request_bytes, 0),
            fmt(s.request_bytes / MB, 3),
            fmt(s.response_bytes, 0),
            str(s.detections),
        )
    console.print(sizes)

    summary = Table(title="Goals")
    for column in ("goal", "target", "reached", "", "CPU-bound", "rows compared"):
        summary.add_column(column)
    for g in report.goals:
        mark = "[green]met[/green]" if g.met else "[red]not met[/red]"
        summary.add_row(g.name, g.target, f"{g.value:.3f}", mark, fmt(g.cpu_bound, 3), g.detail)
    console.print(summary)
