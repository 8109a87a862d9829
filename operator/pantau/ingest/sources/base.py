"""What every camera source shares: its configuration, errors and their classification, and the
wall-clock sampler (`Source`, and `_StreamingSource` for sources that a reader thread feeds).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Literal, Self, TypeVar
from urllib.parse import urlsplit

import av
import av.error
import httpx
import numpy.typing as npt

from pantau.models.limits import DEFAULT_PORTS, MAX_FPS
from pantau.redact import basic_auth_token, redact_url, scrub

log = logging.getLogger(__name__)

Reason = Literal[
    "AuthFailed",
    "DNSFailed",
    "ConnectionRefused",
    "Timeout",
    "UnsupportedCodec",
    "NoFrames",
    "StreamEnded",
    "TLSVerifyFailed",
    "Unreachable",
]
Protocol = Literal["rtsp", "rtsps", "http-mjpeg", "http-snapshot", "file"]
Transport = Literal["tcp", "udp"]
Image = npt.NDArray[Any]
Convert = Callable[[av.VideoFrame], Image]
T = TypeVar("T")

URL_SCHEMES: Final[dict[str, tuple[str, ...]]] = {
    "rtsp": ("rtsp",),
    "rtsps": ("rtsps",),
    "http-mjpeg": ("http", "https"),
    "http-snapshot": ("http", "https"),
    "file": ("file", ""),
}


class SourceError(Exception):
    """A camera session failed. The message is already redacted; `reason` is the classification.

    The reason is fixed once made (Final); "Unreachable" is the catch-all.
    """

    def __init__(self, message: str, *, reason: Reason = "Unreachable") -> None:
        super().__init__(message)
        self.reason: Final[Reason] = reason
        self.message: Final = message


@dataclass(frozen=True)
class SourceConfig:
    """What one session needs. `url` carries no user info; credentials come from the Secret."""

    url: str
    protocol: Protocol
    fps: float
    transport: Transport = "tcp"
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    open_timeout: float = 10.0
    read_timeout: float = 10.0
    tls_insecure: bool = False
    tls_ca: str | None = field(default=None, repr=False)  # PEM: trust only this CA (spec.source.tls)
    tls_server_name: str | None = None  # the name the certificate must carry, if not the URL's host
    loop_file: bool = False

    def __post_init__(self) -> None:
        # Messages never quote the URL as given: it may hold a password despite the CRD's rule.
        if urlsplit(self.url).username is not None or "@" in urlsplit(self.url).netloc:
            raise ValueError("the source URL must not contain user info; pass username/password instead")
        scheme = urlsplit(self.url).scheme.lower()
        if scheme not in URL_SCHEMES[self.protocol]:
            raise ValueError(f"protocol {self.protocol} does not take {scheme or 'plain'} URLs")
        if not 0 < self.fps <= MAX_FPS:  # the Camera's own rule (models.limits)
            raise ValueError(f"fps must be above 0 and at most {MAX_FPS:g}, got {self.fps}")
        if self.open_timeout <= 0 or self.read_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if self.password is not None and self.username is None:
            raise ValueError("a password needs a username")

    def tls_context(self) -> ssl.SSLContext:
        """How to verify the camera's certificate: against tls_ca when given, else the system's CAs."""
        try:
            return (
                ssl.create_default_context(cadata=self.tls_ca)
                if self.tls_ca
                else ssl.create_default_context()
            )
        except ssl.SSLError as exc:
            raise SourceError(
                f"the TLS CA is not a PEM certificate: {exc.reason}", reason="TLSVerifyFailed"
            ) from None

    @property
    def tls_host(self) -> str:
        """The host name the camera's certificate is checked against."""
        return self.tls_server_name or _host_port(self.url)[0]

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values that must never show up in text we emit."""
        if self.password is None:
            return ()
        return (self.password, basic_auth_token(self.username or "", self.password))


@dataclass(frozen=True, eq=False)
class Sample:
    image: Image = field(repr=False)  # what convert() returned
    orig_hw: tuple[int, int]  # the frame's size as decoded
    captured_at: float  # time.time() when the frame was read
    seq: int  # sample number within this session
    keyframe: bool
    decode_seconds: float  # decoding + converting this sample (waiting for the network is not counted)


@dataclass(frozen=True)
class SourceStats:
    frames_read: int  # packets / JPEG parts / snapshots received
    frames_decoded: int  # frames the decoder produced
    keyframes_only: bool  # the decoder skips non-key frames
    session_open: bool  # the connection (or file) is open
    keyframe_interval: float | None  # seconds, measured; None until two keyframes were seen
    cpu_seconds: float = 0.0  # CPU of the source's own receiving thread (the caller's thread not counted)


# ----- classification -----------------------------------------------------------------------------

_AUTH_TEXT: Final = re.compile(r"Server returned 40[13]|\b40[13] (Unauthorized|Forbidden)", re.IGNORECASE)
_DNS_TEXT: Final = re.compile(
    r"resolve host|Name or service not known|nodename nor servname|name resolution|"
    r"No address associated with hostname",
    re.IGNORECASE,
)
_REFUSED_TEXT: Final = re.compile(r"Connection refused", re.IGNORECASE)
_TIMEOUT_TEXT: Final = re.compile(r"timed? ?out", re.IGNORECASE)
_TEXT_REASONS: Final[tuple[tuple[re.Pattern[str], Reason], ...]] = (
    (_AUTH_TEXT, "AuthFailed"),
    (_DNS_TEXT, "DNSFailed"),
    (_REFUSED_TEXT, "ConnectionRefused"),
    (_TIMEOUT_TEXT, "Timeout"),
)
_UNREACHABLE_ERRNOS: Final = frozenset(
    {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE}
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and the exceptions it was raised from (httpx wraps httpcore, which wraps OSError)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 16:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _ffmpeg_log(exc: BaseException) -> str:
    """The FFmpeg log line PyAV attached to an error (only when PyAV logging is enabled)."""
    entry: Any = getattr(exc, "log", None)
    if isinstance(entry, tuple):
        texts = [part for part in entry if isinstance(part, str)]
        if texts:
            return texts[-1].strip()
    return ""


def _text_of(exc: BaseException) -> str:
    if isinstance(exc, av.error.FFmpegError):
        return f"{exc.strerror or ''} {_ffmpeg_log(exc)}"
    return str(exc)


def _reason_of(exc: BaseException, elapsed: float | None, io_timeout: float | None) -> Reason | None:
    """The reason one exception of a chain states by itself, or None to look further."""
    if isinstance(exc, SourceError):
        return exc.reason
    if isinstance(exc, httpx.HTTPStatusError):
        return "AuthFailed" if exc.response.status_code in (401, 403) else "Unreachable"
    if isinstance(exc, av.error.HTTPUnauthorizedError | av.error.HTTPForbiddenError):
        return "AuthFailed"
    if isinstance(exc, socket.gaierror):
        return "DNSFailed"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "TLSVerifyFailed"
    if isinstance(exc, ConnectionRefusedError):  # also av.error.ConnectionRefusedError
        return "ConnectionRefused"
    if isinstance(exc, httpx.TimeoutException | TimeoutError | av.error.ExitError):
        return "Timeout"  # ExitError: PyAV's own timeout interrupted FFmpeg
    if isinstance(exc, av.error.DecoderNotFoundError | av.error.PatchWelcomeError):
        return "UnsupportedCodec"
    if isinstance(exc, EOFError):  # also av.error.EOFError
        return "StreamEnded"
    text = _text_of(exc)
    for pattern, reason in _TEXT_REASONS:
        if pattern.search(text):
            return reason
    if isinstance(exc, av.error.InvalidDataError):
        # FFmpeg's RTSP client reports a server that never answered as invalid data once its socket
        # timeout has passed; earlier, the peer answered with something that is not RTSP.
        if elapsed is not None and io_timeout is not None and elapsed >= 0.9 * io_timeout:
            return "Timeout"
        return "Unreachable"
    if isinstance(exc, OSError) and exc.errno in _UNREACHABLE_ERRNOS:
        return "Unreachable"
    return None


def classify(exc: BaseException, *, elapsed: float | None = None, io_timeout: float | None = None) -> Reason:
    """Why a camera session failed, from a PyAV, httpx or socket exception.

    `elapsed` (seconds the failed call took) and `io_timeout` (the socket timeout it ran under) tell
    a silent server from one that answered garbage. Unknown failures are "Unreachable".
    """
    for link in _chain(exc):
        reason = _reason_of(link, elapsed, io_timeout)
        if reason is not None:
            return reason
    return "Unreachable"


def describe(exc: BaseException, secrets: tuple[str, ...] = ()) -> str:
    """A short text for `exc` that is safe to show: never the URL PyAV was given, always scrubbed."""
    for link in _chain(exc):
        if isinstance(link, ssl.SSLCertVerificationError):
            return scrub(f"TLS certificate verification failed: {link.verify_message}", secrets)
    if isinstance(exc, av.error.FFmpegError):
        # Not str(exc): PyAV appends the file name, which is the URL with the credentials in it.
        text = exc.strerror or type(exc).__name__
        extra = _ffmpeg_log(exc)
        if extra and extra not in text:
            text = f"{text} ({extra})"
    elif isinstance(exc, httpx.HTTPStatusError):
        text = f"HTTP {exc.response.status_code} {exc.response.reason_phrase}"
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return scrub(text, secrets)


# ----- hosts --------------------------------------------------------------------------------------


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    host = parts.hostname or ""
    return host, parts.port or DEFAULT_PORTS.get(parts.scheme.lower(), 0)


def _resolve(host: str, port: int, timeout: float) -> BaseException | None:
    """Look `host` up with a deadline (getaddrinfo has none); the failure, or None."""
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    outcome: list[BaseException | None] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            outcome.append(None)
        except OSError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=lookup, name=f"resolve {host}", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        return socket.gaierror(socket.EAI_AGAIN, f"no answer for {host} within {timeout:g} s")
    return outcome[0]


# ----- sources ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    """One frame (or JPEG) the reader received, before sampling."""

    payload: av.VideoFrame | bytes
    index: int
    wall: float
    mono: float
    keyframe: bool
    decode_seconds: float


class Source:
    """One session with one camera. `read()` blocks until the next sample is due; `close()` ends it.

    The pipeline runs each Source in a thread of its own; `close()` may come from another thread and
    makes a blocked `read()` raise SourceError("StreamEnded").
    """

    def __init__(self, cfg: SourceConfig, convert: Convert) -> None:
        self.cfg = cfg
        self._convert = convert
        self._name = redact_url(cfg.url)
        self._interval = 1.0 / cfg.fps
        self._next_due: float | None = None
        self._seq = 0
        self._cond = threading.Condition()
        self._read_lock = threading.Lock()
        self._stop = threading.Event()
        self._closed = False
        self._failure: SourceError | None = None
        self._frames_read = 0
        self._frames_decoded = 0
        self._keyframes_only = False
        self._session_open = False
        self._gop: float | None = None
        self._thread_cpu = 0.0  # see SourceStats.cpu_seconds

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.cfg.protocol} {self._name}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def stats(self) -> SourceStats:
        with self._cond:
            return SourceStats(
                frames_read=self._frames_read,
                frames_decoded=self._frames_decoded,
                keyframes_only=self._keyframes_only,
                session_open=self._session_open,
                keyframe_interval=self._gop,
                cpu_seconds=self._thread_cpu,
            )

    def read(self) -> Sample:
        raise NotImplementedError

    def set_fps(self, fps: float) -> None:
        """Sample at `fps` from the next sample on, in the same session (the uplink's plan cuts it)."""
        if not 0 < fps <= MAX_FPS:
            raise ValueError(f"fps must be above 0 and at most {MAX_FPS:g}, got {fps}")
        with self._cond:
            self._interval = 1.0 / fps

    def close(self) -> None:
        """Release the session. Idempotent; returns once the connection is closed (see `_shutdown`)."""
        with self._cond:
            first = not self._closed
            self._closed = True
            self._stop.set()
            self._cond.notify_all()
        if first:
            self._shutdown()
            log.info("source %s: closed", self._name)

    def _shutdown(self) -> None:
        raise NotImplementedError

    # -- helpers shared by the kinds of source

    def _fail(self, reason: Reason, text: str) -> SourceError:
        return SourceError(scrub(f"{self._name}: {text}", self.cfg.secrets), reason=reason)

    def _error(self, exc: BaseException, *, elapsed: float | None = None) -> SourceError:
        io_timeout = min(self.cfg.open_timeout, self.cfg.read_timeout)
        reason = classify(exc, elapsed=elapsed, io_timeout=io_timeout)
        if reason == "Timeout" and isinstance(exc, av.error.InvalidDataError) and elapsed is not None:
            return self._fail(reason, f"the camera did not answer within {elapsed:.3g} s")
        return self._fail(reason, describe(exc, self.cfg.secrets))

    def _guard(self, call: Callable[[], T]) -> T:
        """`call()`, with any failure turned into a classified SourceError.

        The SourceError is raised outside the except block on purpose: the original exception (its
        text may hold the URL with credentials) must not travel along as __context__.
        """
        started = time.monotonic()
        try:
            return call()
        except SourceError:
            raise
        except Exception as exc:
            error = self._error(exc, elapsed=time.monotonic() - started)
        raise error

    def _closed_error(self) -> SourceError:
        return self._fail("StreamEnded", "source closed")

    def _check_host(self) -> None:
        host, port = _host_port(self.cfg.url)
        if not host:
            raise self._fail("Unreachable", "the URL has no host")
        failure = _resolve(host, port, self.cfg.open_timeout)
        if isinstance(failure, socket.gaierror):
            raise self._fail("DNSFailed", f"cannot resolve {host}: {failure.strerror or failure}")

    def _due(self, now: float) -> float:
        if self._next_due is None:
            self._next_due = now
        return self._next_due

    def _advance(self, due: float, now: float) -> None:
        """Schedule the next sample one interval after this one's due time; if that is already past
        (the caller or the camera fell behind), make it due now instead of bursting to catch up."""
        following = due + self._interval
        self._next_due = now if following < now else following

    def _sample(self, frame: av.VideoFrame, item: _Item, due: float, decode_seconds: float) -> Sample:
        """The sample of a decoded frame; moves the schedule on to the next one."""
        sample = Sample(
            image=self._convert(frame),
            orig_hw=(frame.height, frame.width),
            captured_at=item.wall,
            seq=self._seq,
            keyframe=item.keyframe,
            decode_seconds=decode_seconds,
        )
        # The schedule starts at the first sample, however long the first frame took to come.
        now = time.monotonic()
        self._advance(now if self._seq == 0 else due, now)
        self._seq += 1
        return sample


class _StreamingSource(Source):
    """A source whose reader thread receives frames continuously; read() samples the newest one."""

    def __init__(self, cfg: SourceConfig, convert: Convert) -> None:
        super().__init__(cfg, convert)
        self._latest: _Item | None = None
        self._emitted = -1
        self._received = 0
        self._opened_at = self._last_data = self._decoded_at = time.monotonic()
        self._thread: threading.Thread | None = None
        self._cpu_start = 0.0

    def _start(self) -> None:
        with self._cond:
            self._session_open = True
            self._opened_at = self._last_data = self._decoded_at = time.monotonic()
        self._thread = threading.Thread(target=self._reader, name=f"source {self._name}", daemon=True)
        self._thread.start()
        log.info("source %s: session open (%s)", self._name, self.cfg.protocol)

    # -- reader thread

    def _produce(self) -> None:
        """Receive until stopped or failed (raise SourceError or the library's exception)."""
        raise NotImplementedError

    def _release(self) -> None:
        """Close the connection (reader thread)."""
        raise NotImplementedError

    def _interrupt(self) -> None:
        """Unblock the reader from another thread, where the transport allows it."""

    def _reader(self) -> None:
        error: SourceError | None = None
        self._cpu_start = time.thread_time()
        try:
            self._produce()
        except SourceError as exc:
            error = exc
        except Exception as exc:
            error = self._error(exc)
        finally:
            try:
                self._release()
            finally:
                with self._cond:
                    self._thread_cpu = time.thread_time() - self._cpu_start
                    self._session_open = False
                    if error is not None and self._failure is None and not self._stop.is_set():
                        self._failure = error
                    self._cond.notify_all()
        if error is not None and not self._stop.is_set():
            log.debug("source %s: %s (%s)", self._name, error.reason, error)

    def _received_data(self) -> None:
        """Reader thread: data came (the stall clock restarts, the thread's CPU is brought up to date)."""
        with self._cond:
            self._last_data = time.monotonic()
            self._thread_cpu = time.thread_time() - self._cpu_start

    def _publish(
        self, payload: av.VideoFrame | bytes, *, wall: float, keyframe: bool, seconds: float
    ) -> None:
        with self._cond:
            self._received += 1
            self._latest = _Item(payload, self._received, wall, time.monotonic(), keyframe, seconds)
            self._cond.notify_all()

    def _shutdown(self) -> None:
        self._interrupt()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return
        # A live stream ends within one packet; a stalled one once the read timeout fires (FFmpeg's
        # RTSP client may take it twice, as it retries once).
        thread.join(2 * self.cfg.read_timeout + self.cfg.open_timeout)
        if thread.is_alive():
            log.warning("source %s: the reader did not stop; its session closes when it does", self._name)

    # -- sampling (caller's thread)

    def _frame_of(self, item: _Item) -> av.VideoFrame | None:
        """The frame to convert for `item`; None when it cannot be decoded (skip it)."""
        raise NotImplementedError

    def read(self) -> Sample:
        with self._read_lock:
            due = self._due(time.monotonic())
            while True:
                item = self._await(due)
                started = time.perf_counter()
                frame = self._frame_of(item)
                if frame is not None:
                    self._decoded_at = time.monotonic()
                    break
                if time.monotonic() - self._decoded_at > self.cfg.read_timeout:
                    raise self._fail("NoFrames", "the images received cannot be decoded")
            return self._sample(frame, item, due, item.decode_seconds + time.perf_counter() - started)

    def _await(self, due: float) -> _Item:
        """The newest item not sampled yet, once `due` has come; raise the session's failure."""
        with self._cond:
            while True:
                if self._closed:
                    raise self._closed_error()
                now = time.monotonic()
                item = self._latest
                fresh = item is not None and item.index > self._emitted
                ended = self._failure
                # A stream that ended still gives its last frame, at its due time.
                if ended is not None and not (fresh and ended.reason == "StreamEnded"):
                    raise ended
                if item is not None and fresh and now >= due:
                    self._emitted = item.index
                    return item
                if ended is not None:
                    self._cond.wait(max(due - now, 0.001))
                    continue
                stalled = self._stalled(now, fresh)
                if stalled is not None:
                    self._failure = stalled
                    self._stop.set()
                    self._interrupt()
                    raise stalled
                data_deadline, frame_deadline = self._deadlines()
                wake = min(data_deadline, due if fresh else frame_deadline)
                self._cond.wait(max(wake - now, 0.001))

    def _stalled(self, now: float, fresh: bool) -> SourceError | None:
        data_deadline, frame_deadline = self._deadlines()
        if now >= data_deadline:
            return self._fail("Timeout", f"no data from the camera for {self.cfg.read_timeout:g} s")
        if now >= frame_deadline and not fresh:
            silent = now - self._frame_clock()
            return self._fail("NoFrames", f"connected, but no video frame decoded for {silent:.3g} s")
        return None

    def _frame_clock(self) -> float:
        return self._latest.mono if self._latest is not None else self._opened_at

    def _deadlines(self) -> tuple[float, float]:
        """When the silence becomes a Timeout (no bytes) and a NoFrames (bytes, but no frame)."""
        grace = self.cfg.read_timeout
        if self._keyframes_only and self._gop is not None:
            grace += self._gop  # one keyframe per GOP is all that gets decoded
        return self._last_data + self.cfg.read_timeout, self._frame_clock() + grace
