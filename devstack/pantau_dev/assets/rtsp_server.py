"""RTSP test camera: serves looping footage and synthetic patterns as live H.264.

Runs under Debian's /usr/bin/python3, the only interpreter that can import `gi`; it therefore
uses the standard library only. Usage: `rtsp_server.py CONFIG.json` (written by
`pantau_dev.cameras.RtspCameraServer`). Prints "ready" once the server accepts connections.

File mounts are decoded by one pipeline per mount that runs for the life of the process:
`filesrc ! decodebin ! ... ! appsink`, paced in real time by the appsink's clock sync. It loops
with segment seeks: the first seek is a flushing SEGMENT seek to 0, and each SEGMENT_DONE at the
end of the file is answered with a non-flushing SEGMENT seek back to 0 (stop = file duration), so
running time (and the appsink's pacing) just carries on. Frames are pushed into the live
`appsrc` of the RTSP media with `do-timestamp=true`, so the RTP timestamps come from the media's
own clock and keep increasing across loops whatever the file's timestamps do. The RTSP side is a
shared media per mount: one encoder for all clients.
"""

from __future__ import annotations

import faulthandler
import json
import signal
import sys
import threading
from typing import Any

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstApp", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

HOST = "127.0.0.1"
# RTP/RTCP UDP ports come from this range on the server's address; taken ports are skipped by the server.
UDP_PORT_MIN = 20000
UDP_PORT_MAX = 29999
ANONYMOUS_ROLE = "anonymous"


def log(message: str) -> None:
    print(message, flush=True)


def raw_caps(mount: dict[str, Any]) -> str:
    return (
        f"video/x-raw,format=I420,width={int(mount['width'])},height={int(mount['height'])},"
        f"framerate={int(mount['fps'])}/1,pixel-aspect-ratio=1/1"
    )


def encoder(mount: dict[str, Any]) -> str:
    # config-interval=-1 repeats SPS/PPS with every IDR so clients can join a shared media mid-stream.
    return (
        f"x264enc tune=zerolatency speed-preset=ultrafast threads=1 bframes=0 "
        f"key-int-max={int(mount['keyframe_interval'])} ! video/x-h264,profile=constrained-baseline ! "
        "rtph264pay name=pay0 pt=96 config-interval=-1"
    )


class FileLoop:
    """Decodes one file forever in real time and feeds the appsrc of every live media of a mount."""

    def __init__(self, mount: dict[str, Any]) -> None:
        self.path = str(mount["path"])
        self.loops = 0
        self._stop = -1
        self._lock = threading.Lock()
        self._targets: list[Any] = []
        self.pipeline: Any = Gst.parse_launch(
            "filesrc name=file ! decodebin ! videoconvert ! videoscale ! videorate ! "
            f"{raw_caps(mount)} ! appsink name=sink sync=true max-buffers=2 drop=true emit-signals=true"
        )
        # Set as a property, not in the launch string, so any path (spaces, quotes) is safe.
        self.pipeline.get_by_name("file").set_property("location", str(mount["file"]))
        self.pipeline.get_by_name("sink").connect("new-sample", self._on_sample)
        bus = self.pipeline.get_bus()
        bus.add_signal_watch()
        bus.connect("message", self._on_message)

    def start(self) -> None:
        self.pipeline.set_state(Gst.State.PAUSED)
        result, _state, _pending = self.pipeline.get_state(10 * Gst.SECOND)
        if result == Gst.StateChangeReturn.FAILURE:
            raise RuntimeError(f"{self.path}: cannot open the file")
        # Segments end at the file's full duration: left open, avidemux ends them at the last
        # frame's start, so each loop overlapped the previous one by a frame and sent a burst.
        ok, duration = self.pipeline.query_duration(Gst.Format.TIME)
        if ok and duration > 0:
            self._stop = duration
        self._seek(Gst.SeekFlags.FLUSH)
        self.pipeline.set_state(Gst.State.PLAYING)

    def stop(self) -> None:
        self.pipeline.set_state(Gst.State.NULL)

    def add(self, appsrc: Any) -> None:
        with self._lock:
            self._targets.append(appsrc)

    def remove(self, appsrc: Any) -> None:
        with self._lock:
            self._targets = [t for t in self._targets if t is not appsrc]

    def _seek(self, extra: Any) -> None:
        flags = Gst.SeekFlags.SEGMENT | Gst.SeekFlags.ACCURATE | extra
        stop_type = Gst.SeekType.SET if self._stop > 0 else Gst.SeekType.NONE
        if not self.pipeline.seek(1.0, Gst.Format.TIME, flags, Gst.SeekType.SET, 0, stop_type, self._stop):
            log(f"{self.path}: segment seek refused; looping on EOS instead")

    def _on_sample(self, sink: Any) -> Any:
        sample = sink.emit("pull-sample")
        if sample is None:
            return Gst.FlowReturn.OK
        buf = sample.get_buffer()
        with self._lock:
            targets = list(self._targets)
        for appsrc in targets:
            # A fresh (shallow) copy per media: appsrc stamps it with its own running time.
            out = buf.copy()
            out.pts = Gst.CLOCK_TIME_NONE
            out.dts = Gst.CLOCK_TIME_NONE
            appsrc.emit("push-buffer", out)
        return Gst.FlowReturn.OK

    def _on_message(self, _bus: Any, message: Any) -> None:
        if message.type == Gst.MessageType.SEGMENT_DONE:
            self.loops += 1
            log(f"{self.path}: end of file, loop {self.loops}")
            self._seek(Gst.SeekFlags(0))
        elif message.type == Gst.MessageType.EOS:
            # Only reached when the demuxer cannot do segment seeks.
            self.loops += 1
            log(f"{self.path}: EOS, loop {self.loops} (flushing restart)")
            self._seek(Gst.SeekFlags.FLUSH)
        elif message.type == Gst.MessageType.ERROR:
            err, _debug = message.parse_error()
            log(f"{self.path}: decoder error: {err.message}")


