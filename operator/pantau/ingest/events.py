"""Detection events: what an ingest pod reports for each processed frame, and the sinks that carry them.

An event names the camera, site and pod, the frame's capture time and id, the detections (class, score,
box in the original frame's pixels) and the W3C `traceparent` of the frame's trace. Sinks:

- `JsonLinesSink`: one JSON object per line, to stdout (the pod log) or a file.
- `WebhookSink`: HTTP POSTs of JSON arrays of events, from a bounded buffer (in memory, or on disk in
  the pod's volume: `spool`), retried with capped, jittered exponential back-off while the receiver is
  down.
- `MultiSink`: the same event to several sinks.

Delivery guarantee of `WebhookSink` (see docs/events.md): at-least-once and in order for every event that
is still in the buffer when the receiver comes back (on disk: also after a restart of the container);
when the buffer is full the oldest waiting event is dropped and counted. The `frame_id` is unique per
frame, so receivers de-duplicate on it.

`publish` only enqueues (the frame pipeline never waits for a receiver); the network work happens in a
background task. Header values (an auth token from a Secret) and the webhook URL's path and query (which
can hold a token) are never logged: logs name the sink and the URL's origin only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Annotated, Final, Literal, Protocol, Self, TextIO
from urllib.parse import urlsplit

import httpx
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_serializer, field_validator

from pantau.contract import SinkStats
from pantau.ingest.spool import DiskSpool, MemorySpool, Spool
from pantau.redact import has_userinfo, redact_url

log = logging.getLogger(__name__)

TRACEPARENT_PATTERN: Final = r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"
CAMERA_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"

# Why an event was dropped (PascalCase, like condition reasons).
DROP_BUFFER_FULL: Final = "BufferFull"  # the buffer was full: the oldest waiting event made room
DROP_REJECTED: Final = "Rejected"  # the receiver answered 4xx (not 408/429): retrying cannot help
DROP_SHUTDOWN: Final = "Shutdown"  # still buffered when the sink's close deadline passed
DROP_CLOSED: Final = "Closed"  # published after the sink was closed
DROP_WRITE_FAILED: Final = "WriteFailed"  # the JSON-lines stream could not be written

CONTENT_TYPE: Final = "application/json"
USER_AGENT: Final = "pantau-ingest"
# A POST's request line and the headers httpx adds (Host, Accept, Content-Length ...), bytes: counted with
# each request's body and our headers as what it puts on the uplink.
REQUEST_HEAD_BYTES: Final = 200
RETRY_AFTER_CAP: Final = 60.0  # seconds: the most a receiver's Retry-After may hold delivery back
_RETRY_STATUSES: Final = frozenset({408, 429})


# ----- the event -----


class Detection(BaseModel):
    """One detected object; `box` is x1, y1, x2, y2 in the original frame's pixels."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, hide_input_in_errors=True)

    class_name: str = Field(alias="class", min_length=1, max_length=64)
    score: float = Field(ge=0.0, le=1.0)
    box: tuple[float, float, float, float]


