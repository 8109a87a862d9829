"""A TCP proxy that injects network faults on command, for tests of cameras and clients.

Run as `python -m pantau_dev.faultproxy --listen-port P --target HOST:PORT --control-port C`. It
forwards 127.0.0.1:P to the target and takes orders on a small HTTP API on 127.0.0.1:C:
`POST /mode {"mode": ..., "delay_ms": ...}`, `GET /mode`, `GET /healthz`. `--listen-host` and
`--control-host` bind other addresses (a relay in the simulated WAN's data centre, pantau_dev.wan, listens
on the namespace's address); `--mode` and `--delay-ms` set the mode it starts in (default pass).

Modes (they apply to existing and new connections alike, unless said otherwise):

- pass: forward as is.
- stall: forward nothing in either direction and keep every socket open (no FIN, no RST); the
  proxy stops reading too, so senders feel TCP back-pressure. Data already read by the proxy
  when the stall began is held, and delivered in order when forwarding resumes; nothing is dropped.
- reset: abort every connection with an RST (SO_LINGER 0), and reset new ones on accept.
- delay: hold each chunk `delay_ms` after it was read, in each direction (a round trip gains
  twice the delay). Throughput is not throttled: chunks are queued, not serialised on the delay.
- sever: the connections open at that moment go silent for good in both directions, sockets left open
  (no FIN, no RST): a NAT or load balancer that forgot the flow. Connections made afterwards pass,
  whatever the mode; so a client that notices the silence and reconnects is served again.
- blackhole: accept, read and discard; never answer. New connections never reach the target and
  stay black-holed even after the mode changes; existing ones lose whatever flows meanwhile
  (both directions) and carry on with later data once the mode changes back.

`FaultProxy` is the controller used by tests: it starts the process and switches its modes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import signal
import socket
import struct
import sys
from typing import Literal, get_args

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pantau_dev.net import free_port
from pantau_dev.procs import ManagedProcess, ProcessRecord, ProcessTable, StackError, wait_for

HOST = "127.0.0.1"
CHUNK = 64 * 1024
QUEUE_CHUNKS = 256  # per direction; bounds what the delay mode holds in memory

Mode = Literal["pass", "stall", "reset", "delay", "blackhole", "sever"]


class ModeRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Mode
    delay_ms: int = Field(default=0, ge=0, le=600_000)


class ModeState(ModeRequest):
    connections: int = 0


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with an RST instead of a FIN: linger on, timeout 0, then abort."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Link:
    """One proxied connection: the client side and (unless black-holed) the target side."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.target: asyncio.StreamWriter | None = None
        self.task = asyncio.current_task()
        self.alive = asyncio.Event()  # cleared for good when the link is severed
        self.alive.set()

    def reset(self) -> None:
        _rst(self.client)
        if self.target is not None:
            _rst(self.target)

    def abort(self) -> None:
        self.client.transport.abort()
        if self.target is not None:
            self.target.transport.abort()


class Proxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.state = ModeRequest(mode="pass")
        self.links: set[_Link] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    def set_mode(self, request: ModeRequest) -> None:
        self.state = request
        if request.mode == "stall":
            self._flowing.clear()
        else:
            self._flowing.set()
        if request.mode == "reset":
            for link in list(self.links):
                link.reset()
        if request.mode == "sever":
            for link in list(self.links):
                link.alive.clear()

    def resetting(self) -> bool:
        return self.state.mode == "reset"

    async def close(self) -> None:
        """Abort every link and let its handler finish: a task cancelled by asyncio.run at exit
        would make the streams machinery log a spurious CancelledError."""
        self._flowing.set()
        links = list(self.links)
        for link in links:
            link.abort()
        tasks = [link.task for link in links if link.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.state.mode == "reset":
            _rst(writer)
            return
        link = _Link(writer)
        self.links.add(link)
        try:
            if self.state.mode == "blackhole":
                while await reader.read(CHUNK):
                    pass
                return
            try:
                up_reader, link.target = await asyncio.open_connection(self.target_host, self.target_port)
            except OSError:
                _rst(writer)
                return
            # Errors end a direction quietly; the link is torn down below once both have ended.
            await asyncio.gather(
                self._pipe(link, reader, link.target),
                self._pipe(link, up_reader, writer),
                return_exceptions=True,
            )
        finally:
            self.links.discard(link)
            for w in (writer, link.target):
                if w is None:
                    continue
                if self.resetting():
                    w.transport.abort()
                else:
                    w.close()

    async def _pipe(self, link: _Link, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        """Copy src to dst through a queue of (due time, chunk), honouring the mode at each step."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(QUEUE_CHUNKS)

        async def read_side() -> None:
            try:
                while True:
                    await self._flowing.wait()
                    await link.alive.wait()
                    data = await src.read(CHUNK)
                    if not data:
                        break
                    if self.state.mode == "blackhole":
                        continue
                    delay = self.state.delay_ms / 1000 if self.state.mode == "delay" else 0.0
                    await queue.put((loop.time() + delay, data))
            finally:
                await queue.put(None)

        async def write_side() -> None:
            while (item := await queue.get()) is not None:
                due, data = item
                await self._flowing.wait()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._flowing.wait()
                await link.alive.wait()
                if self.state.mode == "blackhole":
                    continue
                dst.write(data)
                await dst.drain()
            if dst.can_write_eof():
                with contextlib.suppress(OSError):
                    dst.write_eof()

        reader_task = asyncio.create_task(read_side())
        try:
            await write_side()
        finally:
            reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                await reader_task


async def _control(proxy: Proxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A minimal HTTP/1.0-style endpoint: one request per connection, JSON in and out."""
    status: int = 400
    payload: dict[str, object] = {"error": "bad request"}
    try:
        request_line = (await asyncio.wait_for(reader.readline(), 5)).decode("latin-1").split()
        length = 0
        while (line := await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        body = await asyncio.wait_for(reader.readexactly(length), 5) if length else b""
        method, path = [*request_line, "", ""][:2]
        status, payload = _route(proxy, method, path, body)
    except (TimeoutError, ValueError, asyncio.IncompleteReadError, ConnectionError):
        pass
    data = json.dumps(payload).encode()
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}[status]
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    with contextlib.suppress(ConnectionError):
        writer.write(head.encode() + data)
        await writer.drain()
    writer.close()


def _route(proxy: Proxy, method: str, path: str, body: bytes) -> tuple[int, dict[str, object]]:
    if path == "/healthz":
        return 200, {"ok": True}
    if path != "/mode":
        return 404, {"error": f"no such path {path}"}
    if method == "POST":
        try:
            proxy.set_mode(ModeRequest.model_validate_json(body))
        except ValidationError as exc:
            return 400, {"error": str(exc)}
        print(f"mode {proxy.state.mode} delay_ms={proxy.state.delay_ms}", flush=True)
    elif method != "GET":
        return 405, {"error": f"{method} not allowed"}
    return 200, ModeState(**proxy.state.model_dump(), connections=len(proxy.links)).model_dump()


async def serve(
    listen_port: int,
    target_host: str,
    target_port: int,
    control_port: int,
    *,
    listen_host: str = HOST,
    control_host: str = HOST,
    initial: ModeRequest | None = None,
) -> None:
    proxy = Proxy(target_host, target_port)
    if initial is not None:
        proxy.set_mode(initial)
    data_server = await asyncio.start_server(proxy.handle, listen_host, listen_port)
    control = functools.partial(_control, proxy)
    control_server = await asyncio.start_server(control, control_host, control_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"forwarding {listen_host}:{listen_port} -> {target_host}:{target_port}, "
        f"control {control_host}:{control_port}, mode {proxy.state.mode} delay_ms={proxy.state.delay_ms}"
    )
    print("ready", flush=True)
    await stop.wait()
    data_server.close()
    control_server.close()
    await proxy.close()
    print("stopped", flush=True)


def _target(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pantau_dev.faultproxy")
    parser.add_argument("--listen-port", type=int, required=True)
    parser.add_argument("--target", type=_target, required=True, help="HOST:PORT to forward to")
    parser.add_argument("--control-port", type=int, required=True)
    parser.add_argument("--listen-host", default=HOST, help=f"address to listen on (default {HOST})")
    parser.add_argument("--control-host", default=HOST, help=f"the control API's address (default {HOST})")
    parser.add_argument("--mode", choices=get_args(Mode), default="pass", help="the mode to start in")
    parser.add_argument("--delay-ms", type=int, default=0, help="with --mode delay")
    args = parser.parse_args(argv)
    try:
        initial = ModeRequest(mode=args.mode, delay_ms=args.delay_ms)
    except ValidationError as exc:
        parser.error(str(exc))
    host, port = args.target
    asyncio.run(
        serve(
            args.listen_port,
            host,
            port,
            args.control_port,
            listen_host=args.listen_host,
            control_host=args.control_host,
            initial=initial,
        )
    )
    return 0


class FaultProxy(ManagedProcess):
    """Controller for a proxy process: start/stop it and switch its fault mode (sync, for tests).

    `listen_host` (and `control_host`, by default the same) bind other addresses than 127.0.0.1;
    `netns` runs the process inside that network namespace (e.g. `Wan.netns`, listening on
    `Wan.dc_address`), where ports are picked free on this host's loopback: a fresh namespace has all
    of them free. `initial` is the mode it starts in (e.g. `ModeRequest(mode="delay", delay_ms=200)`).
    """

    def __init__(
        self,
        table: ProcessTable,
        name: str,
        target_host: str,
        target_port: int,
        *,
        listen_port: int | None = None,
        control_port: int | None = None,
        startup_timeout: float = 15.0,
        listen_host: str = HOST,
        control_host: str | None = None,
        netns: str | None = None,
        initial: ModeRequest | None = None,
    ) -> None:
        self.table = table
        self.name = name
        self.target_host = target_host
        self.target_port = target_port
        self.host = listen_host
        self.control_host = control_host if control_host is not None else listen_host
        if netns is not None and self.control_host in ("0.0.0.0", "::"):
            raise ValueError(
                f"fault proxy {name}: in a namespace, its control API listens on the namespace's address "
                "(Wan.dc_address): this process switches modes from outside"
            )
        self.netns = netns
        self.initial = initial
        pick = HOST if netns is not None else listen_host
        self.listen_port = listen_port if listen_port is not None else free_port(pick)
        pick = HOST if netns is not None else self.control_host
        self.control_port = control_port if control_port is not None else free_port(pick)
        self.startup_timeout = startup_timeout

    @property
    def address(self) -> str:
        """host:port that clients connect to instead of the target."""
        return f"{self.host}:{self.listen_port}"

    @property
    def control_url(self) -> str:
        return f"http://{self.control_host}:{self.control_port}"

    def start(self) -> ProcessRecord:
        running = self.table.running(self.name)
        if running is not None:
            return running
        argv = [
            sys.executable, "-m", "pantau_dev.faultproxy",
            "--listen-port", str(self.listen_port),
            "--target", f"{self.target_host}:{self.target_port}",
            "--control-port", str(self.control_port),
        ]  # fmt: skip
        if (self.host, self.control_host) != (HOST, HOST):
            argv += ["--listen-host", self.host, "--control-host", self.control_host]
        if self.initial is not None:
            argv += ["--mode", self.initial.mode, "--delay-ms", str(self.initial.delay_ms)]
        record = self.table.spawn(self.name, argv, netns=self.netns)
        wait_for(
            lambda: httpx.get(f"{self.control_url}/healthz", timeout=1.0).status_code == 200,
            timeout=self.startup_timeout,
            what=f"fault proxy {self.name}",
            record=record,
        )
        return record

    def mode(self) -> ModeState:
        response = httpx.get(f"{self.control_url}/mode", timeout=5.0)
        response.raise_for_status()
        return ModeState.model_validate_json(response.content)

    def set_mode(self, request: ModeRequest) -> ModeState:
        try:
            response = httpx.post(f"{self.control_url}/mode", json=request.model_dump(), timeout=5.0)
        except httpx.HTTPError as exc:
            raise StackError(f"fault proxy {self.name}: cannot set mode {request.mode}: {exc}") from exc
        if response.status_code != 200:
            raise StackError(
                f"fault proxy {self.name}: mode {request.mode} refused "
                f"({response.status_code}): {response.text}"
            )
        state = ModeState.model_validate_json(response.content)
        if (state.mode, state.delay_ms) != (request.mode, request.delay_ms):
            raise StackError(f"fault proxy {self.name}: asked for {request}, proxy reports {state}")
        return state

    def pass_through(self) -> ModeState:
        return self.set_mode(ModeRequest(mode="pass"))

    def stall(self) -> ModeState:
        return self.set_mode(ModeRequest(mode="stall"))

    def reset(self) -> ModeState:
        return self.set_mode(ModeRequest(mode="reset"))

    def delay(self, ms: int) -> ModeState:
        return self.set_mode(ModeRequest(mode="delay", delay_ms=ms))

    def blackhole(self) -> ModeState:
        return self.set_mode(ModeRequest(mode="blackhole"))

    def sever(self) -> ModeState:
        return self.set_mode(ModeRequest(mode="sever"))


if __name__ == "__main__":
    sys.exit(main())
