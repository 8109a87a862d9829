"""RTSP, RTSPS and local files through PyAV: the source, keyframe-only decoding, the TLS check FFmpeg
skips, and the scrubber that keeps credentials out of FFmpeg's log.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from fractions import Fraction
from typing import Any, Final
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import av
import av.error
from av.container import InputContainer
from av.video.codeccontext import VideoCodecContext
from av.video.stream import VideoStream

from pantau.ingest.sources.base import Convert, SourceConfig, _host_port, _Item, _StreamingSource
from pantau.redact import REDACTED, scrub

log = logging.getLogger(__name__)

# Keyframes only once the sample interval reaches the keyframe interval (a 5% margin for
# measurement jitter: one sample per GOP is exactly the common "1 frame / 2 s, keyframe every
# 2 s" case), back to every frame below 90% of it; the gap keeps the decoder from flipping.
KEYFRAMES_ONLY_ABOVE: Final = 0.95
KEYFRAMES_ONLY_BELOW: Final = 0.9
MAX_GOP_SECONDS: Final = 60.0  # a longer "keyframe interval" is a timestamp jump, not a GOP
# PyAV probes the stream when it opens; FFmpeg's default (5 s) would delay every (re)connection.
ANALYZE_MICROSECONDS: Final = 1_000_000


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


# ----- keyframes and the source -------------------------------------------------------------------


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
        context = self.cfg.tls_context()

        def handshake() -> None:
            with (
                socket.create_connection((host, port), timeout=self.cfg.open_timeout) as raw,
                context.wrap_socket(raw, server_hostname=self.cfg.tls_host),
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
