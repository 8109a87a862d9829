"""A webhook receiver for Pantau's events: what tests and benchmarks point a Site's sink at.

It answers 200 to every POST (any path; the URL given out ends in /events) of a JSON array of events, and
keeps each event with the time it arrived (time.time()) and each request's Authorization header. It is an
idempotent sink: it records every delivery, duplicates included (the sinks deliver at least once), and
counts the distinct idempotency keys; the key is each event's own (`DetectionEvent.idempotency_key`, the
frame id; `TrackEvent.idempotency_key` for analytics events), as the sinks send no key in a header. A POST
that is not a JSON array of objects with a key gets 400.

Read what arrived on the same server: `GET /received[?offset=N]` -> [{key, arrived_at, body}, ...] from
the N-th delivery on, `GET /summary` -> {requests, received, unique, duplicates}, `GET /healthz`.

Two ways to run it:
- in a thread of the test's process: `EventReceiver(host)` (a context manager), read through its lists;
- as a process, e.g. inside the simulated WAN's data centre (pantau_dev.wan):
  `python -m pantau_dev.receiver --host H --port P`, driven by `ReceiverProcess`.
"""

from __future__ import annotations

import argparse
import http.server
import json
import signal
import socketserver
import sys
import threading
import time
from types import FrameType, TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import httpx
from pydantic import BaseModel, ConfigDict

from pantau.ingest.events import DetectionEvent, TrackEvent
from pantau_dev.net import free_port
from pantau_dev.procs import ManagedProcess, ProcessRecord, ProcessTable, StackError, wait_for

HOST = "127.0.0.1"


class Delivery(BaseModel):
    """One event as it arrived: its idempotency key, when (time.time()), and the event itself."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    arrived_at: float
    body: dict[str, Any]


class ReceiverSummary(BaseModel):
    """`requests`: POSTs taken; `received`: events in them, duplicates included; `unique`: distinct keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    requests: int
    received: int
    unique: int
    duplicates: int


def event_key(event: object) -> str:
    """The idempotency key of one event on the wire, by the product's own definition. The event is not
    validated otherwise: a pod image older or newer than this checkout still gets its events counted."""
    if not isinstance(event, dict):
        raise ValueError(f"an event is a JSON object, got {type(event).__name__}")
    model = TrackEvent if "type" in event else DetectionEvent
    try:
        return str(model.model_construct(**event).idempotency_key)
    except AttributeError as exc:  # a field the key is made of is missing
        raise ValueError(f"event without {exc.name or 'its key fields'}") from exc


