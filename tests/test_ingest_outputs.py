"""The outputs of an ingest pod: detection events (JSON lines, webhook through a real local receiver that
goes down and comes back), OpenTelemetry traces (found again in the local stack's Jaeger) and the HTTP
endpoints (/healthz, /readyz, /status, /metrics)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import httpx
import pytest
from aiohttp import web
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Metric, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pantau import telemetry
from pantau.contract import (
    AnalyticsReport,
    CameraStatusReport,
    LatencySummary,
    LineCounts,
    PodStatusReport,
    TritonReport,
    ZoneCounts,
)
from pantau.ingest.events import (
    DROP_BUFFER_FULL,
    DROP_CLOSED,
    DROP_REJECTED,
    DROP_SHUTDOWN,
    DetectionEvent,
    EventSink,
    JsonLinesSink,
    MultiSink,
    WebhookSink,
)
from pantau.ingest.latency import LATENCY_BUCKETS, LatencyHistogram
from pantau.ingest.pipeline import CameraStats
from pantau.ingest.server import IngestServer, make_app, metrics_registry, render_metrics, serve
from pantau.redact import has_credentials, redact_url
from pantau_dev.net import free_port
from pantau_dev.procs import wait_for
from pantau_dev.stack import StackInfo

JSON = dict[str, Any]
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
OTEL_VARIABLES = (
    "OTEL_SDK_DISABLED",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_EXPORTER",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
)


def event(seq: int, *, camera: str = "bengkulu/pasar-minggu", detections: int = 2) -> DetectionEvent:
    return DetectionEvent(
        camera=camera,
        site="bengkulu-kota",
        pod="pool-bengkulu-kota-0",
        timestamp=datetime(2024, 5, 1, 3, 4, 5, 123456, tzinfo=UTC) + timedelta(milliseconds=200 * seq),
        frame_id=f"0b7c-uid:s1:{seq}",
        detections=[
            {"class": "person" if i % 2 == 0 else "car", "score": 0.5 + i / 100, "box": [i, 2.5, 30.0, 40]}
            for i in range(detections)
        ],
        traceparent=f"00-{seq:032x}-{seq + 1:016x}-01",
    )


async def until(check: Callable[[], object], *, within: float, what: str) -> None:
    """Poll `check` (on the event loop, so the sink's task keeps running) until it is truthy."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true after {within} s")
        await asyncio.sleep(0.02)


# ----- the event -----


def test_event_is_one_line_of_json_with_every_field() -> None:
    line = event(3).to_json()
    assert "\n" not in line
    data = json.loads(line)
    assert set(data) == {
        "camera", "site", "pod", "timestamp", "frame_id", "detections", "traceparent", "inference"
    }  # fmt: skip
    assert data["inference"] == "triton"  # "local" for the pod's fallback detector
    assert data["timestamp"] == "2024-05-01T03:04:05.723456Z"
    assert data["detections"][0] == {"class": "person", "score": 0.5, "box": [0.0, 2.5, 30.0, 40.0]}
    assert TRACEPARENT.match(data["traceparent"])
    assert DetectionEvent.from_json(line) == event(3)
    assert event(3).idempotency_key == "0b7c-uid:s1:3"


def test_event_timestamp_is_normalised_to_utc_and_must_have_a_zone() -> None:
    wib = datetime(2024, 5, 1, 10, 4, 5, tzinfo=ZoneInfo("Asia/Jakarta"))  # UTC+7
    data = json.loads(event(0).model_copy(update={"timestamp": wib}).to_json())
    assert data["timestamp"] == "2024-05-01T03:04:05.000000Z"
    with pytest.raises(ValueError, match="timezone"):
        DetectionEvent.model_validate({**json.loads(event(0).to_json()), "timestamp": "2024-05-01T03:04:05"})


# ----- JSON lines -----


async def test_json_lines_sink_writes_valid_lines_to_a_stream_and_a_file(tmp_path: Path) -> None:
    stream = io.StringIO()
    path = tmp_path / "events.jsonl"
    async with JsonLinesSink(stream, name="stream") as to_stream, JsonLinesSink(path, name="file") as to_file:
        for seq in range(5):
            await to_stream.publish(event(seq))
            await to_file.publish(event(seq))
        # Flushed per event: a reader sees each line as soon as it is published.
        assert len(path.read_text().splitlines()) == 5
        assert to_file.stats.delivered == 5
    for text in (stream.getvalue(), path.read_text()):
        lines = text.splitlines()
        assert [DetectionEvent.from_json(line) for line in lines] == [event(seq) for seq in range(5)]
        assert all(set(json.loads(line)) >= {"camera", "frame_id", "traceparent"} for line in lines)
    await to_file.publish(event(9))
    assert to_file.stats.dropped_reasons == {DROP_CLOSED: 1}


async def test_json_lines_sink_defaults_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    sink = JsonLinesSink()
    await sink.publish(event(1))
    await sink.aclose()
    assert DetectionEvent.from_json(capsys.readouterr().out.strip()) == event(1)


# ----- webhook -----

Mode = Literal["accept", "503", "429", "400"]


class Receiver:
    """A real HTTP receiver on 127.0.0.1 that can be down (connection refused), failing or accepting."""

    def __init__(self, path: str = "/hook") -> None:
        self.port = free_port()
        self.path = path
        self.mode: Mode = "accept"
        self.accepted: list[list[JSON]] = []  # batches answered 200, in arrival order
        self.refused: list[list[JSON]] = []  # batches answered with an error
        self.headers: list[dict[str, str]] = []
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    async def _handle(self, request: web.Request) -> web.Response:
        batch = await request.json()
        assert isinstance(batch, list)
        assert request.content_type == "application/json"
        self.headers.append(dict(request.headers))
        if self.mode == "accept":
            self.accepted.append(batch)
            return web.json_response({"accepted": len(batch)})
        self.refused.append(batch)
        if self.mode == "429":
            self.mode = "accept"  # one "slow down", then fine
            return web.Response(status=429, headers={"Retry-After": "0"})
        return web.Response(status=int(self.mode), text="not now")

    async def up(self) -> None:
        app = web.Application()
        app.router.add_post(self.path, self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def down(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def accepted_ids(self) -> list[str]:
        return [e["frame_id"] for batch in self.accepted for e in batch]


def first_seen(ids: list[str]) -> list[str]:
    """What a receiver that de-duplicates on the frame id keeps, in order."""
    return list(dict.fromkeys(ids))


def fast_sink(url: str, **kwargs: Any) -> WebhookSink:
    """Short back-off so a test's outage ends in seconds (the defaults cap at 10 s)."""
    settings: dict[str, Any] = {"backoff_base": 0.05, "backoff_cap": 0.3, "timeout": 2.0, "linger": 0.02}
    return WebhookSink(url, **(settings | kwargs))


@pytest.fixture(params=["memory", "disk"])
def spool_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Path | None:
    """Where a sink keeps undelivered events: in memory, or on disk (SQLite, one file per sink)."""
    return tmp_path / "spool" if request.param == "disk" else None


@pytest.mark.parametrize(
    ("outage", "events"),
    [
        pytest.param(3.0, 60, id="3s-outage-20-events-per-s"),
        # The 60 s outage of the mission at ~17 events/s, time compressed: what matters is that 1000
        # events are buffered while the receiver is down. The real 60 s runs in the end-to-end suite.
        pytest.param(1.0, 1000, id="60s-outage-scaled-1000-events"),
    ],
)
async def test_webhook_outage_loses_nothing_and_keeps_order(
    outage: float, events: int, spool_dir: Path | None
) -> None:
    receiver = Receiver()
    await receiver.up()
    sink = fast_sink(receiver.url, batch_size=50, spool_dir=spool_dir)
    try:
        for seq in range(5):
            await sink.publish(event(seq))
        await until(lambda: sink.stats.delivered == 5, within=10, what="delivery before the outage")

        # First half of the outage: nothing listens (connection refused) ...
        await receiver.down()
        pace = outage / events
        seq = 5
        for _ in range(events // 2):
            await sink.publish(event(seq))
            seq += 1
            await asyncio.sleep(pace)
        # ... second half: the receiver is back but overloaded (503).
        receiver.mode = "503"
        await receiver.up()
        for _ in range(events - events // 2):
            await sink.publish(event(seq))
            seq += 1
            await asyncio.sleep(pace)
        assert sink.stats.pending > 0
        receiver.mode = "accept"
        total = 5 + events
        await until(lambda: sink.stats.delivered == total, within=30, what="delivery after the outage")
    finally:
        await sink.aclose()
        await receiver.down()

    stats = sink.stats
    assert (stats.published, stats.delivered, stats.dropped, stats.pending) == (total, total, 0, 0)
    assert stats.retries > 0
    assert stats.last_error is not None
    assert receiver.refused, "the receiver answered 503 at least once"
    # At-least-once, in order: after de-duplication on the frame id, exactly the published sequence.
    expected = [event(i).frame_id for i in range(total)]
    assert first_seen(receiver.accepted_ids()) == expected
    assert len(receiver.accepted_ids()) == total  # no duplicates here: every failure was a clean one


async def test_webhook_full_buffer_drops_the_oldest_and_counts_them(spool_dir: Path | None) -> None:
    receiver = Receiver()  # not up yet: connection refused
    sink = fast_sink(receiver.url, buffer_size=10, batch_size=5, spool_dir=spool_dir)
    try:
        for seq in range(25):
            await sink.publish(event(seq))
        await until(lambda: sink.stats.retries >= 1, within=10, what="a failed attempt")
        stats = sink.stats
        assert (stats.published, stats.pending, stats.dropped) == (25, 10, 15)
        assert stats.dropped_reasons == {DROP_BUFFER_FULL: 15}
        await receiver.up()
        await until(lambda: sink.stats.delivered == 10, within=10, what="delivery of the newest 10")
    finally:
        await sink.aclose()
        await receiver.down()
    assert receiver.accepted_ids() == [event(seq).frame_id for seq in range(15, 25)]
    assert sink.stats.dropped == 15


async def test_webhook_events_on_disk_outlive_a_restart_of_the_pod(tmp_path: Path) -> None:
    """Undelivered events kept on disk when the sink closes (the container stops) are delivered, first
    and in order, by the sink of the next start on the same volume; nothing is counted as lost."""
    receiver = Receiver()  # down: nothing can be delivered before the restart
    spool = tmp_path / "spool"
    before = fast_sink(receiver.url, batch_size=7, spool_dir=spool)
    for seq in range(30):
        await before.publish(event(seq))
    await until(lambda: before.stats.retries >= 1, within=10, what="a failed attempt")
    await before.aclose(grace=0.5)
    assert before.stats.dropped == 0
    assert before.stats.pending == 30  # kept, not lost

    await receiver.up()
    after = fast_sink(receiver.url, batch_size=7, spool_dir=spool)
    try:
        await until(lambda: after.stats.delivered == 30, within=15, what="the kept events delivered")
        for seq in range(30, 40):
            await after.publish(event(seq))
        await until(lambda: after.stats.pending == 0, within=15, what="the new events delivered")
    finally:
        await after.aclose()
        await receiver.down()
    assert first_seen(receiver.accepted_ids()) == [event(i).frame_id for i in range(40)]
    assert (after.stats.delivered, after.stats.dropped) == (40, 0)


async def test_webhook_rejected_batch_is_dropped_and_counted_and_secrets_stay_out_of_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = "s3cr3t-token-value"
    receiver = Receiver(path="/hooks/T0/B1/path-secret-xyz")
    receiver.mode = "400"
    await receiver.up()
    sink = fast_sink(receiver.url, headers={"Authorization": f"Bearer {token}"})
    try:
        with caplog.at_level(logging.DEBUG, logger="pantau"):
            for seq in range(3):
                await sink.publish(event(seq))
            await until(lambda: sink.stats.dropped == 3, within=10, what="the rejected batch dropped")
            assert sink.stats.dropped_reasons == {DROP_REJECTED: 3}
            assert sink.stats.retries == 0  # a 400 is not retried
            receiver.mode = "accept"
            for seq in range(3, 5):
                await sink.publish(event(seq))
            await until(lambda: sink.stats.delivered == 2, within=10, what="delivery after the 400")
    finally:
        await sink.aclose()
        await receiver.down()
    assert [len(batch) for batch in receiver.refused] == [3]
    assert receiver.accepted_ids() == [event(3).frame_id, event(4).frame_id]
    assert all(h["Authorization"] == f"Bearer {token}" for h in receiver.headers)
    assert "rejected 3 events with HTTP 400" in caplog.text
    for secret in (token, "path-secret-xyz"):
        assert secret not in caplog.text
        assert secret not in repr(sink)
        assert secret not in (sink.stats.last_error or "")


async def test_webhook_429_is_retried_after_retry_after() -> None:
    receiver = Receiver()
    receiver.mode = "429"
    await receiver.up()
    sink = fast_sink(receiver.url)
    try:
        for seq in range(4):
            await sink.publish(event(seq))
        await until(lambda: sink.stats.delivered == 4, within=10, what="delivery after a 429")
    finally:
        await sink.aclose()
        await receiver.down()
    assert sink.stats.retries == 1
    assert sink.stats.last_error == "HTTP 429 Too Many Requests"
    assert first_seen(receiver.accepted_ids()) == [event(seq).frame_id for seq in range(4)]


async def test_webhook_close_flushes_then_gives_up_at_the_deadline() -> None:
    receiver = Receiver()
    await receiver.up()
    sink = fast_sink(receiver.url, batch_size=7)
    for seq in range(30):
        await sink.publish(event(seq))
    await sink.aclose()  # nothing delivered yet: close delivers the buffer first
    await receiver.down()
    assert (sink.stats.delivered, sink.stats.pending) == (30, 0)
    assert receiver.accepted_ids() == [event(seq).frame_id for seq in range(30)]

    down = fast_sink(Receiver().url)
    for seq in range(4):
        await down.publish(event(seq))
    started = time.monotonic()
    await down.aclose(grace=0.3)
    assert time.monotonic() - started < 2
    assert down.stats.dropped_reasons == {DROP_SHUTDOWN: 4}
    assert down.stats.pending == 0
    await down.publish(event(5))
    assert down.stats.dropped_reasons == {DROP_SHUTDOWN: 4, DROP_CLOSED: 1}


def test_webhook_url_with_credentials_is_refused_without_quoting_it() -> None:
    with pytest.raises(ValueError, match="user name or password") as caught:
        WebhookSink("https://alice:hunter2@hooks.example.org/in")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ValueError, match="http"):
        WebhookSink("ftp://hooks.example.org/in")
    with pytest.raises(ValueError, match="batch_size"):
        WebhookSink("https://hooks.example.org/in", buffer_size=10, batch_size=10)


async def test_multi_sink_fans_out_and_sums_stats() -> None:
    receiver = Receiver()
    await receiver.up()
    stream = io.StringIO()
    webhook = fast_sink(receiver.url)
    sinks: list[EventSink] = [JsonLinesSink(stream), webhook]
    multi = MultiSink(sinks)
    try:
        for seq in range(3):
            await multi.publish(event(seq))
        await until(lambda: webhook.stats.delivered == 3, within=10, what="webhook delivery")
    finally:
        await multi.aclose()
        await receiver.down()
    assert len(stream.getvalue().splitlines()) == 3
    assert receiver.accepted_ids() == [event(seq).frame_id for seq in range(3)]
    assert (multi.stats.published, multi.stats.delivered) == (6, 6)
    assert [s.name for s in multi.per_sink()] == ["stdout", "webhook"]


# ----- telemetry -----


@pytest.fixture
def otel_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A clean OTEL_* environment for one test; set what the test needs on the returned monkeypatch."""
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def traced(otel_env: pytest.MonkeyPatch) -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """setup_tracing without an endpoint (no exporter) plus an in-memory exporter to look at the spans."""
    provider = telemetry.setup_tracing("pantau-test", {"pantau.site": "bengkulu-kota"})
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    yield provider, memory
    telemetry.shutdown(provider)


def traced_frame(provider: TracerProvider, captured_ns: int, fail: bool = False) -> str:
    """What the pipeline does for one frame; returns the traceparent it would put into the event."""
    tracer = telemetry.get_tracer(provider)
    with telemetry.frame_span(
        tracer,
        "bengkulu/pasar-minggu",
        "bengkulu-kota",
        "pool-bengkulu-kota-0",
        captured_ns,
        frame_id="uid:s1:7",
        model="yolox_nano",
    ) as root:
        with telemetry.stage_span(tracer, telemetry.SPAN_READ_DECODE):
            pass
        with telemetry.stage_span(
            tracer, telemetry.SPAN_INFER, {telemetry.ATTR_SERVER_ADDRESS: "127.0.0.1", "password": "x"}
        ) as infer:
            metadata = telemetry.grpc_metadata(infer)
            assert set(metadata) == {"traceparent"}
            assert metadata["traceparent"].split("-")[1] == telemetry.trace_id_of(root)
        telemetry.set_detections(root, {"person": 3, "traffic light": 1})
        traceparent = telemetry.traceparent_of(root)
        assert traceparent is not None
        with telemetry.stage_span(tracer, telemetry.SPAN_PUBLISH):
            if fail:
                raise RuntimeError("could not open rtsp://admin:hunter2@10.0.0.9/stream")
    return traceparent


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in spans}


def test_frame_trace_has_stage_children_and_safe_attributes(
    traced: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, memory = traced
    captured = time.time_ns() - 80_000_000
    traceparent = traced_frame(provider, captured)
    spans = by_name(memory.get_finished_spans())
    assert set(spans) == {"frame", "read/decode", "infer", "publish"}
    root = spans["frame"]
    assert root.parent is None
    assert root.start_time == captured
    for name in ("read/decode", "infer", "publish"):
        parent = spans[name].parent
        assert parent is not None
        assert parent.span_id == root.context.span_id
    match = TRACEPARENT.match(traceparent)
    assert match is not None
    assert match.group(1) == f"{root.context.trace_id:032x}"
    assert match.group(2) == f"{root.context.span_id:016x}"
    assert int(match.group(3), 16) & 0x01 == 1  # sampled
    assert dict(root.attributes or {}) == {
        "pantau.camera": "bengkulu/pasar-minggu",
        "pantau.site": "bengkulu-kota",
        "k8s.pod.name": "pool-bengkulu-kota-0",
        "k8s.namespace.name": "bengkulu",
        "pantau.frame_id": "uid:s1:7",
        "pantau.model": "yolox_nano",
        "pantau.detections": 4,
        "pantau.detections.person": 3,
        "pantau.detections.traffic_light": 1,
    }
    assert dict(spans["infer"].attributes or {}) == {"server.address": "127.0.0.1"}
    assert root.resource.attributes["service.name"] == "pantau-test"
    assert root.resource.attributes["pantau.site"] == "bengkulu-kota"


def test_a_failing_stage_records_the_error_type_never_the_message(
    traced: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, memory = traced
    with pytest.raises(RuntimeError):
        traced_frame(provider, time.time_ns(), fail=True)
    spans = by_name(memory.get_finished_spans())
    for name in ("publish", "frame"):
        span = spans[name]
        assert span.status.status_code.name == "ERROR"
        assert (span.attributes or {})["error.type"] == "RuntimeError"
        assert not span.events  # an exception event would carry the message (and its password)
        assert "hunter2" not in span.to_json()


def test_safe_attributes_drops_credentials_and_unknown_keys() -> None:
    given: dict[str, object] = {
        "pantau.camera": "bengkulu/pasar-minggu",
        "pantau.site": "rtsp://admin:hunter2@10.0.0.9:554/stream",  # a URL with a password
        "pantau.model": "see https://user@models.example.org/yolox",  # a user name alone counts too
        "server.address": "rtsp://10.0.0.9:554/stream",  # a URL without userinfo is fine
        "pantau.sinks": ["stdout", "https://u:p@hooks.example.org/"],
        "pantau.detections.person": 2,
        "pantau.detections.Person!": 2,  # not a class key
        "password": "hunter2",  # not on the allow-list
        "pantau.batch_size": {"nested": 1},  # not an attribute value
    }
    assert telemetry.safe_attributes(given) == {
        "pantau.camera": "bengkulu/pasar-minggu",
        "server.address": "rtsp://10.0.0.9:554/stream",
        "pantau.detections.person": 2,
    }
    assert has_credentials("rtsp://admin:hunter2@cam/")
    assert redact_url("failed: rtsp://admin:pw@10.0.0.9/s and http://x@h/") == (
        "failed: rtsp://REDACTED:REDACTED@10.0.0.9/s and http://REDACTED:REDACTED@h/"
    )


def test_exporter_follows_otel_variables(otel_env: pytest.MonkeyPatch) -> None:
    assert telemetry.otlp_exporter_from_env() is None  # no endpoint: spans only for the traceparent
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    grpc_exporter = telemetry.otlp_exporter_from_env()
    assert isinstance(grpc_exporter, GrpcExporter)  # the default protocol
    grpc_exporter.shutdown()
    otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    http_exporter = telemetry.otlp_exporter_from_env()
    assert isinstance(http_exporter, HttpExporter)
    http_exporter.shutdown()
    otel_env.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")  # the per-signal variable wins
    per_signal = telemetry.otlp_exporter_from_env()
    assert isinstance(per_signal, GrpcExporter)
    per_signal.shutdown()
    otel_env.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")
    with pytest.raises(ValueError, match="grpc or http/protobuf"):
        telemetry.otlp_exporter_from_env()
    otel_env.setenv("OTEL_TRACES_EXPORTER", "none")
    assert telemetry.otlp_exporter_from_env() is None


def test_sampler_and_service_name_come_from_the_environment(otel_env: pytest.MonkeyPatch) -> None:
    otel_env.setenv("OTEL_SERVICE_NAME", "pantau-ingest-override")
    otel_env.setenv("OTEL_TRACES_SAMPLER", "always_off")
    provider = telemetry.setup_tracing("pantau-ingest", {"k8s.pod.name": "pool-0"})
    try:
        tracer = telemetry.get_tracer(provider)
        with telemetry.frame_span(tracer, "ns/cam", "site", "pool-0", time.time_ns()) as span:
            assert not span.is_recording()
            traceparent = telemetry.traceparent_of(span)
        # Not sampled, yet the event still gets a valid traceparent (the sampled flag unset).
        assert traceparent is not None
        match = TRACEPARENT.match(traceparent)
        assert match is not None
        assert int(match.group(3), 16) & 0x01 == 0
        assert provider.resource.attributes["service.name"] == "pantau-ingest-override"
        assert provider.resource.attributes["k8s.pod.name"] == "pool-0"
    finally:
        telemetry.shutdown(provider)


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_frame_trace_is_found_in_jaeger(
    stack_info: StackInfo, otel_env: pytest.MonkeyPatch, protocol: str
) -> None:
    endpoint = stack_info.jaeger_otlp_grpc if protocol == "grpc" else stack_info.jaeger_otlp_http
    assert endpoint
    assert stack_info.jaeger_query
    service = f"pantau-test-{uuid.uuid4().hex[:8]}"
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    otel_env.setenv(
        "OTEL_RESOURCE_ATTRIBUTES", "k8s.namespace.name=bengkulu,k8s.pod.name=pool-bengkulu-kota-0"
    )
    provider = telemetry.setup_tracing(service, {"pantau.site": "bengkulu-kota"})
    captured = time.time_ns() - 50_000_000
    traceparent = traced_frame(provider, captured)
    telemetry.shutdown(provider)
    trace_id = traceparent.split("-")[1]

    def fetch() -> JSON | None:
        response = httpx.get(f"{stack_info.jaeger_query}/api/traces/{trace_id}", timeout=5)
        if response.status_code != 200:
            return None
        found: JSON = response.json()
        spans = found["data"][0]["spans"] if found.get("data") else []
        return found if len(spans) == 4 else None

    found = wait_for(fetch, timeout=30, what="the frame's trace in Jaeger")
    trace = found["data"][0]
    spans = {span["operationName"]: span for span in trace["spans"]}
    assert set(spans) == {"frame", "read/decode", "infer", "publish"}
    root = spans["frame"]
    assert root["traceID"] == trace_id
    assert root["startTime"] == captured // 1000  # Jaeger keeps microseconds
    assert not root["references"]
    for name in ("read/decode", "infer", "publish"):
        assert spans[name]["references"] == [
            {"refType": "CHILD_OF", "traceID": trace_id, "spanID": root["spanID"]}
        ]
    tags = {tag["key"]: tag["value"] for tag in root["tags"]}
    assert tags["pantau.camera"] == "bengkulu/pasar-minggu"
    assert tags["pantau.site"] == "bengkulu-kota"
    assert tags["pantau.model"] == "yolox_nano"
    assert tags["pantau.detections"] == 4
    assert tags["pantau.detections.person"] == 3
    process = trace["processes"][root["processID"]]
    assert process["serviceName"] == service
    process_tags = {tag["key"]: tag["value"] for tag in process["tags"]}
    assert process_tags["k8s.pod.name"] == "pool-bengkulu-kota-0"
    assert process_tags["pantau.site"] == "bengkulu-kota"


# ----- HTTP endpoints -----


def camera_report(name: str, state: Literal["Streaming", "Backoff"], **extra: Any) -> CameraStatusReport:
    return CameraStatusReport.model_validate(
        {
            "namespace": "bengkulu",
            "name": name,
            "state": state,
            "fps": 4.8 if state == "Streaming" else 0.0,
            "url": "rtsp://admin:hunter2@10.0.0.9:554/stream",  # redacted by the model
            **extra,
        }
    )


def pod_report() -> PodStatusReport:
    streaming = camera_report(
        "pasar-minggu",
        "Streaming",
        last_frame_time=datetime(2024, 5, 1, 3, 4, 5, tzinfo=UTC),
        frames_sampled=1210,
        frames_processed=1200,
        frames_dropped={"QueueFull": 3, "Timeout": 1},
        cpu_cores=0.125,
        cpu_seconds=90.5,
        decode_lag_ms=42.0,
        analytics=AnalyticsReport(
            tracks=3,
            lines={
                "gate": LineCounts(forward=2, backward=1, classes={"person": {"forward": 2, "backward": 1}})
            },
            zones={
                "kiosk": ZoneCounts(
                    entered=4,
                    exited=3,
                    occupancy=1,
                    classes={"person": {"entered": 4, "exited": 3, "loitering": 0, "occupancy": 1}},
                )
            },
        ),
        inference_latency_ms=LatencySummary(p50=12.5, p99=40.0, count=1200, sum_ms=16000.0),
        detections={"person": 310, "car": 42},
    )
    backoff = camera_report(
        "simpang-lima",
        "Backoff",
        reason="AuthFailed",
        message='401 from rtsp://admin:hunter2@10.0.0.9:554/stream "quoted"',
    )
    return PodStatusReport(
        pod="pool-bengkulu-kota-0",
        site="bengkulu-kota",
        shard="pool-bengkulu-kota-0",
        started_at=datetime(2024, 5, 1, 3, 0, tzinfo=UTC),
        cameras=[streaming, backoff],
        triton=TritonReport(address="triton.pantau-system.svc:8001", reachable=True, model="yolox_nano"),
        sinks=[WebhookSink("https://hooks.example.org/in", name="city-hall").stats],
    )


CAMERA = "bengkulu/pasar-minggu"
# Observations in seconds: one below the first bound, one exactly on a bound (le is "<="), one above the
# last bound (only +Inf holds it).
LATENCIES = (0.004, 0.005, 0.012, 0.03, 0.03, 0.3, 7.0)


def latency_histograms() -> dict[str, LatencyHistogram]:
    histogram = LatencyHistogram()
    for seconds in LATENCIES:
        histogram.observe(seconds)
    return {CAMERA: histogram}


def parse_metrics(text: str) -> dict[str, Metric]:
    """The exposition parsed by prometheus_client's own parser (it refuses a malformed line), by family.
    The parser names a counter family without its `_total`; the samples keep it."""
    families = list(text_string_to_metric_families(text))
    names = [f.name for f in families]
    assert len(names) == len(set(names)), f"a family is written twice: {names}"
    return {f.name: f for f in families}


def value(family: Metric, sample: str, **labels: str) -> float:
    """The one sample of `family` named `sample` with exactly these labels."""
    found = [s.value for s in family.samples if s.name == sample and s.labels == labels]
    assert len(found) == 1, f"{sample}{labels}: {len(found)} samples in {family.samples}"
    return found[0]


def check_histogram(family: Metric, camera: str) -> list[tuple[float, float]]:
    """The camera's buckets, checked: ascending bounds ending at +Inf, cumulative counts, +Inf == _count."""
    buckets = [
        (float(s.labels["le"]), s.value)
        for s in family.samples
        if s.name == f"{family.name}_bucket" and s.labels["camera"] == camera
    ]
    bounds, counts = [b for b, _ in buckets], [c for _, c in buckets]
    assert bounds == sorted(bounds)
    assert bounds[-1] == math.inf
    assert counts == sorted(counts), f"bucket counts are not cumulative: {counts}"
    assert counts[-1] == value(family, f"{family.name}_count", camera=camera)
    return buckets


def test_reports_redact_urls_and_messages() -> None:
    report = pod_report()
    assert report.cameras[0].url == "rtsp://REDACTED:REDACTED@10.0.0.9:554/stream"
    assert "hunter2" not in report.model_dump_json()
    assert report.cameras[1].message == '401 from rtsp://REDACTED:REDACTED@10.0.0.9:554/stream "quoted"'
    with pytest.raises(ValueError, match="pattern"):
        camera_report("x", "Backoff", reason="auth failed")


def test_latency_histogram_counts_per_bucket_and_refuses_bad_bounds() -> None:
    histogram = latency_histograms()[CAMERA]
    assert histogram.bounds == LATENCY_BUCKETS
    assert LATENCY_BUCKETS[0] == 0.005
    assert LATENCY_BUCKETS[-1] == 5.0
    assert histogram.count == len(LATENCIES)
    assert histogram.sum_seconds == pytest.approx(sum(LATENCIES))
    cumulative = dict(histogram.cumulative())
    assert cumulative[0.005] == 2  # 0.004 and 0.005 (on the bound)
    assert cumulative[0.02] == 3
    assert cumulative[0.05] == 5
    assert cumulative[5.0] == 6
    assert cumulative[math.inf] == 7
    for bounds in ((), (0.1, 0.05), (0.1, 0.1), (0.1, math.inf)):
        with pytest.raises(ValueError, match="bounds"):
            LatencyHistogram(bounds=bounds)


def test_camera_stats_keep_the_quantiles_and_the_histogram() -> None:
    stats = CameraStats()
    assert stats.latency() is None
    for seconds in LATENCIES:
        stats.observe_latency(seconds)
    quantiles = stats.latency()  # milliseconds, for /status
    assert quantiles is not None
    assert quantiles[0] == pytest.approx(30.0)
    assert 300 < quantiles[1] < 7000
    assert stats.latency_histogram.count == len(LATENCIES)


def test_metrics_families_types_and_labels() -> None:
    families = parse_metrics(render_metrics(pod_report(), latency_histograms()))
    counters = {"frames_processed", "frames_dropped", "detections", "events_published", "events_delivered"}
    counters |= {"events_retries", "events_dropped", "frames_sampled", "camera_cpu_seconds"}
    counters |= {"line_crossings", "zone_events"}
    gauges = {"camera_streaming", "camera_state", "camera_fps", "camera_last_frame_timestamp_seconds"}
    gauges |= {"triton_reachable", "ingest_cameras", "ingest_start_time_seconds", "events_pending"}
    gauges |= {"camera_cpu_cores", "camera_decode_lag_seconds", "ingest_cpu_cores"}
    gauges |= {"camera_tracks", "zone_occupancy"}
    expected = {f"pantau_{n}": "counter" for n in counters} | {f"pantau_{n}": "gauge" for n in gauges}
    expected["pantau_inference_latency_seconds"] = "histogram"
    assert {name: f.type for name, f in families.items()} == expected
    for name, kind in expected.items():
        if kind == "counter":
            assert {s.name for s in families[name].samples} <= {f"{name}_total"}, name

    other = "bengkulu/simpang-lima"
    assert value(families["pantau_frames_processed"], "pantau_frames_processed_total", camera=CAMERA) == 1200
    dropped = families["pantau_frames_dropped"]
    assert value(dropped, "pantau_frames_dropped_total", camera=CAMERA, reason="QueueFull") == 3
    assert value(dropped, "pantau_frames_dropped_total", camera=CAMERA, reason="Timeout") == 1
    detections = families["pantau_detections"]
    assert value(detections, "pantau_detections_total", camera=CAMERA, **{"class": "person"}) == 310
    assert value(families["pantau_camera_fps"], "pantau_camera_fps", camera=CAMERA) == 4.8
    streaming = families["pantau_camera_streaming"]
    assert value(streaming, "pantau_camera_streaming", camera=CAMERA) == 1
    assert value(streaming, "pantau_camera_streaming", camera=other) == 0
    states = {
        s.labels["state"]: s.value
        for s in families["pantau_camera_state"].samples
        if s.labels["camera"] == other
    }
    assert states == {"Starting": 0, "Streaming": 0, "Backoff": 1, "Stopped": 0, "Failed": 0}
    last_frame = families["pantau_camera_last_frame_timestamp_seconds"]
    assert [s.labels for s in last_frame.samples] == [{"camera": CAMERA}]  # the other has no frame yet
    assert (
        value(last_frame, last_frame.name, camera=CAMERA)
        == datetime(2024, 5, 1, 3, 4, 5, tzinfo=UTC).timestamp()
    )
    assert value(families["pantau_triton_reachable"], "pantau_triton_reachable") == 1
    assert value(families["pantau_frames_sampled"], "pantau_frames_sampled_total", camera=CAMERA) == 1210
    cpu = families["pantau_camera_cpu_seconds"]
    assert value(cpu, "pantau_camera_cpu_seconds_total", camera=CAMERA) == 90.5
    assert value(families["pantau_camera_cpu_cores"], "pantau_camera_cpu_cores", camera=CAMERA) == 0.125
    crossings = families["pantau_line_crossings"]
    gate = {"camera": CAMERA, "line": "gate", "class": "person"}
    assert value(crossings, "pantau_line_crossings_total", direction="forward", **gate) == 2
    assert value(crossings, "pantau_line_crossings_total", direction="backward", **gate) == 1
    kiosk = {"camera": CAMERA, "zone": "kiosk", "class": "person"}
    assert value(families["pantau_zone_events"], "pantau_zone_events_total", event="entered", **kiosk) == 4
    assert value(families["pantau_zone_occupancy"], "pantau_zone_occupancy", **kiosk) == 1
    assert value(families["pantau_camera_tracks"], "pantau_camera_tracks", camera=CAMERA) == 3
    lag = families["pantau_camera_decode_lag_seconds"]
    assert [s.labels for s in lag.samples] == [{"camera": CAMERA}]  # the other camera has no sample yet
    assert value(lag, lag.name, camera=CAMERA) == 0.042
    assert value(families["pantau_ingest_cameras"], "pantau_ingest_cameras") == 2
    assert value(families["pantau_events_pending"], "pantau_events_pending", sink="city-hall") == 0
    assert value(families["pantau_events_published"], "pantau_events_published_total", sink="city-hall") == 0


def test_metrics_latency_is_a_cumulative_histogram_per_camera() -> None:
    family = parse_metrics(render_metrics(pod_report(), latency_histograms()))[
        "pantau_inference_latency_seconds"
    ]
    buckets = check_histogram(family, CAMERA)
    assert [b for b, _ in buckets] == [*LATENCY_BUCKETS, math.inf]
    assert dict(buckets)[0.005] == 2  # an observation on a bound counts in that bucket
    assert dict(buckets)[5.0] == 6
    assert dict(buckets)[math.inf] == 7
    assert value(family, f"{family.name}_count", camera=CAMERA) == len(LATENCIES)
    assert value(family, f"{family.name}_sum", camera=CAMERA) == pytest.approx(sum(LATENCIES))
    # A camera without a histogram (no frame inferred yet) has no series at all.
    assert {s.labels["camera"] for s in family.samples} == {CAMERA}
    # Without histograms the family is still declared, empty.
    bare = parse_metrics(render_metrics(pod_report()))["pantau_inference_latency_seconds"]
    assert bare.type == "histogram"
    assert bare.samples == []


def test_metrics_never_show_a_camera_password_and_escape_label_values() -> None:
    report = pod_report()
    odd = camera_report('say "hi"\\there', "Streaming", frames_processed=1)
    report = report.model_copy(update={"cameras": [*report.cameras, odd]})
    text = render_metrics(report, latency_histograms())
    assert "hunter2" not in text
    families = parse_metrics(text)
    processed = families["pantau_frames_processed"]
    assert value(processed, "pantau_frames_processed_total", camera='bengkulu/say "hi"\\there') == 1


def test_each_app_has_its_own_registry() -> None:
    for _ in range(2):  # a second registry for the same pod is no duplicate
        assert b"pantau_ingest_cameras 2.0" in generate_latest(metrics_registry(pod_report))
    make_app(pod_report, ready=lambda: True, healthy=lambda: True)
    assert b"pantau_" not in generate_latest(REGISTRY)  # the process-wide default stays untouched


@pytest.mark.integration
async def test_endpoints_answer_health_readiness_status_and_metrics() -> None:
    ready = False

    def snapshot() -> PodStatusReport:
        return pod_report()

    server = await serve(
        "127.0.0.1", 0, snapshot, ready=lambda: ready, healthy=lambda: True, latency=latency_histograms
    )
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
            assert (await http.get("/healthz")).status_code == 200
            not_ready = await http.get("/readyz")
            assert not_ready.status_code == 503
            ready = True
            assert (await http.get("/readyz")).status_code == 200

            status = await http.get("/status")
            assert status.status_code == 200
            assert status.headers["content-type"].startswith("application/json")
            assert PodStatusReport.model_validate_json(status.content) == pod_report()
            assert "hunter2" not in status.text

            metrics = await http.get("/metrics")
            assert metrics.status_code == 200
            assert metrics.headers["content-type"] == CONTENT_TYPE_LATEST
            assert "hunter2" not in metrics.text
            families = parse_metrics(metrics.text)
            assert families["pantau_frames_processed"].type == "counter"
            assert families["pantau_camera_fps"].type == "gauge"
            check_histogram(families["pantau_inference_latency_seconds"], CAMERA)
            label_sets = {frozenset(s.labels) for f in families.values() for s in f.samples}
            assert frozenset({"camera", "reason"}) in label_sets
            assert frozenset({"camera", "class"}) in label_sets
            assert frozenset({"camera", "le"}) in label_sets
            assert (await http.get("/nothing")).status_code == 404
    finally:
        await server.aclose()


@pytest.mark.integration
async def test_a_failing_snapshot_is_a_500_not_a_crash() -> None:
    def broken() -> PodStatusReport:
        raise RuntimeError("boom")

    async with (
        IngestServer(broken, ready=lambda: True, healthy=lambda: 1 / 0 > 0, port=0) as server,
        httpx.AsyncClient(base_url=server.url, timeout=5) as http,
    ):
        assert (await http.get("/status")).status_code == 500
        assert (await http.get("/metrics")).status_code == 500
        assert (await http.get("/healthz")).status_code == 503
        assert (await http.get("/readyz")).status_code == 200
