"""Async detector client: frames from many cameras to Triton over gRPC, batched when they queue up.

Callers `await detector.detect(frame)` concurrently (one task per camera, say). At most
`max_in_flight` requests are outstanding, so a slow server pushes back on the callers instead of
piling up work. Once a slot is free, a batcher sends the waiting frames as one request: those that
queued while every slot was busy, up to `max_batch`, plus those arriving within `max_delay` of the
first. The defaults never wait: batches form only under load. They suit a CPU Triton, where a batch
of N costs N frames and every frame of it waits for the last: one frame per request, as many
requests in flight as the model has instances (`BuildOptions.instances`). A GPU runs a batch for
little more than one frame: raise `max_batch` there. Each request has a deadline; UNAVAILABLE
(server restarting, overloaded connection) is retried with capped, jittered exponential back-off;
results are split back to the frames they belong to.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import av
import numpy as np
from tritonclient.grpc import aio as grpcaio
from tritonclient.utils import InferenceServerException

from pantau.triton import contract, yolox

Wire = Literal["uint8", "jpeg"]
NO_MODEL_VERSION = "has no available versions"  # Triton: "Request for unknown model: 'x' has no ..."
UNKNOWN_MODEL = "unknown model"  # Triton: "Request for unknown model: 'x' is not found"


class InferenceError(RuntimeError):
    """A frame could not be detected; `reason` is a status-condition style word."""

    def __init__(
        self,
        reason: Literal["InferenceUnavailable", "Timeout", "InferenceFailed", "Stale"],
        message: str,
    ) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass(frozen=True)
class ClientSettings:
    url: str  # host:port of Triton's gRPC endpoint
    model: str = contract.MODEL  # the JPEG entry point is "<model>_jpeg"
    wire: Wire = "uint8"
    max_batch: int = 1  # frames per request (IngestSettings.max_batch for ingest pods)
    max_delay: float = 0.0  # seconds a frame may wait for others to fill its batch
    max_in_flight: int = 2  # requests outstanding: the model's instances (`pantau model build`)
    timeout: float = 5.0  # per request, seconds
    retries: int = 3  # extra attempts on UNAVAILABLE
    backoff_base: float = 0.2
    backoff_cap: float = 5.0
    reconnect_backoff_max: float = 2.0  # gRPC's own default grows to 120 s after an outage
    # While requests are outstanding, ping the server this often and give the connection up when a ping
    # goes unanswered for `keepalive_timeout` seconds. Without it, a link that silently dropped everything
    # for minutes leaves the channel on a dead TCP connection whose retransmissions have backed off to
    # minutes: every request times out long after the link is back.
    keepalive: float = 10.0
    keepalive_timeout: float = 5.0


def _channel(settings: ClientSettings) -> grpcaio.InferenceServerClient:
    max_message = 2**31 - 1  # tritonclient's default, dropped when channel_args are given
    return grpcaio.InferenceServerClient(
        settings.url,
        channel_args=[
            ("grpc.max_send_message_length", max_message),
            ("grpc.max_receive_message_length", max_message),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", int(settings.reconnect_backoff_max * 1000)),
            ("grpc.keepalive_time_ms", int(settings.keepalive * 1000)),
            ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout * 1000)),
            ("grpc.keepalive_permit_without_calls", 0),  # idle pods do not ping (servers refuse that)
        ],
    )


@dataclass(frozen=True)
class Prepared:
    """A frame ready to send: letterboxed pixels (to the model) or JPEG bytes (to `<model>_jpeg`, which
    answers in the JPEG's pixels)."""

    orig_hw: tuple[int, int]
    image: np.ndarray | None = None
    jpeg: bytes | None = None


@dataclass
class TritonHealth:
    """What the client's real calls to Triton said last: every inference and every check counts.
    `reachable` is the verdict of the latest call; `model_ready` of the latest call that could tell."""

    model_ready: bool | None = None  # None: no call has told yet
    last_success: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None

    @property
    def reachable(self) -> bool:
        if self.last_success is None:
            return False
        return self.last_error_at is None or self.last_success >= self.last_error_at

    def succeeded(self) -> None:
        self.model_ready, self.last_success = True, datetime.now(UTC)

    def silent_for(self) -> float:
        """Seconds since Triton last answered (infinite: it never has)."""
        if self.last_success is None:
            return math.inf
        return (datetime.now(UTC) - self.last_success).total_seconds()

    def failed(self, error: InferenceError, *, model_ready: bool | None = None) -> None:
        """A failed call; `model_ready` when its answer told (False: the server lacks the model)."""
        self.last_error, self.last_error_at = str(error), datetime.now(UTC)
        if model_ready is not None:
            self.model_ready = model_ready
        elif error.reason == "InferenceUnavailable":
            self.model_ready = None  # no answer: nobody can tell


@dataclass
class _Pending:
    frame: Prepared
    future: asyncio.Future[list[contract.Detection]] = field(repr=False)
    headers: Mapping[str, str] | None = None


class Detector:
    """`input_size` None: read from the model's metadata by the first `ensure_ready` (so a pod can start
    while Triton or its model is not there yet); `health` records what each real call said."""

    def __init__(self, settings: ClientSettings, input_size: int | None = 416) -> None:
        if settings.max_batch > contract.MAX_BATCH:
            raise ValueError(f"max_batch {settings.max_batch} exceeds the model's {contract.MAX_BATCH}")
        self.settings = settings
        self._input_size = input_size
        self.health = TritonHealth()
        self._client = _channel(settings)
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._limit = settings.max_in_flight  # requests that may be outstanding now (set_max_in_flight)
        self._room = asyncio.Condition()
        self._in_flight = 0  # slots taken
        self._batcher: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()

    @classmethod
    async def connect(cls, settings: ClientSettings) -> Detector:
        """A client for the server's model, with the input size read from the model's metadata."""
        detector = cls(settings, input_size=None)
        try:
            await detector.ensure_ready()
        except BaseException:
            await detector.aclose()
            raise
        return detector

    @property
    def input_size(self) -> int:
        if self._input_size is None:
            raise RuntimeError("the model's input size is not known yet: await ensure_ready() first")
        return self._input_size

    async def ensure_ready(self) -> None:
        """Read the model's input size from its metadata unless known; raises InferenceError."""
        if self._input_size is not None:
            return
        model = self.settings.model
        try:
            meta = await self._client.get_model_metadata(model, contract.VERSION, as_json=True)
        except InferenceServerException as exc:
            error = InferenceError(_reason(exc), f"model {model} metadata: {exc.message()}")
            self.health.failed(error, model_ready=False if UNKNOWN_MODEL in str(exc.message()) else None)
            raise error from exc
        images = next(i for i in meta["inputs"] if i["name"] == contract.image_input(0).name)
        self._input_size = int(images["shape"][1])

    async def check(self) -> bool:
        """Ask Triton whether the model is ready (a real call; its answer goes into `health`)."""
        model = self.settings.model
        try:
            ready = bool(await self._client.is_model_ready(model, client_timeout=self.settings.timeout))
        except InferenceServerException as exc:
            self.health.failed(InferenceError(_reason(exc), f"model {model} readiness: {exc.message()}"))
            return False
        if ready:
            self.health.succeeded()
        else:
            self.health.failed(
                InferenceError("InferenceUnavailable", f"model {model} is not ready on the server"),
                model_ready=False,
            )
        return ready

    def prepare(self, frame: np.ndarray) -> Prepared:
        """An HxWx3 BGR frame -> what goes on the wire (letterboxed with the shared numpy code)."""
        hw = (int(frame.shape[0]), int(frame.shape[1]))
        if self.settings.wire == "jpeg":
            return Prepared(orig_hw=hw, jpeg=encode_jpeg(frame))
        return Prepared(orig_hw=hw, image=yolox.letterbox(frame, self.input_size))

    async def set_max_in_flight(self, limit: int) -> None:
        """How many requests may be outstanding from now on. Over a WAN link a request spends its round
        trip on the wire, so keeping the instances busy takes more of them than the instances."""
        if limit < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {limit}")
        async with self._room:
            self._limit = limit
            self._room.notify_all()

    async def detect(
        self, frame: np.ndarray | Prepared, headers: Mapping[str, str] | None = None
    ) -> list[contract.Detection]:
        """Detections of one frame, in the frame's pixels; raises InferenceError.

        `headers` (e.g. a W3C traceparent) go into the gRPC metadata. A batch is one request, so
        it carries the headers of its first frame; the others' traces record the batch instead."""
        prepared = frame if isinstance(frame, Prepared) else self.prepare(frame)
        if self._batcher is None:
            self._batcher = asyncio.create_task(self._batch_loop(), name="triton-batcher")
        future: asyncio.Future[list[contract.Detection]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(prepared, future, headers))
        return await future

    async def aclose(self) -> None:
        if self._batcher is not None:
            self._batcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._batcher
        for task in list(self._sends):
            task.cancel()
        await asyncio.gather(*self._sends, return_exceptions=True)
        await self._client.close()

    async def __aenter__(self) -> Detector:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ----- batching -----

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            deadline = loop.time() + self.settings.max_delay
            # A free in-flight slot before the batch is closed: frames that arrive while every slot is
            # busy ride in the next request instead of queueing behind it (back-pressure too).
            async with self._room:
                await self._room.wait_for(lambda: self._in_flight < self._limit)
                self._in_flight += 1
            batch = await self._fill([first], deadline)
            task = asyncio.create_task(self._send(batch))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)

    async def _fill(self, batch: list[_Pending], deadline: float) -> list[_Pending]:
        """`batch` plus the frames already queued, then those that come before `deadline`, up to
        `max_batch`."""
        loop = asyncio.get_running_loop()
        limit = self.settings.max_batch
        if self.settings.max_delay <= 0:
            # Nothing waits, so a batch is what queued while the slots were busy; frames queued
            # together are spread over the free slots (instances that work side by side) rather
            # than packed into one request.
            free = self._limit - self._in_flight  # besides this request's
            limit = min(limit, math.ceil((len(batch) + self._queue.qsize()) / (1 + free)))
        while len(batch) < limit:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _send(self, batch: list[_Pending]) -> None:
        try:
            # JPEGs and pixels go to different models: a batch that holds both (a Site's uplink was just
            # set or removed) is sent as one request of each.
            for jpegs in (True, False):
                await self._send_kind([p for p in batch if (p.frame.jpeg is not None) == jpegs])
        finally:
            async with self._room:
                self._in_flight -= 1
                self._room.notify()

    async def _send_kind(self, batch: list[_Pending]) -> None:
        if not batch:
            return
        try:
            results = await self._infer_with_retries([p.frame for p in batch], batch[0].headers)
        except InferenceError as exc:
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
        else:
            for p, detections in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result(detections)

    async def _infer_with_retries(
        self, frames: Sequence[Prepared], headers: Mapping[str, str] | None = None
    ) -> list[list[contract.Detection]]:
        s = self.settings
        model, inputs = self._request(frames)
        outputs = [grpcaio.InferRequestedOutput(t.name) for t in contract.OUTPUTS]
        for attempt in range(s.retries + 1):
            try:
                result = await self._client.infer(
                    model, inputs, outputs=outputs, client_timeout=s.timeout, headers=dict(headers or {})
                )
                found = split_result({t.name: result.as_numpy(t.name) for t in contract.OUTPUTS})
                self.health.succeeded()
                return found
            except InferenceServerException as exc:
                reason = _reason(exc)
                error = InferenceError(reason, exc.message() or str(exc))
                self.health.failed(error)
                if reason != "InferenceUnavailable" or attempt == s.retries:
                    raise error from exc
            # Full jitter: spreads the retries of many pods hitting one restarted server.
            await asyncio.sleep(random.uniform(0, min(s.backoff_cap, s.backoff_base * 2**attempt)))  # noqa: S311
        raise AssertionError("unreachable")

    def _request(self, frames: Sequence[Prepared]) -> tuple[str, list[grpcaio.InferInput]]:
        if frames[0].jpeg is not None:
            blobs = np.array([[f.jpeg] for f in frames], dtype=np.object_)
            jpeg = grpcaio.InferInput(contract.JPEG.name, list(blobs.shape), contract.JPEG.wire_type)
            jpeg.set_data_from_numpy(blobs)
            return f"{self.settings.model}_jpeg", [jpeg]
        images = np.stack([f.image for f in frames if f.image is not None])
        hw = np.array([f.orig_hw for f in frames], dtype=np.int32)
        spec = contract.image_input(self.input_size)
        inp = grpcaio.InferInput(spec.name, list(images.shape), spec.wire_type)
        inp.set_data_from_numpy(images)
        orig = grpcaio.InferInput(contract.ORIG_HW.name, list(hw.shape), contract.ORIG_HW.wire_type)
        orig.set_data_from_numpy(hw)
        return self.settings.model, [inp, orig]