class EventReceiver:
    """The receiver in a thread of this process. `received`, `arrivals` (in step) and `keys` hold every
    event delivered, `authorizations` one entry per request; `url` is where sinks POST."""

    def __init__(self, host: str, port: int = 0) -> None:
        self.received: list[dict[str, Any]] = []
        self.arrivals: list[float] = []  # time.time() each event arrived, in step with `received`
        self.keys: list[str] = []  # each event's idempotency key, in step with `received`
        self.authorizations: list[str | None] = []
        self.requests = 0
        self._unique: set[str] = set()
        self._lock = threading.Lock()
        self.server = _Server((host, port), _handler(self))
        self.port = int(self.server.server_address[1])
        self.url = f"http://{host}:{self.port}/events"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def record(self, events: list[dict[str, Any]], keys: list[str], authorization: str | None) -> None:
        now = time.time()
        with self._lock:
            self.requests += 1
            self.authorizations.append(authorization)
            self.received.extend(events)
            self.arrivals.extend([now] * len(events))
            self.keys.extend(keys)
            self._unique.update(keys)

    def deliveries(self, offset: int = 0) -> list[Delivery]:
        with self._lock:
            rows = zip(self.keys[offset:], self.arrivals[offset:], self.received[offset:], strict=True)
            return [Delivery(key=k, arrived_at=t, body=b) for k, t, b in rows]

    def summary(self) -> ReceiverSummary:
        with self._lock:
            received, unique = len(self.received), len(self._unique)
            return ReceiverSummary(
                requests=self.requests, received=received, unique=unique, duplicates=received - unique
            )

    def start(self) -> Self:
        self.thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class _Server(http.server.ThreadingHTTPServer):
    def server_bind(self) -> None:
        """HTTPServer's, less its reverse DNS lookup of the address (`getfqdn`): where there is no DNS,
        as in the WAN's data centre namespace, that alone takes 10 s."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


def _handler(receiver: EventReceiver) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        # Keep-alive, as a real webhook endpoint: over a slow link a new connection per POST costs a
        # round trip. Every answer carries a Content-Length. No Nagle: the head and the body are two
        # writes, and the second would wait for the client's delayed ACK (40 ms) on a kept connection.
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                events = json.loads(body)
                if not isinstance(events, list):
                    raise ValueError("expected a JSON array of events")
                keys = [event_key(event) for event in events]
            except ValueError as exc:  # json.JSONDecodeError included
                self._answer(400, {"error": str(exc)})
                return
            receiver.record(events, keys, self.headers.get("Authorization"))
            self._answer(200, {"received": len(events)})

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/healthz":
                self._answer(200, {"ok": True})
            elif url.path == "/summary":
                self._answer(200, receiver.summary().model_dump())
            elif url.path == "/received":
                try:
                    offset = int(parse_qs(url.query).get("offset", ["0"])[0])
                except ValueError:
                    self._answer(400, {"error": "offset must be an integer"})
                    return
                self._answer(200, [d.model_dump() for d in receiver.deliveries(max(offset, 0))])
            else:
                self._answer(404, {"error": f"no such path {url.path}"})

        def _answer(self, status: int, payload: object) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pantau_dev.receiver")
    parser.add_argument("--host", default=HOST, help=f"address to listen on (default {HOST})")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    receiver = EventReceiver(args.host, args.port)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # ends serve_forever in this (the main) thread

    signal.signal(signal.SIGTERM, stop)
    print(f"receiving on {receiver.url}", flush=True)
    print("ready", flush=True)
    try:
        receiver.server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        receiver.server.server_close()
    summary = receiver.summary()
    print(f"stopped: {summary.requests} requests, {summary.received} events, {summary.unique} unique")
    return 0


class ReceiverProcess(ManagedProcess):
    """Controller for a receiver process (sync, for tests and benchmarks). `netns` runs it inside that
    network namespace (e.g. `Wan.netns`, with `host=Wan.dc_address`); the port is then picked free on
    this host's loopback, as a fresh namespace has all of them free."""

    def __init__(
        self,
        table: ProcessTable,
        name: str,
        host: str = HOST,
        port: int | None = None,
        *,
        netns: str | None = None,
        startup_timeout: float = 15.0,
    ) -> None:
        if netns is not None and host in ("0.0.0.0", "::"):
            raise ValueError(
                f"event receiver {name}: in a namespace, listen on its address (Wan.dc_address): "
                "this process checks and reads it from outside"
            )
        self.table = table
        self.name = name
        self.host = host
        self.port = port if port is not None else free_port(HOST if netns is not None else host)
        self.netns = netns
        self.startup_timeout = startup_timeout

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """Where sinks POST their events."""
        return f"{self.base_url}/events"

    def start(self) -> ProcessRecord:
        running = self.table.running(self.name)
        if running is not None:
            return running
        argv = [sys.executable, "-m", "pantau_dev.receiver", "--host", self.host, "--port", str(self.port)]
        record = self.table.spawn(self.name, argv, netns=self.netns)
        wait_for(
            lambda: httpx.get(f"{self.base_url}/healthz", timeout=1.0).status_code == 200,
            timeout=self.startup_timeout,
            what=f"event receiver {self.name}",
            record=record,
        )
        return record

    def _get(self, path: str) -> bytes:
        try:
            response = httpx.get(f"{self.base_url}{path}", timeout=30.0)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise StackError(f"event receiver {self.name}: GET {path}: {exc}") from exc
        return response.content

    def deliveries(self, offset: int = 0) -> list[Delivery]:
        """Every event delivered so far (duplicates included), from the `offset`-th on."""
        return [Delivery.model_validate(d) for d in json.loads(self._get(f"/received?offset={offset}"))]

    def summary(self) -> ReceiverSummary:
        return ReceiverSummary.model_validate_json(self._get("/summary"))


if __name__ == "__main__":
    sys.exit(main())
