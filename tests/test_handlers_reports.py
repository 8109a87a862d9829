"""The handler side of the /status pull: a bounded read, and reports that are refused are ignored."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from pantau.builders.names import label_value
from pantau.contract import INGEST_PORT, MAX_STATUS_BYTES, STATUS_PATH, ReportError
from pantau.handlers.state import OperatorState, pull_reports, read_limited
from pantau.k8s.api import KubeApi
from pantau.settings import OperatorSettings
from tests.cases_reconcile import NOW, report

CHUNK = 64 * 1024


class Endless:
    """A response body that never ends, counting the chunks it was asked for."""

    def __init__(self) -> None:
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            self.sent += 1
            yield b"x" * CHUNK


def pod_body(pod: str) -> bytes:
    return json.dumps(
        {
            "pod": pod,
            "site": "alun",
            "shard": pod,
            "started_at": NOW.isoformat(),
            "cameras": [report(f"cam-{pod}").model_dump(mode="json")],
            "triton": {"address": "triton:8001", "reachable": True},
        }
    ).encode()


async def test_a_declared_length_over_the_limit_is_refused_unread() -> None:
    body = Endless()
    transport = httpx.MockTransport(
        lambda request: httpx.Response(200, headers={"content-length": str(10 * CHUNK)}, content=body)
    )
    async with httpx.AsyncClient(transport=transport) as http, http.stream("GET", "http://pod/") as resp:
        with pytest.raises(ReportError, match="over the"):
            await read_limited(resp, limit=CHUNK)
    assert body.sent == 0


async def test_an_endless_body_is_read_only_just_past_the_limit() -> None:
    body = Endless()
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=body))
    async with httpx.AsyncClient(transport=transport) as http, http.stream("GET", "http://pod/") as resp:
        with pytest.raises(ReportError, match="over the"):
            await read_limited(resp, limit=3 * CHUNK)
    assert body.sent == 4


async def test_a_body_within_the_limit_is_read_whole() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=b"{}" * 100))
    async with httpx.AsyncClient(transport=transport) as http, http.stream("GET", "http://pod/") as resp:
        assert await read_limited(resp, limit=200) == b"{}" * 100


async def test_refused_and_silent_pods_contribute_nothing() -> None:
    asked: list[str] = []

    def serve(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        host = request.url.host
        if host == "10.0.0.1":
            return httpx.Response(200, content=pod_body("p-0"))
        if host == "10.0.0.2":
            return httpx.Response(200, content=b'{"pod": "p-1"}')  # does not parse
        if host == "10.0.0.3":
            return httpx.Response(200, content=Endless())  # over MAX_STATUS_BYTES
        if host == "10.0.0.4":
            return httpx.Response(500)
        raise httpx.ConnectError("refused", request=request)

    targets = {f"p-{i}": f"10.0.0.{i + 1}" for i in range(5)}
    async with httpx.AsyncClient(transport=httpx.MockTransport(serve)) as http:
        got = await pull_reports(http, targets, per_pod_seconds=10.0)
    assert list(got) == ["p-0"]
    assert [c.name for c in got["p-0"].cameras] == ["cam-p-0"]
    assert asked[0] == f"http://10.0.0.1:{INGEST_PORT}{STATUS_PATH}"
    assert MAX_STATUS_BYTES > CHUNK


async def test_a_compressed_body_is_refused_uninflated() -> None:
    transport = httpx.MockTransport(
        lambda request: httpx.Response(200, headers={"content-encoding": "gzip"}, content=Endless())
    )
    async with httpx.AsyncClient(transport=transport) as http, http.stream("GET", "http://pod/") as resp:
        with pytest.raises(ReportError, match="compressed"):
            await read_limited(resp, limit=CHUNK)


async def test_a_child_marks_its_site_by_label_value_even_for_a_long_site_name() -> None:
    class NoToken:
        def header(self) -> dict[str, str]:
            return {}

    api = KubeApi(httpx.AsyncClient(), "pantau", 1, NoToken())
    state = OperatorState(OperatorSettings(), api)
    long_name = "kabupaten-bengkulu-selatan." * 4 + "pasar-manna"
    short, long_ = state.dirty_flag("ns", "alun"), state.dirty_flag("ns", long_name)
    state.mark_labelled("ns", label_value(long_name))
    assert long_.is_set()
    assert not short.is_set()
    state.mark_labelled("other-ns", "alun")
    assert not short.is_set()
    await state.aclose()
