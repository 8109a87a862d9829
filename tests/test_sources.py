"""Camera sources: sampling, keyframe-only decoding, failure reasons and redaction.

The integration tests run against the real test cameras (GStreamer RTSP server, HTTP MJPEG/snapshot
server) and the fault-injecting proxy; the rest are unit tests of the pure parts.
"""

from __future__ import annotations

import datetime as dt
import errno
import itertools
import logging
import socket
import ssl
import threading
import time
import traceback
import wave
from collections.abc import Callable, Iterator
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import av
import av.error
import httpx
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pantau.ingest.sources import (
    MultipartParser,
    Reason,
    Sample,
    Source,
    SourceConfig,
    SourceError,
    classify,
    describe,
    gop_seconds,
    multipart_boundary,
    open_source,
)
from pantau.redact import basic_auth_token, redact_url, scrub
from pantau_dev.cameras import HttpCameraConfig, HttpCameraServer, RtspCameraServer, RtspMount
from pantau_dev.faultproxy import FaultProxy
from pantau_dev.net import free_port
from pantau_dev.procs import ProcessTable

integration = pytest.mark.integration

RTSP_USER = "viewer"
RTSP_PASSWORD = "p@ss:w/rd 1"  # must be percent-encoded in the URL PyAV gets
HTTP_USER = "admin"
HTTP_PASSWORD = "hunter2-secret"
WRONG_PASSWORD = "wr0ng p@ss:w/rd"  # distinctive, and with characters that change when encoded
SHORT_CLIP_FRAMES = 15  # 1.5 s at 10 fps


class Recorder:
    """A `convert` that keeps what it returned, to check that samples carry exactly that."""

    def __init__(self) -> None:
        self.returned: list[np.ndarray[Any, Any]] = []

    def __call__(self, frame: av.VideoFrame) -> np.ndarray[Any, Any]:
        image = frame.reformat(width=160, height=120, format="bgr24").to_ndarray()
        self.returned.append(image)
        return image

    def made(self, sample: Sample) -> bool:
        return any(sample.image is image for image in self.returned)


def read_for(source: Source, seconds: float) -> tuple[list[Sample], float]:
    """Samples after the first one, for `seconds` of wall clock; and the time they covered."""
    source.read()
    start = time.monotonic()
    samples: list[Sample] = []
    while time.monotonic() - start < seconds:
        samples.append(source.read())
    return samples, time.monotonic() - start


def assert_rate(samples: list[Sample], elapsed: float, fps: float, tolerance: float = 0.1) -> None:
    expected = fps * elapsed
    # Within 10% (the bound), or one sample on a short run where 10% is less than one.
    assert abs(len(samples) - expected) <= max(tolerance * expected, 1.0), (
        f"{len(samples)} samples in {elapsed:.2f} s at {fps} fps (expected {expected:.1f})"
    )


def increasing(values: list[float]) -> bool:
    return all(b > a for a, b in itertools.pairwise(values))


def leaks(exc: BaseException, text: str, secrets: list[str]) -> list[str]:
    """The secrets (or their URL-encoded forms) found in the exception or in `text`."""
    shown = "\n".join([str(exc), repr(exc), "".join(traceback.format_exception(exc)), text])
    forms = {form for s in secrets for form in (s, quote(s, safe=""), quote(s))}
    return sorted(form for form in forms if form in shown)


