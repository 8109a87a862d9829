"""Smoke tests of the test cameras (RTSP, HTTP) and the fault-injecting proxy, all real processes."""

from __future__ import annotations

import contextlib
import io
import itertools
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import pytest

from pantau_dev.cameras import HttpCameraConfig, HttpCameraServer, RtspCameraServer, RtspMount
from pantau_dev.faultproxy import FaultProxy
from pantau_dev.net import free_port
from pantau_dev.procs import ProcessTable

pytestmark = pytest.mark.smoke

RTSP_USER = "viewer"
RTSP_PASSWORD = "p@ss:w/rd 1"  # characters that must be escaped in a URL
HTTP_USER = "admin"
HTTP_PASSWORD = "hunter2"
SHORT_CLIP_FRAMES = 15  # 1.5 s at 10 fps: the loop test sees several ends of file


@pytest.fixture(scope="module")
def short_clip(vtest: Path, work_dir: Path) -> Path:
    """The first frames of vtest re-encoded into a short AVI, so looping is quick to observe."""
    path = work_dir / "short.avi"
    with av.open(str(vtest)) as src, av.open(str(path), "w") as out:
        stream = out.add_stream("msmpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 768, 576, "yuv420p"
        for index, frame in enumerate(src.decode(video=0)):
            if index == SHORT_CLIP_FRAMES:
                break
            frame.pts = None
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def rtsp(table: ProcessTable, work_dir: Path, vtest: Path, short_clip: Path) -> Iterator[RtspCameraServer]:
    mounts = [
        RtspMount(
            path="/vtest", source="file", file=vtest, fps=10, width=768, height=576, keyframe_interval=20
        ),
        RtspMount(
            path="/secure",
            source="file",
            file=vtest,
            fps=10,
            width=384,
            height=288,
            keyframe_interval=10,
            username=RTSP_USER,
            password=RTSP_PASSWORD,
        ),
        RtspMount(path="/pattern", source="pattern", fps=15, width=640, height=360, keyframe_interval=15),
        RtspMount(
            path="/short", source="file", file=short_clip, fps=10, width=320, height=240, keyframe_interval=10
        ),
    ]
    with RtspCameraServer(table, "rtsp-camera", free_port(), mounts, work_dir) as server:
        yield server


def read_frames(url: str, count: int, transport: str = "tcp", keep: bool = False) -> list[Any]:
    """Decode `count` frames; (width, height, pts) each, or the frames themselves with `keep`."""
    options = {"rtsp_transport": transport, "timeout": "10000000"}  # socket timeout, microseconds
    frames: list[Any] = []
    with av.open(url, options=options, timeout=(20.0, 10.0)) as container:
        for frame in container.decode(video=0):
            frames.append(frame if keep else (frame.width, frame.height, frame.pts))
            if len(frames) == count:
                break
    return frames


def increasing(pts: list[int | None]) -> bool:
    known = [p for p in pts if p is not None]
    return len(known) > 1 and all(b > a for a, b in itertools.pairwise(known))


def test_rtsp_file_stream_decodes_over_tcp(rtsp: RtspCameraServer) -> None:
    frames = read_frames(rtsp.url("/vtest"), 50)
    assert len(frames) == 50
    assert {(w, h) for w, h, _ in frames} == {(768, 576)}
    assert increasing([p for _, _, p in frames])


def test_rtsp_file_mount_loops_with_increasing_timestamps(rtsp: RtspCameraServer) -> None:
    frames = read_frames(rtsp.url("/short"), 40)
    pts = [p for _, _, p in frames if p is not None]
    assert increasing(pts)
    span_s = (pts[-1] - pts[0]) / 90_000  # RTP clock of H.264
    assert span_s > 2 * SHORT_CLIP_FRAMES / 10, f"stream covered only {span_s:.1f} s"
    assert {(w, h) for w, h, _ in frames} == {(320, 240)}
    record = rtsp.table.get(rtsp.name)
    assert record is not None
    assert "/short: end of file, loop" in Path(record.log).read_text()


def test_rtsp_auth_refuses_missing_or_wrong_credentials(rtsp: RtspCameraServer) -> None:
    plain = rtsp.url("/secure")
    wrong = plain.replace("rtsp://", f"rtsp://{RTSP_USER}:nope@")
    for url in (plain, wrong):
        with pytest.raises(av.error.HTTPUnauthorizedError):
            av.open(url, options={"rtsp_transport": "tcp"}, timeout=(10.0, 10.0))
    frames = read_frames(rtsp.url("/secure", with_credentials=True), 5)
    assert {(w, h) for w, h, _ in frames} == {(384, 288)}

    record = rtsp.table.get(rtsp.name)
    assert record is not None
    assert RTSP_PASSWORD not in Path(record.log).read_text()
    assert rtsp.config_path.stat().st_mode & 0o777 == 0o600


def test_rtsp_pattern_stream_decodes_over_udp(rtsp: RtspCameraServer) -> None:
    frames = read_frames(rtsp.url("/pattern"), 10, transport="udp", keep=True)
    assert {(f.width, f.height) for f in frames} == {(640, 360)}
    assert increasing([f.pts for f in frames])
    first, last = frames[0].to_ndarray(format="gray"), frames[-1].to_ndarray(format="gray")
    assert (first != last).any(), "the pattern should move"


@pytest.fixture(scope="module")
def http_camera(table: ProcessTable, work_dir: Path, vtest: Path) -> Iterator[HttpCameraServer]:
    config = HttpCameraConfig(
        port=free_port(),
        file=vtest,
        fps=10,
        width=768,
        height=576,
        username=HTTP_USER,
        password=HTTP_PASSWORD,
    )
    with HttpCameraServer(table, "http-camera", config, work_dir) as server:
        yield server


def mjpeg_parts(response: httpx.Response, count: int) -> list[bytes]:
    """Split a multipart/x-mixed-replace body into its parts, using each part's Content-Length."""
    boundary = response.headers["content-type"].split("boundary=", 1)[1].encode()
    buf = b""
    parts: list[bytes] = []
    for chunk in response.iter_bytes():
        buf += chunk
        while True:
            start = buf.find(b"--" + boundary + b"\r\n")
            head_end = buf.find(b"\r\n\r\n", start)
            if start < 0 or head_end < 0:
                break
            headers = dict(
                line.split(": ", 1) for line in buf[start:head_end].decode().split("\r\n")[1:] if ": " in line
            )
            length = int(headers["Content-Length"])
            if len(buf) < head_end + 4 + length:
                break
            parts.append(buf[head_end + 4 : head_end + 4 + length])
            buf = buf[head_end + 4 + length :]
            if len(parts) == count:
                return parts
    return parts


def test_http_camera_mjpeg_snapshot_and_auth(http_camera: HttpCameraServer) -> None:
    auth = http_camera.credentials()
    assert auth is not None
    with httpx.Client(timeout=10.0) as client:
        assert client.get(http_camera.healthz_url).status_code == 200

        for bad in (None, (HTTP_USER, "wrong")):
            denied = client.get(http_camera.snapshot_url, auth=bad)
            assert denied.status_code == 401
            assert denied.headers["www-authenticate"].startswith("Basic")
        assert client.get(http_camera.mjpeg_url).status_code == 401

        with client.stream("GET", http_camera.mjpeg_url, auth=auth) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("multipart/x-mixed-replace")
            parts = mjpeg_parts(response, 5)
        assert len(parts) == 5
        assert all(p.startswith(b"\xff\xd8") and p.endswith(b"\xff\xd9") for p in parts)

        snapshot = client.get(http_camera.snapshot_url, auth=auth)
    assert snapshot.status_code == 200
    assert snapshot.headers["content-type"] == "image/jpeg"
    with av.open(io.BytesIO(snapshot.content)) as container:
        frame = next(container.decode(video=0))
    assert (frame.width, frame.height) == (768, 576)


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.server.connections += 1  # type: ignore[attr-defined]
        with contextlib.suppress(ConnectionError):  # the proxy's reset mode aborts us too
            while data := self.request.recv(65536):
                self.request.sendall(data)


@pytest.fixture
def echo_server() -> Iterator[socketserver.ThreadingTCPServer]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    server.connections = 0  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def proxy(table: ProcessTable, echo_server: socketserver.ThreadingTCPServer) -> Iterator[FaultProxy]:
    host, port = echo_server.server_address[:2]
    with FaultProxy(table, "echo-proxy", str(host), int(port)) as fault_proxy:
        yield fault_proxy


def connect(proxy: FaultProxy, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection((proxy.host, proxy.listen_port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def round_trip(sock: socket.socket, payload: bytes = b"ping") -> float:
    start = time.monotonic()
    sock.sendall(payload)
    received = b""
    while len(received) < len(payload):
        chunk = sock.recv(65536)
        assert chunk, "connection closed"
        received += chunk
    assert received == payload
    return time.monotonic() - start


def test_proxy_pass_and_stall(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        round_trip(sock)
        proxy.stall()
        sock.sendall(b"held")
        sock.settimeout(2.0)
        with pytest.raises(TimeoutError):
            sock.recv(1)
        # Still open: after the stall, the data held by the proxy arrives (nothing was dropped).
        proxy.pass_through()
        sock.settimeout(5.0)
        assert sock.recv(4) == b"held"
        round_trip(sock)


def test_proxy_reset(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        round_trip(sock)
        proxy.reset()
        with pytest.raises(ConnectionResetError):
            sock.recv(1)
    # A new connection is reset right after the handshake: connect() or the first read sees it.
    with pytest.raises(ConnectionResetError), connect(proxy) as fresh:
        fresh.recv(1)


def test_proxy_delay(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        baseline = round_trip(sock)
        assert proxy.delay(300).delay_ms == 300
        delayed = round_trip(sock)
    assert delayed - baseline >= 0.3, f"round trip {baseline:.3f} s -> {delayed:.3f} s"


def test_proxy_blackhole(proxy: FaultProxy, echo_server: socketserver.ThreadingTCPServer) -> None:
    proxy.blackhole()
    assert proxy.mode().mode == "blackhole"
    with connect(proxy, timeout=2.0) as sock:
        sock.sendall(b"anyone?")
        with pytest.raises(TimeoutError):
            sock.recv(1)
    assert echo_server.connections == 0  # type: ignore[attr-defined]


def test_proxy_sever_silences_open_links_for_good_and_serves_new_ones(proxy: FaultProxy) -> None:
    with connect(proxy) as old:
        round_trip(old)
        proxy.sever()
        old.sendall(b"hello?")
        old.settimeout(2.0)
        with pytest.raises(TimeoutError):
            old.recv(1)  # silent: no data, no FIN, no RST
        with connect(proxy) as new:
            round_trip(new)  # a client that reconnects is served
        proxy.pass_through()
        with pytest.raises(TimeoutError):
            old.recv(1)  # still silent: the flow is gone for good


def test_rtsp_through_proxy_stall_times_out(rtsp: RtspCameraServer, table: ProcessTable) -> None:
    with FaultProxy(table, "rtsp-proxy", "127.0.0.1", rtsp.port) as fault_proxy:
        url = f"rtsp://{fault_proxy.address}/vtest"
        # PyAV's read timeout (seconds) guards each demux call; the RTSP one is in microseconds.
        options = {"rtsp_transport": "tcp", "timeout": "2000000"}
        with av.open(url, options=options, timeout=(20.0, 2.0)) as container:
            frames = container.decode(video=0)
            for _ in range(5):
                assert next(frames).width == 768
            fault_proxy.stall()
            deadline = time.monotonic() + 15
            with pytest.raises(av.FFmpegError):  # noqa: PT012 - buffered frames may come first
                for _frame in frames:
                    assert time.monotonic() < deadline, "frames still arrive through a stalled proxy"
            fault_proxy.pass_through()  # lets the client's TEARDOWN through on close
