"""Camera sources: one session with one camera, sampled on the wall clock.

`open_source(cfg, convert)` connects (raising `SourceError` with a classified reason when it cannot)
and returns a `Source`, whose blocking `read()` returns the next `Sample` when it is due.

- RTSP/RTSPS and local files go through PyAV. A reader thread drains the stream continuously (a live
  stream that is not read backs up at the camera, then breaks) and decodes it; `read()` takes the
  newest decoded frame when a sample is due and only then runs `convert` on it. When the sample
  interval is longer than the keyframe interval, the decoder skips every non-key frame.
- HTTP MJPEG goes through httpx: a reader thread splits the multipart body and keeps the newest JPEG;
  `read()` decodes only the JPEGs it samples. HTTP snapshots are fetched by `read()` itself, one GET
  per sample.
- Samples are scheduled on `time.monotonic()`, never on stream timestamps, so cameras whose clocks
  jump or restart are sampled at the same rate.

Credentials live only in `SourceConfig` (hidden from its repr) and, for PyAV, in a URL built in
memory for `av.open`. Every message we produce goes through `scrub`, and exceptions from PyAV and
httpx (whose text can hold that URL) are never chained to ours.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import re
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from types import TracebackType
from typing import Any, Final, Literal, Self, TypeVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import av
import av.error
import httpx
import numpy.typing as npt
from av.container import InputContainer
from av.video.codeccontext import VideoCodecContext
from av.video.stream import VideoStream

from pantau.redact import REDACTED, basic_auth_token, redact_url, scrub

log = logging.getLogger(__name__)

Reason = Literal[
    "AuthFailed",
    "DNSFailed",
    "ConnectionRefused",
    "Timeout",
    "UnsupportedCodec",
    "NoFrames",
    "StreamEnded",
    "Unreachable",
]
Protocol = Literal["rtsp", "rtsps", "http-mjpeg", "http-snapshot", "file"]
Transport = Literal["tcp", "udp"]
Image = npt.NDArray[Any]
Convert = Callable[[av.VideoFrame], Image]
T = TypeVar("T")

MIN_FPS: Final = 0.1
MAX_FPS: Final = 30.0
# Keyframes only once the sample interval reaches the keyframe interval (a 5% margin for
# measurement jitter: one sample per GOP is exactly the common "1 frame / 2 s, keyframe every
# 2 s" case), back to every frame below 90% of it; the gap keeps the decoder from flipping.
KEYFRAMES_ONLY_ABOVE: Final = 0.95
KEYFRAMES_ONLY_BELOW: Final = 0.9
MAX_GOP_SECONDS: Final = 60.0  # a longer "keyframe interval" is a timestamp jump, not a GOP
# PyAV probes the stream when it opens; FFmpeg's default (5 s) would delay every (re)connection.
ANALYZE_MICROSECONDS: Final = 1_000_000
MAX_MJPEG_PART: Final = 16 << 20
SOI: Final = b"\xff\xd8"  # every JPEG starts with it
DEFAULT_PORTS: Final = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}
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
    loop_file: bool = False

    def __post_init__(self) -> None:
        # Messages never quote the URL as given: it may hold a password despite the CRD's rule.
        if urlsplit(self.url).username is not None or "@" in urlsplit(self.url).netloc:
            raise ValueError("the source URL must not contain user info; pass username/password instead")
        scheme = urlsplit(self.url).scheme.lower()
        if scheme not in URL_SCHEMES[self.protocol]:
            raise ValueError(f"protocol {self.protocol} does not take {scheme or 'plain'} URLs")
        if not MIN_FPS <= self.fps <= MAX_FPS:
            raise ValueError(f"fps must be between {MIN_FPS} and {MAX_FPS}, got {self.fps}")
        if self.open_timeout <= 0 or self.read_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if self.password is not None and self.username is None:
            raise ValueError("a password needs a username")

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
        return "Unreachable"
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


# ----- FFmpeg's log -------------------------------------------------------------------------------

FFMPEG_LOGGER: Final = "libav"  # PyAV logs FFmpeg's messages as libav.<component>
_AUTH_HEADER: Final = re.compile(r"(?im)^([ \t]*(?:proxy-)?authorization:[ \t]*)[^\r\n]*")


class _FfmpegLogScrubber:
    """Keeps camera credentials out of FFmpeg's log.

    Once anything calls `av.logging.set_level`, PyAV turns FFmpeg's log into records of the `libav.*`
    loggers, and at DEBUG FFmpeg's RTSP client logs every request it sends with its `Authorization:
    Basic <user:password in base64>` header. A log record factory (a filter on the `libav` logger would
    not see its children's records) rewrites those records as they are made: header values and URL
    user info are redacted, and so is every secret of an open session, in any of its encodings.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: Counter[str] = Counter()
        self._factory: Callable[..., logging.LogRecord] | None = None

    def hold(self, secrets: tuple[str, ...]) -> Callable[[], None]:
        """Scrub `secrets` until the returned function is called (once or more)."""
        with self._lock:
            if self._factory is None:  # installed on first use, never at import
                self._factory = logging.getLogRecordFactory()
                logging.setLogRecordFactory(self._record)
            self._secrets.update(secrets)
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if not released:
                    released = True
                    self._secrets.subtract(secrets)
                    self._secrets = +self._secrets  # forget what no open session holds

        return release

    def _record(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        assert self._factory is not None
        record = self._factory(*args, **kwargs)
        if record.name == FFMPEG_LOGGER or record.name.startswith(FFMPEG_LOGGER + "."):
            with self._lock:
                secrets = tuple(self._secrets)
            text = _AUTH_HEADER.sub(rf"\g<1>{REDACTED}", record.getMessage())
            record.msg, record.args = scrub(text, secrets), ()
        return record


_FFMPEG_LOG: Final = _FfmpegLogScrubber()


# ----- URLs ---------------------------------------------------------------------------------------


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    host = parts.hostname or ""
    return host, parts.port or DEFAULT_PORTS.get(parts.scheme.lower(), 0)


def _with_userinfo(url: str, username: str | None, password: str | None) -> str:
    """`url` with percent-encoded credentials, for PyAV only: never log or store the result."""
    if username is None:
        return url
    parts = urlsplit(url)
    userinfo = quote(username, safe="")
    if password is not None:
        userinfo += ":" + quote(password, safe="")
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{parts.netloc}"))


def _file_path(url: str) -> str:
    parts = urlsplit(url)
    return unquote(parts.path) if parts.scheme.lower() == "file" else url


def multipart_boundary(content_type: str) -> str | None:
    """The boundary parameter of a multipart Content-Type header, unquoted."""
    for param in content_type.split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "boundary":
            return value.strip().strip('"') or None
    return None


class MultipartParser:
    """Splits a multipart/x-mixed-replace body (an MJPEG stream) into the payloads of its parts.

    Tolerates what cameras do: a boundary declared with or without its leading dashes, parts without
    Content-Length (the payload then ends at the next boundary), parts without headers.
    """

    def __init__(self, boundary: str, max_part: int = MAX_MJPEG_PART) -> None:
        token = boundary.strip().strip('"').lstrip("-")
        if not token:
            raise ValueError("empty multipart boundary")
        # A delimiter line: start of data or a newline, any dashes, the token, an optional closing "--".
        self._delimiter = re.compile(
            rb"(?:\A|\n)-*" + re.escape(token.encode("latin-1")) + rb"(?:--)?[ \t]*\r?\n"
        )
        self._buf = bytearray()
        self._max = max_part
        self._in_part = False

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the payloads completed by them. ValueError on a runaway part."""
        self._buf += data
        parts: list[bytes] = []
        while True:
            if not self._in_part:
                match = self._delimiter.search(self._buf)
                if match is None:
                    break
                del self._buf[: match.end()]
                self._in_part = True
            body = self._body_start()
            if body is None:
                break
            start, length = body
            if length is not None:
                if len(self._buf) < start + length:
                    break
                parts.append(bytes(self._buf[start : start + length]))
                del self._buf[: start + length]
                self._in_part = False
                continue
            match = self._delimiter.search(self._buf, start)
            if match is None:
                break
            end = match.start()
            if end > start and self._buf[end - 1 : end] == b"\r":
                end -= 1
            parts.append(bytes(self._buf[start:end]))
            del self._buf[: match.end()]  # now inside the next part
        if len(self._buf) > self._max:
            raise ValueError(f"no multipart boundary within {self._max} bytes")
        return [p for p in parts if p]

    def _body_start(self) -> tuple[int, int | None] | None:
        """(payload offset, Content-Length or None) of the part at the buffer's start, once known."""
        buf = self._buf
        if buf.startswith(SOI):
            return 0, None  # no headers at all
        for blank in (b"\r\n", b"\n"):
            if buf.startswith(blank):
                return len(blank), None
        match = re.search(rb"\r?\n\r?\n", buf)
        if match is None:
            return None
        length: int | None = None
        for line in bytes(buf[: match.start()]).decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-length" and value.strip().isdigit():
                length = int(value.strip())
        return match.end(), length


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
            )

    def read(self) -> Sample:
        raise NotImplementedError

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


class _StreamingSource(Source):
    """A source whose reader thread receives frames continuously; read() samples the newest one."""

    def __init__(self, cfg: SourceConfig, convert: Convert) -> None:
        super().__init__(cfg, convert)
        self._latest: _Item | None = None
        self._emitted = -1
        self._received = 0
        self._opened_at = self._last_data = self._decoded_at = time.monotonic()
        self._thread: threading.Thread | None = None

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
                    self._session_open = False
                    if error is not None and self._failure is None and not self._stop.is_set():
                        self._failure = error
                    self._cond.notify_all()
        if error is not None and not self._stop.is_set():
            log.debug("source %s: %s (%s)", self._name, error.reason, error)

    def _received_data(self) -> None:
        with self._cond:
            self._last_data = time.monotonic()

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
            image = self._convert(frame)
            sample = Sample(
                image=image,
                orig_hw=(frame.height, frame.width),
                captured_at=item.wall,
                seq=self._seq,
                keyframe=item.keyframe,
                decode_seconds=item.decode_seconds + time.perf_counter() - started,
            )
            # The schedule starts at the first sample, however long the first frame took to come.
            now = time.monotonic()
            self._advance(now if self._seq == 0 else due, now)
            self._seq += 1
            return sample

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


def _rate(stream: VideoStream) -> float | None:
    for rate in (stream.average_rate, stream.guessed_rate):
        if rate:
            return float(rate)
    return None


def gop_seconds(
    previous: tuple[float | None, float, int], current: tuple[float | None, float, int], rate: float | None
) -> float | None:
    """Seconds between two keyframes, each given as (pts in seconds or None, monotonic time, index).

    Timestamps first (arrival times are bunched by buffering), unless they jumped; then the number
    of frames at the stream's rate; then arrival times.
    """
    (pts0, mono0, index0), (pts1, mono1, index1) = previous, current
    if pts0 is not None and pts1 is not None and 0 < pts1 - pts0 <= MAX_GOP_SECONDS:
        return pts1 - pts0
    if rate and index1 > index0:
        return (index1 - index0) / rate
    if mono1 > mono0:
        return mono1 - mono0
    return None


class _AvSource(_StreamingSource):
    """RTSP, RTSPS and files through PyAV."""

    def __init__(self, cfg: SourceConfig, convert: Convert) -> None:
        super().__init__(cfg, convert)
        self._container: InputContainer | None = None
        self._last_key: tuple[float | None, float, int] | None = None
        self._packets = 0
        # FFmpeg's DEBUG log quotes this session's credentials: scrubbed until the session is closed.
        self._unhold = _FFMPEG_LOG.hold(cfg.secrets)
        try:
            self._container, self._stream = self._open()
        except BaseException:
            self._unhold()
            raise
        self._start()

    def _open(self) -> tuple[InputContainer, VideoStream]:
        cfg = self.cfg
        options: dict[str, str] = {}
        if cfg.protocol == "file":
            target = _file_path(cfg.url)
        else:
            self._check_host()
            if cfg.protocol == "rtsps" and not cfg.tls_insecure:
                self._verify_tls()
            target = _with_userinfo(cfg.url, cfg.username, cfg.password)
            options = {
                "rtsp_transport": cfg.transport,
                # The RTSP socket I/O timeout, in µs ("stimeout" before FFmpeg 5, which removed it).
                "timeout": str(int(cfg.read_timeout * 1_000_000)),
                "analyzeduration": str(ANALYZE_MICROSECONDS),
                "allowed_media_types": "video",  # no audio session: less bandwidth on thin links
            }
        container = self._guard(
            lambda: av.open(target, "r", options=options, timeout=(cfg.open_timeout, cfg.read_timeout))
        )
        if not container.streams.video:
            container.close()
            raise self._fail("NoFrames", "the stream has no video")
        stream = container.streams.video[0]
        context: VideoCodecContext | None = stream.codec_context
        if context is None:
            container.close()
            raise self._fail("UnsupportedCodec", "no decoder for the video codec")
        return container, stream

    def _verify_tls(self) -> None:
        """FFmpeg's RTSPS client never verifies the server certificate (its TLS layer does not by
        default and the RTSP demuxer passes it no options), so check it with Python's ssl first."""
        host, port = _host_port(self.cfg.url)
        context = ssl.create_default_context()

        def handshake() -> None:
            with (
                socket.create_connection((host, port), timeout=self.cfg.open_timeout) as raw,
                context.wrap_socket(raw, server_hostname=host),
            ):
                pass

        self._guard(handshake)

    # -- reader thread

    def _produce(self) -> None:
        while not self._stop.is_set():
            container = self._container
            assert container is not None
            self._pump(container, self._stream)
            if self._stop.is_set():
                return
            if self.cfg.protocol != "file":
                raise self._fail("StreamEnded", "the camera ended the stream")
            if not self.cfg.loop_file:
                raise self._fail("StreamEnded", "end of file")
            # Loop the file: one container at a time, timestamps restart (sampling does not care).
            container.close()
            self._container = None
            self._last_key = None
            self._container, self._stream = self._open()

    def _pump(self, container: InputContainer, stream: VideoStream) -> None:
        context = stream.codec_context
        context.skip_frame = "NONKEY" if self._keyframes_only else "DEFAULT"
        rate = _rate(stream)
        paced = self.cfg.protocol == "file"
        period = 1.0 / (rate or 25.0)
        clock = time.monotonic()
        for packet in container.demux(stream):
            if self._stop.is_set():
                return
            if paced:
                # Replay at the file's own rate, as a camera would send it.
                delay = clock - time.monotonic()
                if delay < -1.0:
                    clock = time.monotonic()  # fell behind (busy machine): carry on, don't burst
                elif delay > 0 and self._stop.wait(delay):
                    return
                clock += period
            wall = time.time()
            self._received_data()
            if packet.size == 0:  # end of stream: drain the decoder
                self._decode(context, None, wall)
                return
            with self._cond:
                self._frames_read += 1
                self._packets += 1
            if packet.is_keyframe:
                self._on_keyframe(packet.pts, packet.time_base, context, rate)
            self._decode(context, packet, wall)

    def _decode(self, context: VideoCodecContext, packet: av.Packet[VideoStream] | None, wall: float) -> None:
        started = time.perf_counter()
        try:
            frames = context.decode(packet)
        except av.error.InvalidDataError:
            return  # a damaged packet; the next keyframe recovers (no frame at all → NoFrames)
        if not frames:
            return
        with self._cond:
            self._frames_decoded += len(frames)
        frame = frames[-1]
        self._publish(frame, wall=wall, keyframe=frame.key_frame, seconds=time.perf_counter() - started)

    def _on_keyframe(
        self, pts: int | None, time_base: Fraction | None, context: VideoCodecContext, rate: float | None
    ) -> None:
        seconds = float(pts * time_base) if pts is not None and time_base else None
        current = (seconds, time.monotonic(), self._packets)
        gop = gop_seconds(self._last_key, current, rate) if self._last_key is not None else None
        self._last_key = current
        if gop is None:
            return
        threshold = KEYFRAMES_ONLY_BELOW if self._keyframes_only else KEYFRAMES_ONLY_ABOVE
        wanted = self._interval >= gop * threshold
        with self._cond:
            self._gop = gop
            changed = wanted != self._keyframes_only
            self._keyframes_only = wanted
        if changed:
            # Switched at a keyframe, so decoding every frame from here on has its references.
            context.skip_frame = "NONKEY" if wanted else "DEFAULT"
            log.info(
                "source %s: decoding %s (a sample every %.3g s, a keyframe every %.3g s)",
                self._name,
                "keyframes only" if wanted else "every frame",
                self._interval,
                gop,
            )

    def _release(self) -> None:
        container, self._container = self._container, None
        try:
            if container is not None:
                container.close()  # the RTSP TEARDOWN is a request with credentials too
        finally:
            self._unhold()

    def _frame_of(self, item: _Item) -> av.VideoFrame | None:
        return item.payload if isinstance(item.payload, av.VideoFrame) else None


def _http_client(cfg: SourceConfig) -> httpx.Client:
    auth = httpx.BasicAuth(cfg.username, cfg.password or "") if cfg.username is not None else None
    return httpx.Client(
        auth=auth,
        timeout=httpx.Timeout(cfg.read_timeout, connect=cfg.open_timeout, pool=cfg.open_timeout),
        verify=not cfg.tls_insecure,
        # One connection: a camera's session budget counts every open connection.
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        follow_redirects=True,  # httpx drops the Authorization header when a redirect leaves the host
    )


def _status_error(source: Source, response: httpx.Response) -> SourceError | None:
    if response.status_code in (401, 403):
        return source._fail("AuthFailed", f"HTTP {response.status_code} {response.reason_phrase}")
    if response.status_code >= 400:
        return source._fail("Unreachable", f"HTTP {response.status_code} {response.reason_phrase}")
    return None


class _JpegDecoder:
    """Decodes JPEG bytes into an av.VideoFrame with FFmpeg's mjpeg decoder (one per source)."""

    def __init__(self) -> None:
        self._context = av.CodecContext.create("mjpeg", "r")

    def decode(self, data: bytes) -> av.VideoFrame | None:
        try:
            frames = self._context.decode(av.Packet(data))
        except (av.error.FFmpegError, ValueError):
            return None
        return frames[-1] if frames else None


class _MjpegSource(_StreamingSource):
    """HTTP multipart/x-mixed-replace: JPEGs are kept as bytes and decoded only when sampled."""

    def __init__(self, cfg: SourceConfig, convert: Convert) -> None:
        super().__init__(cfg, convert)
        self._check_host()
        self._client = _http_client(cfg)
        self._decoder = _JpegDecoder()
        self._response: httpx.Response | None = None
        try:
            self._response, self._parser = self._connect()
        except SourceError:
            self._client.close()
            raise
        self._start()

    def _connect(self) -> tuple[httpx.Response, MultipartParser]:
        request = self._client.build_request(
            "GET", self.cfg.url, headers={"Accept": "multipart/x-mixed-replace, image/jpeg"}
        )
        response = self._guard(lambda: self._client.send(request, stream=True))
        error = _status_error(self, response)
        content_type = response.headers.get("content-type", "")
        boundary = multipart_boundary(content_type)
        if error is None and (not content_type.lower().startswith("multipart/") or boundary is None):
            error = self._fail(
                "UnsupportedCodec",
                f"not an MJPEG stream (Content-Type {content_type or 'missing'}); "
                "use protocol http-snapshot for single images",
            )
        if error is not None or boundary is None:
            response.close()
            raise error or self._fail("UnsupportedCodec", "no multipart boundary")
        return response, MultipartParser(boundary)

    def _produce(self) -> None:
        assert self._response is not None
        for chunk in self._response.iter_bytes():
            if self._stop.is_set():
                return
            self._received_data()
            wall = time.time()
            for part in self._split(chunk):
                with self._cond:
                    self._frames_read += 1
                if part.startswith(SOI):
                    self._publish(part, wall=wall, keyframe=True, seconds=0.0)
        if not self._stop.is_set():
            raise self._fail("StreamEnded", "the camera ended the MJPEG stream")

    def _split(self, chunk: bytes) -> list[bytes]:
        try:
            return self._parser.feed(chunk)
        except ValueError as exc:
            text = str(exc)
        raise self._fail("NoFrames", text)

    def _interrupt(self) -> None:
        # Shut the socket down so that a reader blocked in recv() returns now, not at the read timeout.
        response = self._response
        stream: Any = response.extensions.get("network_stream") if response is not None else None
        sock: Any = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _release(self) -> None:
        try:
            if self._response is not None:
                self._response.close()
        except Exception:  # a shut-down socket may complain; it is closed either way
            log.debug("source %s: closing the response failed", self._name)
        finally:
            self._client.close()

    def _frame_of(self, item: _Item) -> av.VideoFrame | None:
        assert isinstance(item.payload, bytes)
        frame = self._decoder.decode(item.payload)
        if frame is not None:
            with self._cond:
                self._frames_decoded += 1
        return frame


class _SnapshotSource(Source):
    """HTTP JPEG snapshots: one GET per sample, when it is due (that is the sampling)."""

    def __init__(self, cfg: SourceConfig, convert: Convert) -> None:
        super().__init__(cfg, convert)
        self._check_host()
        self._client = _http_client(cfg)
        self._decoder = _JpegDecoder()
        try:
            # Fetch once now: a wrong password or URL should fail the open, not the first read.
            self._pending: _Item | None = self._fetch()
        except SourceError:
            self._client.close()
            raise
        with self._cond:
            self._session_open = True
        self._decoded_at = time.monotonic()
        log.info("source %s: session open (%s)", self._name, cfg.protocol)

    def _fetch(self) -> _Item:
        started = time.perf_counter()
        response = self._guard(lambda: self._client.get(self.cfg.url))
        error = _status_error(self, response)
        if error is not None:
            raise error
        with self._cond:
            self._frames_read += 1
        return _Item(response.content, 0, time.time(), time.monotonic(), True, time.perf_counter() - started)

    def read(self) -> Sample:
        with self._read_lock:
            while True:
                due = self._due(time.monotonic())
                if self._stop.wait(max(due - time.monotonic(), 0.0)) or self._closed:
                    raise self._closed_error()
                item, self._pending = self._pending, None
                if item is None or time.monotonic() - item.mono > self._interval:
                    item = self._fetch()
                started = time.perf_counter()
                assert isinstance(item.payload, bytes)
                frame = self._decoder.decode(item.payload)
                if frame is not None:
                    self._decoded_at = time.monotonic()
                    break
                # One broken image is skipped; only a camera that never sends a good one fails.
                if time.monotonic() - self._decoded_at > self.cfg.read_timeout:
                    raise self._fail("NoFrames", "the snapshots received are not decodable JPEGs")
                self._advance(due, time.monotonic())
            with self._cond:
                self._frames_decoded += 1
            image = self._convert(frame)
            sample = Sample(
                image=image,
                orig_hw=(frame.height, frame.width),
                captured_at=item.wall,
                seq=self._seq,
                keyframe=True,
                decode_seconds=time.perf_counter() - started,
            )
            # The schedule starts at the first sample, however long the first frame took to come.
            now = time.monotonic()
            self._advance(now if self._seq == 0 else due, now)
            self._seq += 1
            return sample

    def _shutdown(self) -> None:
        # Wait for a GET in flight (bounded by the client's timeouts) before closing the client.
        with self._read_lock:
            self._client.close()
            with self._cond:
                self._session_open = False


def open_source(cfg: SourceConfig, convert: Convert) -> Source:
    """Connect to the camera (or open the file) and return the session; SourceError if it fails.

    `convert` runs only on sampled frames, in the thread that calls `read()`.
    """
    if cfg.protocol == "http-mjpeg":
        return _MjpegSource(cfg, convert)
    if cfg.protocol == "http-snapshot":
        return _SnapshotSource(cfg, convert)
    return _AvSource(cfg, convert)
