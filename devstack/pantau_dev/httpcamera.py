"""HTTP test camera: an MJPEG stream and JPEG snapshots of looping footage (or a synthetic pattern).

Run as `python -m pantau_dev.httpcamera --config CONFIG.json` (see `cameras.HttpCameraConfig`).
Endpoints, all on the configured host (127.0.0.1 by default): `GET /mjpeg`
(multipart/x-mixed-replace), `GET /snapshot.jpg`, and `GET /healthz` (never behind auth, so
readiness probes need no credentials).

One background thread decodes and JPEG-encodes at the configured frame rate and publishes the latest
frame; every client only waits for the next published frame, so N clients cost one decoder.
"""

from __future__ import annotations

import argparse
import base64
import hmac
import signal
import sys
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import av
import numpy as np
from av.codec.context import CodecContext

from pantau_dev.cameras import HttpCameraConfig

BOUNDARY = "pantauframe"


class FrameSource(threading.Thread):
    """Produces JPEG frames at `fps` forever and keeps the latest one for the HTTP handlers."""

    def __init__(self, config: HttpCameraConfig, stopping: threading.Event) -> None:
        super().__init__(name="frames", daemon=True)
        self.config = config
        self.stopping = stopping
        self._cond = threading.Condition()
        self._seq = 0
        self._jpeg = b""
        self.error: BaseException | None = None
        self._encoder = CodecContext.create("mjpeg", "w")
        self._encoder.width = config.width
        self._encoder.height = config.height
        self._encoder.pix_fmt = "yuvj420p"
        self._encoder.time_base = Fraction(1, config.fps)

    def latest(self, timeout: float) -> bytes | None:
        """The current frame, waiting up to `timeout` for the first one."""
        with self._cond:
            self._cond.wait_for(lambda: self._seq > 0 or self.stopping.is_set(), timeout)
            return self._jpeg or None

    def next_after(self, seq: int, timeout: float) -> tuple[int, bytes] | None:
        """The first frame newer than `seq`, or None on timeout or shutdown."""
        with self._cond:
            self._cond.wait_for(lambda: self._seq > seq or self.stopping.is_set(), timeout)
            if self._seq > seq and not self.stopping.is_set():
                return self._seq, self._jpeg
            return None

    def run(self) -> None:
        try:
            self._produce()
        except BaseException as exc:  # surfaced through /healthz and the log
            self.error = exc
            print(f"frame source failed: {exc!r}", flush=True)
        finally:
            with self._cond:
                self._cond.notify_all()

    def _produce(self) -> None:
        period = 1.0 / self.config.fps
        deadline = time.monotonic()
        frames = self._file_frames() if self.config.source == "file" else self._pattern_frames()
        for index, frame in enumerate(frames):
            if self.stopping.is_set():
                return
            self._publish(self._encode(frame, index))
            deadline += period
            delay = deadline - time.monotonic()
            if delay < -1.0:
                deadline = time.monotonic()  # far behind (machine busy): don't burst to catch up
            elif delay > 0 and self.stopping.wait(delay):
                return

    def _publish(self, jpeg: bytes) -> None:
        with self._cond:
            self._seq += 1
            self._jpeg = jpeg
            self._cond.notify_all()

    def _encode(self, frame: av.VideoFrame, index: int) -> bytes:
        out = frame.reformat(self.config.width, self.config.height, format="yuvj420p")
        out.pts = index
        out.time_base = self._encoder.time_base
        return b"".join(bytes(packet) for packet in self._encoder.encode(out))

    def _file_frames(self) -> Iterator[av.VideoFrame]:
        """Frames of the file at the output rate, looping forever.

        Source frames get a timeline of their own (n / source rate, continuing across loops) and each
        output tick k / fps shows the newest source frame not later than it: frames are dropped or
        repeated to match the rates.
        """
        assert self.config.file is not None
        src_index = 0
        tick = 0
        current: av.VideoFrame | None = None
        while not self.stopping.is_set():
            decoded = 0
            with av.open(str(self.config.file)) as container:
                stream = container.streams.video[0]
                rate = float(stream.average_rate or 0) or 25.0
                for frame in container.decode(stream):
                    decoded += 1
                    t = src_index / rate
                    src_index += 1
                    while current is not None and tick / self.config.fps < t:
                        yield current
                        tick += 1
                    current = frame
            if decoded == 0:
                raise RuntimeError(f"{self.config.file}: no video frames")

    def _pattern_frames(self) -> Iterator[av.VideoFrame]:
        """A gradient with a white square moving across it: cheap, and visibly live."""
        w, h = self.config.width, self.config.height
        ys, xs = np.mgrid[0:h, 0:w]
        base = np.zeros((h, w, 3), dtype=np.uint8)
        base[..., 0] = (xs * 255 // max(w - 1, 1)).astype(np.uint8)
        base[..., 2] = (ys * 255 // max(h - 1, 1)).astype(np.uint8)
        side = max(h // 6, 4)
        index = 0
        while True:
            img = base.copy()
            x = (index * 8) % max(w - side, 1)
            y = (h - side) // 2
            img[y : y + side, x : x + side] = 255
            yield av.VideoFrame.from_ndarray(img, format="rgb24")
            index += 1


class CameraServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, config: HttpCameraConfig, frames: FrameSource, stopping: threading.Event) -> None:
        self.config = config
        self.frames = frames
        self.stopping = stopping
        creds = config.credentials()
        self.expected_auth = (
            "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode() if creds else None
        )
        super().__init__((str(config.host), config.port), Handler)


class Handler(BaseHTTPRequestHandler):
    server: CameraServer
    server_version = "pantau-httpcamera"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._healthz()
        elif not self._authorized():
            self._send(
                HTTPStatus.UNAUTHORIZED,
                b"unauthorized\n",
                "text/plain",
                {"WWW-Authenticate": 'Basic realm="pantau"'},
            )
        elif path == "/snapshot.jpg":
            self._snapshot()
        elif path == "/mjpeg":
            self._mjpeg()
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    def log_message(self, format: str, *args: object) -> None:
        # Request lines only (never headers, which may carry credentials), on stdout = the log file.
        print(f"{self.address_string()} {format % args}", flush=True)

    def _authorized(self) -> bool:
        expected = self.server.expected_auth
        if expected is None:
            return True
        given = self.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), expected.encode())

    def _send(
        self, status: HTTPStatus, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _healthz(self) -> None:
        error = self.server.frames.error
        if error is not None:
            self._send(
                HTTPStatus.SERVICE_UNAVAILABLE, f"frame source failed: {error!r}\n".encode(), "text/plain"
            )
        else:
            self._send(HTTPStatus.OK, b"ok\n", "text/plain")

    def _snapshot(self) -> None:
        jpeg = self.server.frames.latest(timeout=10.0)
        if jpeg is None:
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, b"no frame yet\n", "text/plain")
        else:
            self._send(HTTPStatus.OK, jpeg, "image/jpeg")

    def _mjpeg(self) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        seq = 0
        try:
            while not self.server.stopping.is_set():
                item = self.server.frames.next_after(seq, timeout=10.0)
                if item is None:
                    break
                seq, jpeg = item
                part_head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                self.wfile.write(part_head.encode() + jpeg + b"\r\n")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away