# ----- unit tests: redaction ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "rtsp://admin:hunter2@10.0.0.5:554/Streaming/101",
            "rtsp://REDACTED:REDACTED@10.0.0.5:554/Streaming/101",
        ),
        ("rtsp://admin@cam.local/live", "rtsp://REDACTED:REDACTED@cam.local/live"),
        ("rtsp://u:p@ss@cam.local/live", "rtsp://REDACTED:REDACTED@cam.local/live"),  # '@' not escaped
        ("rtsp://u:p%40ss%3A@cam.local/live", "rtsp://REDACTED:REDACTED@cam.local/live"),
        ("http://cam/snap.cgi?user=a&pwd=s3cret&ch=1", "http://cam/snap.cgi?user=a&pwd=REDACTED&ch=1"),
        ("http://cam.local:8080/mjpeg?x=1", "http://cam.local:8080/mjpeg?x=1"),
        ("rtsp://cam.local/path/with@sign", "rtsp://cam.local/path/with@sign"),
        ("/var/footage/clip.avi", "/var/footage/clip.avi"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_scrub_hides_secrets_in_any_form_and_urls_in_text() -> None:
    secret = "p@ss:w/rd 1"
    text = (
        f"Connection to rtsp://viewer:{quote(secret, safe='')}@cam/x failed; "
        f"password was {secret}; header Basic {basic_auth_token('viewer', secret)}"
    )
    clean = scrub(text, [secret, basic_auth_token("viewer", secret), None, ""])
    assert secret not in clean
    assert quote(secret, safe="") not in clean
    assert basic_auth_token("viewer", secret) not in clean
    assert "rtsp://REDACTED:REDACTED@cam/x" in clean
    assert scrub("nothing to hide", [None, ""]) == "nothing to hide"


def test_source_config_rejects_user_info_without_echoing_it() -> None:
    with pytest.raises(ValueError, match="user info") as info:
        SourceConfig("rtsp://admin:hunter2@cam/live", "rtsp", 5)
    assert "hunter2" not in str(info.value)
    with pytest.raises(ValueError, match="fps"):
        SourceConfig("rtsp://cam/live", "rtsp", 31)
    with pytest.raises(ValueError, match="does not take"):
        SourceConfig("http://cam/live", "rtsp", 5)
    cfg = SourceConfig("rtsp://cam/live", "rtsp", 5, username="admin", password="hunter2")
    assert "hunter2" not in repr(cfg)
    assert "admin" not in repr(cfg)


# ----- unit tests: classification -------------------------------------------------------------------


def chained(outer: BaseException, inner: BaseException) -> BaseException:
    outer.__cause__ = inner
    return outer


def http_status(code: int) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "http://cam/mjpeg")
    response = httpx.Response(code, request=request)
    return httpx.HTTPStatusError(f"{code}", request=request, response=response)


URL = "rtsp://viewer:s3cret@cam/x"
CASES: list[tuple[str, BaseException, Reason]] = [
    ("pyav-401", av.error.HTTPUnauthorizedError(-1, "Server returned 401 Unauthorized", URL), "AuthFailed"),
    ("pyav-403", av.error.HTTPForbiddenError(-1, "Server returned 403 Forbidden", URL), "AuthFailed"),
    ("ffmpeg-401-text", av.error.UndefinedError(-1, "Server returned 401 Unauthorized", URL), "AuthFailed"),
    ("http-401", http_status(401), "AuthFailed"),
    ("http-403", http_status(403), "AuthFailed"),
    ("http-404", http_status(404), "Unreachable"),
    ("gaierror", socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "DNSFailed"),
    (
        "pyav-resolve-log",
        av.error.OSError(errno.EIO, "Input/output error", URL, (16, "tcp", "Failed to resolve hostname cam")),
        "DNSFailed",
    ),
    (
        "httpx-dns",
        chained(httpx.ConnectError("[Errno -2]"), socket.gaierror(-2, "Name or service not known")),
        "DNSFailed",
    ),
    (
        "pyav-refused",
        av.error.ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused", URL),
        "ConnectionRefused",
    ),
    (
        "httpx-refused",
        chained(httpx.ConnectError("connect"), ConnectionRefusedError(errno.ECONNREFUSED, "refused")),
        "ConnectionRefused",
    ),
    ("pyav-timeout", av.error.TimeoutError(errno.ETIMEDOUT, "Connection timed out", URL), "Timeout"),
    ("pyav-interrupted", av.error.ExitError(-1, "Immediate exit requested", URL), "Timeout"),
    ("httpx-read-timeout", httpx.ReadTimeout("timed out"), "Timeout"),
    ("httpx-connect-timeout", httpx.ConnectTimeout("timed out"), "Timeout"),
    ("no-decoder", av.error.DecoderNotFoundError(-1, "Decoder not found"), "UnsupportedCodec"),
    ("eof", av.error.EOFError(-1, "End of file", URL), "StreamEnded"),
    ("reset", ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), "Unreachable"),
    ("unknown", RuntimeError("something else"), "Unreachable"),
]