class _Wire(BaseModel):
    """What every event on the wire shares: immutable, strict, `timestamp` in RFC 3339 UTC."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, hide_input_in_errors=True)

    @field_validator("timestamp", check_fields=False)
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    @field_serializer("timestamp", check_fields=False)
    def _rfc3339(self, value: datetime) -> str:
        return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


Inference = Literal["triton", "local"]


class DetectionEvent(_Wire):
    """What happened in one processed frame. On the wire: one JSON object (`to_json`)."""

    camera: Annotated[str, Field(pattern=CAMERA_PATTERN, max_length=317)]  # "<namespace>/<name>"
    site: Annotated[str, Field(min_length=1, max_length=253)]
    pod: Annotated[str, Field(min_length=1, max_length=253)]
    timestamp: AwareDatetime  # capture time; written as RFC 3339 UTC ("...Z")
    frame_id: Annotated[str, Field(min_length=1, max_length=512)]  # unique per frame: the idempotency key
    detections: tuple[Detection, ...] = ()
    # None only when tracing is switched off in the pod (OTEL_SDK_DISABLED).
    traceparent: Annotated[str, Field(pattern=TRACEPARENT_PATTERN)] | None
    # Who detected: Triton, or the pod's fallback detector while Triton could not be reached.
    inference: Inference = "triton"

    @property
    def idempotency_key(self) -> str:
        """What receivers de-duplicate on: the frame id (unique per camera, session and frame)."""
        return self.frame_id

    def to_json(self) -> str:
        """One line of compact JSON (`class` spelled as such)."""
        return self.model_dump_json(by_alias=True)

    @classmethod
    def from_json(cls, line: str | bytes) -> DetectionEvent:
        return cls.model_validate_json(line)


class TrackEvent(_Wire):
    """Something a tracked object did (analytics): crossed a line, entered or left a zone, loitered.
    On the wire one JSON object, like a DetectionEvent, told apart by `type`."""

    type: Literal["line_crossed", "zone_entered", "zone_exited", "loitering"]
    camera: Annotated[str, Field(pattern=CAMERA_PATTERN, max_length=317)]
    site: Annotated[str, Field(min_length=1, max_length=253)]
    pod: Annotated[str, Field(min_length=1, max_length=253)]
    timestamp: AwareDatetime  # capture time of the frame where it was seen
    frame_id: Annotated[str, Field(min_length=1, max_length=512)]  # that frame's id
    track_id: Annotated[int, Field(ge=0)]
    class_name: str = Field(alias="class", min_length=1, max_length=64)
    zone: Annotated[str, Field(max_length=63)] | None = None
    line: Annotated[str, Field(max_length=63)] | None = None
    direction: Literal["forward", "backward"] | None = None  # line_crossed only
    dwell_s: Annotated[float, Field(ge=0)] | None = None  # zone_exited and loitering: time in the zone
    traceparent: Annotated[str, Field(pattern=TRACEPARENT_PATTERN)] | None

    @property
    def idempotency_key(self) -> str:
        """Unique per frame, kind, track and zone or line: what receivers de-duplicate on."""
        return f"{self.frame_id}/{self.type}/{self.track_id}/{self.zone or self.line}"

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True)


Event = DetectionEvent | TrackEvent


# ----- sinks -----


class EventSink(Protocol):
    """Where detection events go. `publish` must return quickly (it enqueues); `aclose` flushes what is
    buffered, waiting at most `grace` seconds, and counts what is left as dropped."""

    @property
    def name(self) -> str: ...

    @property
    def stats(self) -> SinkStats: ...

    async def publish(self, event: Event) -> None: ...

    async def aclose(self, grace: float = 10.0) -> None: ...


@dataclass
class _Counters:
    published: int = 0
    delivered: int = 0
    dropped_reasons: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    last_error: str | None = None

    def drop(self, reason: str, count: int = 1) -> None:
        if count > 0:
            self.dropped_reasons[reason] = self.dropped_reasons.get(reason, 0) + count

    def snapshot(self, name: str, pending: int) -> SinkStats:
        return SinkStats(
            name=name,
            published=self.published,
            delivered=self.delivered,
            dropped=sum(self.dropped_reasons.values()),
            dropped_reasons=dict(self.dropped_reasons),
            pending=pending,
            retries=self.retries,
            last_error=self.last_error,
        )


class _Closing:
    """`async with sink:` closes the sink (its `aclose`, with the default grace) on the way out."""

    async def aclose(self, grace: float = 10.0) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class JsonLinesSink(_Closing):
    """One JSON object per line, flushed per event: to stdout by default, or to a stream or file path
    (appended to). Writing a line to the pod log is fast enough to do inline."""

    def __init__(
        self, target: TextIO | str | os.PathLike[str] | None = None, *, name: str = "stdout"
    ) -> None:
        self._name = name
        self._owned = False
        if target is None:
            self._stream: TextIO = sys.stdout
        elif isinstance(target, str | os.PathLike):
            self._stream = Path(target).open("a", encoding="utf-8")  # noqa: SIM115 (closed in aclose)
            self._owned = True
        else:
            self._stream = target
        self._counters = _Counters()
        self._closed = False

    @property
    def name(self) -> str:
        return self._name

    @property
    def stats(self) -> SinkStats:
        return self._counters.snapshot(self._name, pending=0)

    async def publish(self, event: Event) -> None:
        self._counters.published += 1
        if self._closed:
            self._counters.drop(DROP_CLOSED)
            return
        try:
            self._stream.write(event.to_json() + "\n")
            self._stream.flush()
        except (OSError, ValueError) as exc:  # ValueError: the stream was closed under us
            self._counters.drop(DROP_WRITE_FAILED)
            self._counters.last_error = f"{type(exc).__name__}: {redact_url(str(exc))}"[:300]
            return
        self._counters.delivered += 1

    async def aclose(self, grace: float = 10.0) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError, ValueError):
            if self._owned:
                self._stream.close()
            else:
                self._stream.flush()


Outcome = Literal["delivered", "retry", "rejected"]


def _origin(url: str) -> str:
    """scheme://host[:port] of `url`: safe to log (a webhook's path or query may hold a token)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds (the delta-seconds form; an HTTP date is ignored)."""
    value = response.headers.get("retry-after", "").strip()
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(0.0, seconds)