def split_result(outputs: Mapping[str, np.ndarray | None]) -> list[list[contract.Detection]]:
    """Batched, padded outputs -> one list of detections per frame."""
    counts, boxes, scores, classes = (outputs[t.name] for t in contract.OUTPUTS)
    if counts is None or boxes is None or scores is None or classes is None:
        raise InferenceError("InferenceFailed", "response lacks an output")
    return [
        [contract.Detection.of(classes[i, k], scores[i, k], boxes[i, k]) for k in range(int(counts[i, 0]))]
        for i in range(len(counts))
    ]


def encode_jpeg(frame: np.ndarray) -> bytes:
    """BGR frame -> JPEG bytes with FFmpeg's MJPEG encoder (PyAV), at its default quality."""
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height = int(frame.shape[1]), int(frame.shape[0])
    codec.pix_fmt = "yuvj420p"
    packets = codec.encode(av.VideoFrame.from_ndarray(frame, format="bgr24").reformat(format="yuvj420p"))
    packets += codec.encode(None)
    return b"".join(bytes(p) for p in packets)


def _reason(exc: InferenceServerException) -> Literal["InferenceUnavailable", "Timeout", "InferenceFailed"]:
    status = str(exc.status() or "")
    if "UNAVAILABLE" in status:
        return "InferenceUnavailable"
    if "DEADLINE_EXCEEDED" in status:
        return "Timeout"
    message = str(exc.message() or "")
    if NO_MODEL_VERSION in message or UNKNOWN_MODEL in message:
        # The model is being unloaded or loaded, or not there yet (Triton shutting down or starting,
        # its repository still being filled): an outage like UNAVAILABLE, so retried and reported as
        # such, not a failed request.
        return "InferenceUnavailable"
    return "InferenceFailed"