class Camera:
    """Everything the server keeps for one mount."""

    def __init__(self, mount: dict[str, Any], pool: Any) -> None:
        self.mount = mount
        self.path = str(mount["path"])
        self.loop: FileLoop | None = None
        self.factory: Any = GstRtspServer.RTSPMediaFactory()
        if mount["source"] == "file":
            self.loop = FileLoop(mount)
            launch = (
                "appsrc name=src is-live=true format=time do-timestamp=true "
                f'max-buffers=4 leaky-type=downstream caps="{raw_caps(mount)}" ! {encoder(mount)}'
            )
            self.factory.connect("media-configure", self._on_media_configure)
        elif mount["source"] == "pattern":
            launch = f"videotestsrc is-live=true pattern=ball ! {raw_caps(mount)} ! {encoder(mount)}"
        else:
            raise ValueError(f"{self.path}: unknown source {mount['source']!r}")
        self.factory.set_launch(f"( {launch} )")
        self.factory.set_shared(True)
        self.factory.set_protocols(GstRtsp.RTSPLowerTrans.UDP | GstRtsp.RTSPLowerTrans.TCP)
        self.factory.set_address_pool(pool)

    def _on_media_configure(self, _factory: Any, media: Any) -> None:
        loop = self.loop
        assert loop is not None
        appsrc = media.get_element().get_by_name("src")
        loop.add(appsrc)
        media.connect("unprepared", lambda _media: loop.remove(appsrc))


def build_auth(cameras: list[Camera]) -> Any | None:
    """Basic auth with one role per distinct credential pair; open mounts admit everyone."""
    roles: dict[tuple[str, str], str] = {}
    for cam in cameras:
        user, password = cam.mount.get("username"), cam.mount.get("password")
        if user is not None and password is not None and (user, password) not in roles:
            roles[(user, password)] = f"camera-{len(roles)}"
    if not roles:
        return None
    auth: Any = GstRtspServer.RTSPAuth()
    auth.set_realm("pantau")
    anonymous = GstRtspServer.RTSPToken()
    anonymous.set_string("media.factory.role", ANONYMOUS_ROLE)
    auth.set_default_token(anonymous)
    for (user, password), role in roles.items():
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", role)
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
    everyone = [ANONYMOUS_ROLE, *roles.values()]
    for cam in cameras:
        key = (cam.mount.get("username"), cam.mount.get("password"))
        allowed = [roles[key]] if key in roles else everyone
        permissions = GstRtspServer.RTSPPermissions()
        for role in everyone:
            # Access for all but construct only for the mount's role: the server then answers 401
            # with a challenge (a denied access would be a 404, and clients would not retry).
            permissions.add_permission_for_role(role, "media.factory.access", True)
            permissions.add_permission_for_role(role, "media.factory.construct", role in allowed)
        cam.factory.set_permissions(permissions)
    return auth


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} CONFIG.json", file=sys.stderr)
        return 2
    faulthandler.enable()  # a crash inside GStreamer leaves a Python traceback in the log
    with open(argv[1]) as f:
        config = json.load(f)
    Gst.init(None)

    pool = GstRtspServer.RTSPAddressPool()
    host = config.get("host", HOST)
    pool.add_range(host, host, UDP_PORT_MIN, UDP_PORT_MAX, 0)
    cameras = [Camera(mount, pool) for mount in config["mounts"]]

    server: Any = GstRtspServer.RTSPServer()
    server.set_address(host)
    server.set_service(str(int(config["port"])))
    auth = build_auth(cameras)
    if auth is not None:
        server.set_auth(auth)
    mount_points = server.get_mount_points()
    for cam in cameras:
        mount_points.add_factory(cam.path, cam.factory)
        # Never log credentials: only whether a mount has them.
        secured = "yes" if cam.mount.get("username") is not None else "no"
        log(f"mount {cam.path}: source={cam.mount['source']} auth={secured}")

    for cam in cameras:
        if cam.loop is not None:
            cam.loop.start()

    main_loop = GLib.MainLoop()

    def quit_loop() -> bool:
        main_loop.quit()
        return GLib.SOURCE_REMOVE  # type: ignore[no-any-return]

    def cleanup_sessions() -> bool:
        # Drops sessions of clients that vanished, so shared media is released.
        server.get_session_pool().cleanup()
        return GLib.SOURCE_CONTINUE  # type: ignore[no-any-return]

    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, quit_loop)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, quit_loop)
    GLib.timeout_add_seconds(2, cleanup_sessions)

    if server.attach(None) == 0:
        log(f"cannot listen on {host}:{config['port']}")
        return 1
    log("ready")
    main_loop.run()

    for cam in cameras:
        if cam.loop is not None:
            cam.loop.stop()
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