@pytest.mark.parametrize(("exc", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_classify(exc: BaseException, reason: Reason) -> None:
    assert classify(exc) == reason


def test_classify_invalid_data_by_elapsed_time() -> None:
    # FFmpeg's RTSP client says "invalid data" both for a silent server (after its socket timeout)
    # and for a peer that answered something that is not RTSP.
    exc = av.error.InvalidDataError(-1, "Invalid data found when processing input", URL)
    assert classify(exc, elapsed=3.1, io_timeout=3.0) == "Timeout"
    assert classify(exc, elapsed=0.01, io_timeout=3.0) == "Unreachable"


def test_describe_never_shows_the_url_pyav_was_given() -> None:
    exc = av.error.HTTPUnauthorizedError(-1, "Server returned 401 Unauthorized", URL)
    assert "s3cret" in str(exc)  # what PyAV would show
    text = describe(exc, ("s3cret",))
    assert text == "Server returned 401 Unauthorized"
    assert "s3cret" not in describe(RuntimeError(f"failed {URL}"), ("s3cret",))


def test_gop_seconds() -> None:
    assert gop_seconds((0.0, 100.0, 0), (2.0, 100.0, 20), 10.0) == pytest.approx(2.0)
    # Timestamps jumped back: count frames at the stream's rate instead.
    assert gop_seconds((500.0, 100.0, 0), (1.0, 101.0, 10), 10.0) == pytest.approx(1.0)
    # No timestamps and no rate: arrival times.
    assert gop_seconds((None, 100.0, 0), (None, 100.5, 5), None) == pytest.approx(0.5)


# ----- unit tests: MJPEG multipart parsing ----------------------------------------------------------

JPEG_A = b"\xff\xd8" + b"A" * 300 + b"\xff\xd9"
JPEG_B = b"\xff\xd8" + b"B" * 200 + b"\xff\xd9"


def body(boundary: str, parts: list[bytes], *, lengths: bool) -> bytes:
    out = b""
    for part in parts:
        head = f"--{boundary}\r\nContent-Type: image/jpeg\r\n"
        if lengths:
            head += f"Content-Length: {len(part)}\r\n"
        out += head.encode() + b"\r\n" + part + b"\r\n"
    return out


@pytest.mark.parametrize("lengths", [True, False])
@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_multipart_parser_splits_parts(lengths: bool, chunk: int) -> None:
    data = body("frame", [JPEG_A, JPEG_B, JPEG_A], lengths=lengths) + b"--frame\r\n"
    parser = MultipartParser("frame")
    parts = [p for i in range(0, len(data), chunk) for p in parser.feed(data[i : i + chunk])]
    assert parts == [JPEG_A, JPEG_B, JPEG_A]


def test_multipart_parser_tolerates_camera_quirks() -> None:
    # Boundary declared with its dashes, parts without headers, LF line ends.
    data = b"--myboundary\n\n" + JPEG_A + b"\n--myboundary\n\n" + JPEG_B + b"\n--myboundary\n"
    assert MultipartParser("--myboundary").feed(data) == [JPEG_A, JPEG_B]
    assert multipart_boundary('multipart/x-mixed-replace; boundary="myboundary"') == "myboundary"
    assert multipart_boundary("image/jpeg") is None
    with pytest.raises(ValueError, match="boundary"):
        MultipartParser("frame", max_part=1000).feed(b"x" * 2000)


# ----- the test cameras -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def short_clip(vtest: Path, work_dir: Path) -> Path:
    """The first frames of vtest in a 1.5 s file, so that its end comes quickly."""
    path = work_dir / "short.avi"
    with av.open(str(vtest)) as src, av.open(str(path), "w") as out:
        stream = out.add_stream("msmpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 384, 288, "yuv420p"
        for index, frame in enumerate(src.decode(video=0)):
            if index == SHORT_CLIP_FRAMES:
                break
            small = frame.reformat(width=384, height=288)
            small.pts = None
            out.mux(stream.encode(small))
        out.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def rtsp(table: ProcessTable, work_dir: Path, vtest: Path) -> Iterator[RtspCameraServer]:
    mounts = [
        # 10 fps, a keyframe every 2 s.
        RtspMount(path="/vtest", file=vtest, fps=10, width=768, height=576, keyframe_interval=20),
        # A keyframe every second, behind a password.
        RtspMount(
            path="/secure",
            file=vtest,
            fps=10,
            width=384,
            height=288,
            keyframe_interval=10,
            username=RTSP_USER,
            password=RTSP_PASSWORD,
        ),
    ]
    with RtspCameraServer(table, "sources-rtsp", free_port(), mounts, work_dir) as server:
        yield server


@pytest.fixture(scope="module")
def http_camera(table: ProcessTable, work_dir: Path, vtest: Path) -> Iterator[HttpCameraServer]:
    config = HttpCameraConfig(
        port=free_port(),
        file=vtest,
        fps=10,
        width=384,
        height=288,
        username=HTTP_USER,
        password=HTTP_PASSWORD,
    )
    with HttpCameraServer(table, "sources-http", config, work_dir) as server:
        yield server


def secure(rtsp: RtspCameraServer, fps: float, password: str = RTSP_PASSWORD, **kw: Any) -> SourceConfig:
    return SourceConfig(rtsp.url("/secure"), "rtsp", fps, username=RTSP_USER, password=password, **kw)


# ----- RTSP ---------------------------------------------------------------------------------------------


@integration
def test_rtsp_samples_on_the_wall_clock(rtsp: RtspCameraServer) -> None:
    convert = Recorder()
    with open_source(SourceConfig(rtsp.url("/vtest"), "rtsp", 2.0), convert) as source:
        samples, elapsed = read_for(source, 5.0)
        stats = source.stats
    assert_rate(samples, elapsed, 2.0)
    assert all(convert.made(s) for s in samples)
    assert {s.orig_hw for s in samples} == {(576, 768)}
    assert {s.image.shape for s in samples} == {(120, 160, 3)}
    assert increasing([s.captured_at for s in samples])
    assert [s.seq for s in samples] == list(range(1, len(samples) + 1))
    # Sampling at 2 fps of a 10 fps stream: all frames read and decoded, 1 in 5 converted.
    assert stats.frames_read >= 4 * len(samples)
    assert not stats.keyframes_only
    assert stats.keyframe_interval == pytest.approx(2.0, rel=0.1)
    assert len(convert.returned) == len(samples) + 1
    assert not source.stats.session_open


def wait_until(check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@integration
def test_keyframes_only_when_sampling_is_slower_than_keyframes(rtsp: RtspCameraServer) -> None:
    with open_source(secure(rtsp, 0.25), Recorder()) as source:
        source.read()
        wait_until(lambda: source.stats.keyframes_only, timeout=5.0)
        before, engaged_at = source.stats, time.monotonic()
        sample = source.read()  # 4 s after the first
        if time.monotonic() - engaged_at < 2.5:  # engaged late (busy machine): watch one more interval
            sample = source.read()
        after = source.stats
    assert sample.keyframe
    assert after.keyframes_only
    assert after.keyframe_interval == pytest.approx(1.0, rel=0.1)
    read = after.frames_read - before.frames_read
    decoded = after.frames_decoded - before.frames_decoded
    assert read >= 15, after
    assert decoded * 5 <= read, f"{decoded} of {read} frames decoded with keyframes only"


@integration
def test_every_frame_decoded_when_sampling_is_faster_than_keyframes(rtsp: RtspCameraServer) -> None:
    with open_source(secure(rtsp, 5.0), Recorder()) as source:
        samples, elapsed = read_for(source, 2.0)
        stats = source.stats
    assert_rate(samples, elapsed, 5.0)
    assert stats.keyframe_interval is not None
    assert not stats.keyframes_only
    # H.264 P-frames need their predecessors: all are decoded (but for those before the first
    # keyframe, at most a GOP), where keyframes only would decode about one in ten.
    assert stats.frames_decoded >= stats.frames_read - 12, stats


@integration
def test_rtsp_over_udp(rtsp: RtspCameraServer) -> None:
    with open_source(SourceConfig(rtsp.url("/vtest"), "rtsp", 2.0, transport="udp"), Recorder()) as source:
        samples, elapsed = read_for(source, 2.0)
        stats = source.stats
    assert_rate(samples, elapsed, 2.0)
    assert {s.orig_hw for s in samples} == {(576, 768)}
    assert stats.frames_read > 0


@integration
def test_rtsp_wrong_password_is_auth_failed_and_never_shown(
    rtsp: RtspCameraServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for cfg in (secure(rtsp, 2.0, password=WRONG_PASSWORD), SourceConfig(rtsp.url("/secure"), "rtsp", 2.0)):
        with pytest.raises(SourceError) as info:
            open_source(cfg, Recorder())
        assert info.value.reason == "AuthFailed"
        assert info.value.__context__ is None  # the PyAV error (URL with credentials) is not chained
        assert info.value.__cause__ is None
        assert leaks(info.value, caplog.text, [WRONG_PASSWORD, RTSP_PASSWORD]) == []


@integration
def test_connection_refused_and_unresolvable_host() -> None:
    port = free_port()  # nobody listens there
    cases: list[tuple[SourceConfig, Reason]] = [
        (SourceConfig(f"rtsp://127.0.0.1:{port}/x", "rtsp", 1.0), "ConnectionRefused"),
        (SourceConfig(f"http://127.0.0.1:{port}/mjpeg", "http-mjpeg", 1.0), "ConnectionRefused"),
        (SourceConfig("rtsp://nonexistent.invalid/x", "rtsp", 1.0), "DNSFailed"),
        (SourceConfig("http://nonexistent.invalid/snap.jpg", "http-snapshot", 1.0), "DNSFailed"),
    ]
    for cfg, reason in cases:
        with pytest.raises(SourceError) as info:
            open_source(cfg, Recorder())
        assert info.value.reason == reason, f"{cfg.url}: {info.value}"


@integration
@pytest.mark.parametrize("protocol", ["rtsp", "http-mjpeg"])
def test_stall_times_out_within_read_timeout(
    protocol: str, rtsp: RtspCameraServer, http_camera: HttpCameraServer, table: ProcessTable
) -> None:
    read_timeout = 2.0
    target, path = (rtsp.port, "/vtest") if protocol == "rtsp" else (http_camera.port, "/mjpeg")
    scheme = "rtsp" if protocol == "rtsp" else "http"
    with FaultProxy(table, f"stall-{protocol}", "127.0.0.1", target) as proxy:
        cfg = SourceConfig(
            f"{scheme}://{proxy.address}{path}",
            "rtsp" if protocol == "rtsp" else "http-mjpeg",
            5.0,
            username=HTTP_USER if protocol == "http-mjpeg" else None,
            password=HTTP_PASSWORD if protocol == "http-mjpeg" else None,
            read_timeout=read_timeout,
        )
        source = open_source(cfg, Recorder())
        try:
            for _ in range(3):
                source.read()
            assert proxy.mode().connections == 1  # one session, one connection
            proxy.stall()
            stalled_at = time.monotonic()
            with pytest.raises(SourceError) as info:  # noqa: PT012 - frames read before the stall may come first
                while True:
                    source.read()
            waited = time.monotonic() - stalled_at
        finally:
            closing = time.monotonic()
            source.close()
            closed_in = time.monotonic() - closing
            proxy.pass_through()
            wait_until(lambda: proxy.mode().connections == 0, timeout=5.0)
    assert info.value.reason == "Timeout"
    assert waited <= read_timeout + 1.0
    assert closed_in <= 2 * read_timeout + cfg.open_timeout
    assert not source.stats.session_open


# ----- HTTP ---------------------------------------------------------------------------------------------


@integration
@pytest.mark.parametrize("protocol", ["http-mjpeg", "http-snapshot"])
def test_http_sources_sample_with_basic_auth(
    protocol: str, http_camera: HttpCameraServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = http_camera.mjpeg_url if protocol == "http-mjpeg" else http_camera.snapshot_url
    convert = Recorder()
    cfg = SourceConfig(url, protocol, 2.0, username=HTTP_USER, password=HTTP_PASSWORD)
    with open_source(cfg, convert) as source:
        samples, elapsed = read_for(source, 3.0)
        stats = source.stats
    assert_rate(samples, elapsed, 2.0)
    assert all(convert.made(s) and s.keyframe for s in samples)
    assert {s.orig_hw for s in samples} == {(288, 384)}
    assert increasing([s.captured_at for s in samples])
    # Only sampled JPEGs are decoded, whatever the camera sends.
    assert stats.frames_decoded == len(samples) + 1
    assert stats.frames_read >= stats.frames_decoded

    wrong = SourceConfig(url, protocol, 2.0, username=HTTP_USER, password=WRONG_PASSWORD)
    with pytest.raises(SourceError) as info:
        open_source(wrong, Recorder())
    assert info.value.reason == "AuthFailed"
    assert leaks(info.value, caplog.text, [WRONG_PASSWORD, HTTP_PASSWORD]) == []
    assert basic_auth_token(HTTP_USER, HTTP_PASSWORD) not in caplog.text


# ----- files -------------------------------------------------------------------------------------------


@integration
def test_file_loops_past_its_end(short_clip: Path) -> None:
    convert = Recorder()
    with open_source(SourceConfig(str(short_clip), "file", 5.0, loop_file=True), convert) as source:
        samples, elapsed = read_for(source, 4.0)  # the clip lasts 1.5 s: two loops and more
        stats = source.stats
    assert elapsed > 2 * SHORT_CLIP_FRAMES / 10
    assert_rate(samples, elapsed, 5.0)
    assert increasing([s.captured_at for s in samples])  # though the file's timestamps restart
    assert stats.frames_read > 2 * SHORT_CLIP_FRAMES


@integration
def test_file_without_loop_ends_with_stream_ended(short_clip: Path) -> None:
    samples: list[Sample] = []
    with open_source(SourceConfig(short_clip.as_uri(), "file", 5.0), Recorder()) as source:
        with pytest.raises(SourceError) as info:  # noqa: PT012
            while True:
                samples.append(source.read())
        assert info.value.reason == "StreamEnded"
        with pytest.raises(SourceError):  # and it stays ended
            source.read()
    assert 5 <= len(samples) <= 9  # 1.5 s at 5 fps, paced like a camera


@integration
def test_close_from_another_thread_unblocks_read(short_clip: Path) -> None:
    source = open_source(SourceConfig(str(short_clip), "file", 0.1, loop_file=True), Recorder())
    source.read()  # the next one is due in 10 s
    timer = threading.Timer(0.5, source.close)
    timer.start()
    started = time.monotonic()
    with pytest.raises(SourceError) as info:
        source.read()
    timer.join()
    assert time.monotonic() - started < 2.0
    assert info.value.reason == "StreamEnded"
    source.close()  # idempotent
    assert not source.stats.session_open


def test_audio_only_file_has_no_frames(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\0\0" * 8000)
    with pytest.raises(SourceError) as info:
        open_source(SourceConfig(str(path), "file", 1.0), Recorder())
    assert info.value.reason == "NoFrames"


class _NotJpeg(BaseHTTPRequestHandler):
    """An "MJPEG" camera whose parts are not images: data flows, frames never come."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        try:
            for _ in range(100):
                self.wfile.write(b"--frame\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello\r\n")
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:
            pass  # the client went away

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_mjpeg_without_images_is_no_frames() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotJpeg)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        cfg = SourceConfig(
            f"http://127.0.0.1:{server.server_port}/mjpeg", "http-mjpeg", 2.0, read_timeout=1.0
        )
        with open_source(cfg, Recorder()) as source:
            started = time.monotonic()
            with pytest.raises(SourceError) as info:
                source.read()
            waited = time.monotonic() - started
            assert source.stats.frames_read > 0
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert info.value.reason == "NoFrames"
    assert waited <= 2.0


# ----- RTSPS certificate check ------------------------------------------------------------------------


def _record_tls(conn: socket.socket, context: ssl.SSLContext, received: list[bytes]) -> None:
    """Serve TLS on one accepted connection and keep what the client sends first; b"" when the
    client refused the certificate (the handshake failed)."""
    with conn:
        conn.settimeout(2.0)
        try:
            with context.wrap_socket(conn, server_side=True) as tls:
                received.append(tls.recv(4096))
        except OSError:
            received.append(b"")


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, list[bytes]]]:
    """A TLS listener with a self-signed certificate that records what clients send after the handshake."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    _write_pair(tmp_path, "cert", _certificate(name, key, name, key), key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "cert.key")
    received: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            _record_tls(conn, context, received)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], received
    stop.set()
    thread.join(5)
    listener.close()


def test_rtsps_verifies_the_certificate_unless_insecure(tls_server: tuple[int, list[bytes]]) -> None:
    port, received = tls_server
    url = f"rtsps://127.0.0.1:{port}/live"
    with pytest.raises(SourceError) as info:
        open_source(SourceConfig(url, "rtsps", 1.0, open_timeout=3.0, read_timeout=2.0), Recorder())
    assert info.value.reason == "TLSVerifyFailed"
    assert "certificate" in str(info.value)
    assert not any(received), "nothing may be sent to an unverified server"

    insecure = SourceConfig(url, "rtsps", 1.0, open_timeout=3.0, read_timeout=2.0, tls_insecure=True)
    with pytest.raises(SourceError):  # the listener speaks TLS, not RTSP
        open_source(insecure, Recorder())
    assert any(data.startswith(b"OPTIONS rtsps://") for data in received)


# ----- TLS with a camera's own CA (spec.source.tls.caSecretRef and serverName) ----------------------

CAMERA_NAME = "camera.pantau.test"  # the name in the camera's certificate; the URL says 127.0.0.1


def _certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *extensions: tuple[x509.ExtensionType, bool],
) -> x509.Certificate:
    """A certificate valid from a minute ago for a day."""
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def _write_pair(folder: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    (folder / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{stem}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def _ca_and_leaf(tmp_path: Path) -> tuple[str, ssl.SSLContext]:
    """A test CA (PEM) and a server context whose certificate the CA issued for CAMERA_NAME only."""
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pantau test camera CA")])
    usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
    ca = _certificate(
        ca_name, ca_key, ca_name, ca_key, (x509.BasicConstraints(ca=True, path_length=0), True), (usage, True)
    )
    leaf = _certificate(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CAMERA_NAME)]),
        leaf_key,
        ca_name,
        ca_key,
        (x509.SubjectAlternativeName([x509.DNSName(CAMERA_NAME)]), False),
        (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False),
    )
    _write_pair(tmp_path, "leaf", leaf, leaf_key)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    return ca.public_bytes(serialization.Encoding.PEM).decode(), server


class _Snapshot(BaseHTTPRequestHandler):
    """One JPEG per GET (vtest's first frame)."""

    jpeg = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(self.jpeg)))
        self.end_headers()
        self.wfile.write(self.jpeg)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def https_snapshot(tmp_path: Path, vtest: Path) -> Iterator[tuple[str, str]]:
    """An HTTPS snapshot camera whose certificate a test CA issued; yields (URL, CA PEM)."""
    with av.open(str(vtest)) as clip:
        frame = next(clip.decode(video=0))
    _Snapshot.jpeg = _jpeg(frame)
    ca_pem, context = _ca_and_leaf(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Snapshot)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_port}/snapshot.jpg", ca_pem
    server.shutdown()
    server.server_close()


def _jpeg(frame: av.VideoFrame) -> bytes:
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height, codec.pix_fmt = frame.width, frame.height, "yuvj420p"
    codec.time_base = Fraction(1, 25)
    packets = codec.encode(frame.reformat(format="yuvj420p")) + codec.encode(None)
    return b"".join(bytes(p) for p in packets)


def test_https_camera_is_verified_with_its_own_ca_and_server_name(https_snapshot: tuple[str, str]) -> None:
    url, ca_pem = https_snapshot
    trusted = SourceConfig(url, "http-snapshot", 2.0, tls_ca=ca_pem, tls_server_name=CAMERA_NAME)
    with open_source(trusted, Recorder()) as source:
        assert source.read().image.shape == (120, 160, 3)
    for untrusted in (
        SourceConfig(url, "http-snapshot", 2.0, read_timeout=2.0),  # the system CAs do not know it
        SourceConfig(url, "http-snapshot", 2.0, read_timeout=2.0, tls_ca=ca_pem),  # 127.0.0.1 is not its name
    ):
        with pytest.raises(SourceError) as info, open_source(untrusted, Recorder()) as source:
            source.read()
        assert info.value.reason == "TLSVerifyFailed", str(info.value)
    assert "BEGIN CERTIFICATE" not in repr(trusted), "the CA is data from a Secret: not in reprs"


def test_rtsps_camera_is_verified_with_its_own_ca_and_server_name(tmp_path: Path) -> None:
    ca_pem, context = _ca_and_leaf(tmp_path)
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def serve() -> None:
        for _ in range(3):
            conn, _ = listener.accept()
            _record_tls(conn, context, received)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    url = f"rtsps://127.0.0.1:{listener.getsockname()[1]}/live"
    try:
        for ca, name in ((None, None), (ca_pem, None)):
            cfg = SourceConfig(
                url, "rtsps", 1.0, open_timeout=3.0, read_timeout=2.0, tls_ca=ca, tls_server_name=name
            )
            with pytest.raises(SourceError) as info:
                open_source(cfg, Recorder())
            assert info.value.reason == "TLSVerifyFailed"
        good = SourceConfig(
            url, "rtsps", 1.0, open_timeout=3.0, read_timeout=2.0, tls_ca=ca_pem, tls_server_name=CAMERA_NAME
        )
        with pytest.raises(SourceError) as info:  # verified; then FFmpeg speaks RTSP to a silent peer
            open_source(good, Recorder())
        assert info.value.reason != "TLSVerifyFailed"
    finally:
        thread.join(10)
        listener.close()
    assert received[:2] == [b"", b""], "nothing may be sent to an unverified server"