class _Stop(Exception):
    """Raised in the main thread by SIGTERM/SIGINT."""


class _StopOnSignal:
    """Raises `_Stop` once: the stack signals both the process group and each process, so a
    second SIGTERM commonly arrives while the first is being handled."""

    def __init__(self) -> None:
        self.raised = False

    def __call__(self, signum: int, frame: object) -> None:
        if not self.raised:
            self.raised = True
            raise _Stop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pantau_dev.httpcamera")
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args(argv)
    config = HttpCameraConfig.model_validate_json(args.config.read_text())

    stopping = threading.Event()
    frames = FrameSource(config, stopping)
    server = CameraServer(config, frames, stopping)
    # The handler only raises in the main thread, which does nothing but wait: no lock can be held
    # there when it fires. (Blocking signals for sigwait() is not an option: numpy's BLAS threads
    # exist from import time with signals unblocked, and would take a SIGTERM's default action.)
    on_signal = _StopOnSignal()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        frames.start()
        serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        serving.start()
        secured = "yes" if config.secured else "no"
        print(f"serving {config.source} on http://{config.host}:{config.port} auth={secured}")
        print("ready", flush=True)
        while True:
            signal.pause()
    except _Stop:
        pass
    stopping.set()
    server.shutdown()
    server.server_close()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
