"""HTTP cameras through httpx: MJPEG streams (multipart/x-mixed-replace, split by `MultipartParser`)
and JPEG snapshots, one GET per sample.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import time
from typing import Any, Final

import av
import av.error
import httpx

from pantau.ingest.sources.base import (
    Convert,
    Sample,
    Source,
    SourceConfig,
    SourceError,
    _Item,
    _StreamingSource,
)

log = logging.getLogger(__name__)

MAX_MJPEG_PART: Final = 16 << 20
SOI: Final = b"\xff\xd8"  # every JPEG starts with it


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


# ----- sources ------------------------------------------------------------------------------------


def _http_client(cfg: SourceConfig) -> httpx.Client:
    auth = httpx.BasicAuth(cfg.username, cfg.password or "") if cfg.username is not None else None
    return httpx.Client(
        auth=auth,
        timeout=httpx.Timeout(cfg.read_timeout, connect=cfg.open_timeout, pool=cfg.open_timeout),
        verify=False if cfg.tls_insecure else cfg.tls_context(),
        # One connection: a camera's session budget counts every open connection.
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        follow_redirects=True,  # httpx drops the Authorization header when a redirect leaves the host
    )


def _extensions(cfg: SourceConfig) -> dict[str, Any]:
    """Per-request options: the certificate's expected name, when it is not the URL's host (httpcore
    sends it as SNI and verifies the certificate against it)."""
    return {"sni_hostname": cfg.tls_server_name} if cfg.tls_server_name else {}


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
            "GET",
            self.cfg.url,
            headers={"Accept": "multipart/x-mixed-replace, image/jpeg"},
            extensions=_extensions(self.cfg),
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
        response = self._guard(lambda: self._client.get(self.cfg.url, extensions=_extensions(self.cfg)))
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
            return self._sample(frame, item, due, time.perf_counter() - started)

    def _shutdown(self) -> None:
        # Wait for a GET in flight (bounded by the client's timeouts) before closing the client.
        with self._read_lock:
            self._client.close()
            with self._cond:
                self._session_open = False
