"""A webhook receiver for Pantau's events, in a thread: what tests and benchmarks point a Site's sink at.

It listens on an address the stack's pods reach (the node's), answers 200 to every POST of a JSON array of
events, and keeps each event with the time it arrived and each request's Authorization header."""

from __future__ import annotations

import http.server
import json
import threading
import time
from types import TracebackType
from typing import Any, Self


class EventReceiver:
    def __init__(self, host: str) -> None:
        received = self.received = []  # type: list[dict[str, Any]]
        arrivals = self.arrivals = []  # type: list[float]  # time.time() each event arrived, in step
        authorizations = self.authorizations = []  # type: list[str | None]

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                now = time.time()
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                events = json.loads(body)
                authorizations.append(self.headers.get("Authorization"))
                received.extend(events)
                arrivals.extend([now] * len(events))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}/events"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

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