class WebhookSink(_Closing):
    """Events POSTed to `url` as JSON arrays of up to `batch_size` events, in order, one request at a time.

    Buffer: at most `buffer_size` events are held (the batch in flight included). While the receiver is
    unreachable, answers 5xx, 408 or 429, or times out (`timeout` seconds per request), the batch is put
    back at the head of the buffer and retried after a jittered exponential delay (from `backoff_base`,
    doubling, capped at `backoff_cap`; a Retry-After is honoured up to RETRY_AFTER_CAP). When the buffer is
    full, the oldest waiting event is dropped (reason BufferFull). Any other answer outside 2xx (400, 401,
    404, 413 ...) drops that batch (reason Rejected): retrying would get the same answer. `linger` is how
    long a partial batch waits for more events. `headers` (e.g. Authorization from a Secret) are sent with
    every request and never logged.
    """

    def __init__(
        self,
        url: str,
        *,
        name: str = "webhook",
        buffer_size: int = 10_000,
        batch_size: int = 100,
        timeout: float = 5.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 10.0,
        linger: float = 0.05,
        headers: Mapping[str, str] | None = None,
        spool_dir: Path | None = None,
        on_sent: Callable[[int], None] | None = None,
    ) -> None:
        # Messages never quote the URL: it may hold a token.
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"webhook sink {name}: the URL must be http:// or https:// and name a host")
        if has_userinfo(url):  # a token in the query is allowed: messages show only the origin
            raise ValueError(
                f"webhook sink {name}: the URL embeds a user name or password; "
                "send credentials in a header from a Secret instead"
            )
        if not 1 <= batch_size < buffer_size:
            raise ValueError(f"webhook sink {name}: need 1 <= batch_size < buffer_size")
        if timeout <= 0 or backoff_base <= 0 or backoff_cap < backoff_base or linger < 0:
            raise ValueError(f"webhook sink {name}: timings must be positive, backoff_cap >= backoff_base")
        self._name = name
        self._url = url
        self._origin = _origin(url)
        self._buffer_size = buffer_size
        self._batch_size = batch_size
        self._timeout = timeout
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._linger = linger
        self._headers = {"Content-Type": CONTENT_TYPE, "User-Agent": USER_AGENT, **(headers or {})}
        # Serialized events, oldest first: on disk (one SQLite file per sink) when given a directory.
        self._queue: Spool = DiskSpool(spool_dir / f"{name}.sqlite") if spool_dir else MemorySpool()
        self._counters = _Counters()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._closed = False
        self._failing = False  # between the first failure and the next success: log once per outage
        self._overflowing = False
        self._on_sent = on_sent
        if len(self._queue):  # kept from before a restart: deliver them first, without waiting for more
            log.info("event sink %s (%s): %d events kept from before; delivering", name, self._origin,
                     len(self._queue))  # fmt: skip
            with contextlib.suppress(RuntimeError):  # no running loop: the first publish starts it
                asyncio.get_running_loop()
                self._start()

    def __repr__(self) -> str:
        return f"WebhookSink(name={self._name!r}, origin={self._origin!r})"

    @property
    def name(self) -> str:
        return self._name

    @property
    def stats(self) -> SinkStats:
        return self._counters.snapshot(self._name, pending=len(self._queue))

    async def publish(self, event: Event) -> None:
        self._counters.published += 1
        if self._closed:
            self._counters.drop(DROP_CLOSED)
            return
        self._queue.append(event.to_json())
        self._trim()
        self._start()
        self._wakeup.set()

    def _trim(self) -> None:
        """Drop the oldest waiting events until at most `buffer_size` are held."""
        excess = self._queue.trim(self._buffer_size)
        if excess <= 0:
            return
        self._counters.drop(DROP_BUFFER_FULL, excess)
        if not self._overflowing:
            self._overflowing = True
            log.warning(
                "event sink %s (%s): buffer full (%d events); dropping the oldest until delivery resumes",
                self._name,
                self._origin,
                self._buffer_size,
            )

    def _start(self) -> None:
        if self._task is None:
            self._client = httpx.AsyncClient(timeout=self._timeout, follow_redirects=False)
            self._task = asyncio.create_task(self._run(), name=f"event-sink-{self._name}")
            self._task.add_done_callback(self._report_crash)

    def _report_crash(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "event sink %s: the delivery task stopped: %s; events are no longer delivered",
                self._name,
                type(task.exception()).__name__,
            )

    def _backoff(self, failures: int, retry_after: float | None) -> float:
        ceiling = min(self._backoff_cap, self._backoff_base * 2 ** min(failures - 1, 30))
        delay = random.uniform(ceiling / 2, ceiling)  # noqa: S311 (jitter, not cryptography)
        if retry_after is not None:
            delay = max(delay, min(retry_after, RETRY_AFTER_CAP))
        return delay

    async def _run(self) -> None:
        failures = 0
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._linger and len(self._queue) < self._batch_size and not self._closed:
                await asyncio.sleep(self._linger)  # let a partial batch fill
            batch = self._queue.take(self._batch_size)
            outcome, retry_after = await self._post(batch)
            if outcome != "retry":
                self._queue.done()
            if outcome == "delivered":
                self._counters.delivered += len(batch)
                if self._failing:
                    log.info(
                        "event sink %s (%s): delivering again after %d failed attempts",
                        self._name,
                        self._origin,
                        failures,
                    )
                failures, self._failing = 0, False
                if len(self._queue) < self._buffer_size // 2:
                    self._overflowing = False  # warn again on the next overflow, not on every batch
            elif outcome == "rejected":
                self._counters.drop(DROP_REJECTED, len(batch))
            else:
                self._queue.retry()
                self._trim()
                failures += 1
                self._counters.retries += 1
                delay = self._backoff(failures, retry_after)
                if not self._failing:
                    self._failing = True
                    log.warning(
                        "event sink %s (%s): delivery failed (%s); buffering up to %d events and "
                        "retrying with back-off up to %.0f s",
                        self._name,
                        self._origin,
                        self._counters.last_error,
                        self._buffer_size,
                        self._backoff_cap,
                    )
                await asyncio.sleep(delay)

    async def _post(self, batch: Sequence[str]) -> tuple[Outcome, float | None]:
        assert self._client is not None
        body = ("[" + ",".join(batch) + "]").encode()
        if self._on_sent is not None:  # what goes on the wire: the body and the request's head
            head = REQUEST_HEAD_BYTES + sum(len(k) + len(v) + 4 for k, v in self._headers.items())
            self._on_sent(len(body) + head)
        try:
            response = await self._client.post(self._url, content=body, headers=self._headers)
        except httpx.HTTPError as exc:  # transport errors, chiefly: connection, timeout, protocol
            message = redact_url(str(exc).replace(self._url, self._origin))
            self._counters.last_error = (
                f"{type(exc).__name__}: {message}"[:300] if message else type(exc).__name__
            )
            return "retry", None
        if response.is_success:
            return "delivered", None
        self._counters.last_error = f"HTTP {response.status_code} {response.reason_phrase}".strip()
        if response.status_code >= 500 or response.status_code in _RETRY_STATUSES:
            return "retry", _retry_after(response)
        log.error(
            "event sink %s (%s): the receiver rejected %d events with HTTP %d; dropped (a retry cannot help)",
            self._name,
            self._origin,
            len(batch),
            response.status_code,
        )
        return "rejected", None

    async def aclose(self, grace: float = 10.0) -> None:
        """Stop taking events, deliver what is buffered within `grace` seconds, then give up the rest."""
        if self._closed:
            return
        self._closed = True
        self._wakeup.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), grace)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            except Exception:
                log.exception("event sink %s: the delivery task failed", self._name)
        kept = len(self._queue) if self._queue.persistent else 0
        lost = self._queue.close()
        if lost:
            self._counters.drop(DROP_SHUTDOWN, lost)
            log.warning(
                "event sink %s (%s): %d events not delivered within %.0f s of shutdown; dropped",
                self._name,
                self._origin,
                lost,
                grace,
            )
        if kept:
            log.info("event sink %s (%s): %d events kept on disk for the next start", self._name,
                     self._origin, kept)  # fmt: skip
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class MultiSink(_Closing):
    """The same event to every sink; one failing sink does not stop the others."""

    def __init__(self, sinks: Sequence[EventSink], *, name: str = "all") -> None:
        self._sinks = tuple(sinks)
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    @property
    def sinks(self) -> tuple[EventSink, ...]:
        return self._sinks

    @property
    def stats(self) -> SinkStats:
        """The sum over the sinks (an event published to two sinks counts twice)."""
        parts = [sink.stats for sink in self._sinks]
        reasons: dict[str, int] = {}
        for part in parts:
            for reason, count in part.dropped_reasons.items():
                reasons[reason] = reasons.get(reason, 0) + count
        return SinkStats(
            name=self._name,
            published=sum(p.published for p in parts),
            delivered=sum(p.delivered for p in parts),
            dropped=sum(p.dropped for p in parts),
            dropped_reasons=reasons,
            pending=sum(p.pending for p in parts),
            retries=sum(p.retries for p in parts),
            last_error=next((f"{p.name}: {p.last_error}" for p in parts if p.last_error), None),
        )

    def per_sink(self) -> list[SinkStats]:
        return [sink.stats for sink in self._sinks]

    async def publish(self, event: Event) -> None:
        for sink in self._sinks:
            try:
                await sink.publish(event)
            except Exception:
                log.exception("event sink %s: publish failed", sink.name)

    async def aclose(self, grace: float = 10.0) -> None:
        results = await asyncio.gather(*(sink.aclose(grace) for sink in self._sinks), return_exceptions=True)
        for sink, result in zip(self._sinks, results, strict=True):
            if isinstance(result, BaseException):
                log.error("event sink %s: close failed: %s", sink.name, type(result).__name__)
