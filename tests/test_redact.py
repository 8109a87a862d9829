"""One redaction helper (`pantau.redact`) for every credential: URL user info, secret query values and
secrets in percent-encoded form, wherever they go: messages, sink errors and span attributes."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from urllib.parse import quote, quote_plus

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pantau import telemetry
from pantau.ingest.events import DetectionEvent, JsonLinesSink
from pantau.redact import REDACTED, has_credentials, has_userinfo, redact_url, scrub

SECRET = "p@ss:w/rd 1"  # changes when percent-encoded
ENCODED = quote(SECRET, safe="")  # p%40ss%3Aw%2Frd%201

# (text with a credential, the same text redacted, what must not be left in it)
CREDENTIALS: list[tuple[str, str, list[str]]] = [
    (
        "rtsp://admin:hunter2@10.0.0.9:554/stream",
        "rtsp://REDACTED:REDACTED@10.0.0.9:554/stream",
        ["admin:", "hunter2"],
    ),
    (
        "http://cam.local/snap.cgi?user=admin&password=hunter2&token=t0k3n&ch=1",
        "http://cam.local/snap.cgi?user=admin&password=REDACTED&token=REDACTED&ch=1",
        ["hunter2", "t0k3n"],
    ),
    (
        f"failed: rtsp://viewer:{ENCODED}@cam/live and http://cam/jpg?pwd={ENCODED}",
        "failed: rtsp://REDACTED:REDACTED@cam/live and http://cam/jpg?pwd=REDACTED",
        [SECRET, ENCODED, "%40ss"],
    ),
]
CLEAN = ["rtsp://10.0.0.9:554/stream", "http://cam.local:8080/mjpeg?x=1&user=admin", "bengkulu/pasar-minggu"]


@pytest.mark.parametrize(("text", "redacted", "secrets"), CREDENTIALS)
def test_redact_url_hides_userinfo_secret_queries_and_encoded_secrets(
    text: str, redacted: str, secrets: list[str]
) -> None:
    assert has_credentials(text)
    assert redact_url(text) == redacted
    assert not any(secret in redact_url(text) for secret in secrets)
    assert scrub(text, []) == redacted  # scrub starts from redact_url


@pytest.mark.parametrize("text", CLEAN)
def test_text_without_credentials_is_left_alone(text: str) -> None:
    assert not has_credentials(text)
    assert redact_url(text) == text


def test_has_userinfo_is_the_user_info_part_only() -> None:
    assert has_userinfo("see https://user@models.example.org/yolox")
    assert not has_userinfo("https://hooks.example.org/in?token=abc")
    assert has_credentials("https://hooks.example.org/in?token=abc")


def test_scrub_hides_a_secret_in_every_encoding_outside_urls_too() -> None:
    text = f"sent {SECRET!r}, then {ENCODED}, then {quote(SECRET)} and {quote_plus(SECRET)}"
    clean = scrub(text, [SECRET])
    assert clean.count(REDACTED) == 4
    for form in (SECRET, ENCODED, quote(SECRET), quote_plus(SECRET)):
        assert form not in clean


@pytest.fixture
def spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = TracerProvider()
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return provider, memory


@pytest.mark.parametrize(("text", "redacted", "secrets"), CREDENTIALS)
def test_credentials_never_reach_span_attributes(
    spans: tuple[TracerProvider, InMemorySpanExporter], text: str, redacted: str, secrets: list[str]
) -> None:
    provider, memory = spans
    attributes = {telemetry.ATTR_SERVER_ADDRESS: text, telemetry.ATTR_SINKS: ["stdout", text]}
    assert telemetry.safe_attributes(attributes) == {}

    def failing_frame() -> None:
        tracer = telemetry.get_tracer(provider)
        with (
            telemetry.frame_span(tracer, "ns/cam", "site", "pool-0", 1, model=text),
            telemetry.stage_span(tracer, telemetry.SPAN_READ_DECODE, attributes) as stage,
        ):
            telemetry.set_attributes(stage, {telemetry.ATTR_WIRE: text, telemetry.ATTR_FRAME_WIDTH: 640})
            raise RuntimeError(f"could not open {text}")  # only the type is recorded

    with pytest.raises(RuntimeError):
        failing_frame()
    finished = memory.get_finished_spans()
    assert [span.name for span in finished] == [telemetry.SPAN_READ_DECODE, telemetry.SPAN_FRAME]
    assert dict(finished[0].attributes or {}) == {
        telemetry.ATTR_FRAME_WIDTH: 640,
        telemetry.ATTR_ERROR_TYPE: "RuntimeError",
    }
    assert telemetry.ATTR_MODEL not in (finished[1].attributes or {})
    for span in finished:
        dumped = span.to_json()
        assert not any(secret in dumped for secret in secrets)


def test_resource_attributes_with_credentials_are_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_RESOURCE_ATTRIBUTES",
    ):
        monkeypatch.delenv(name, raising=False)
    given = {"pantau.site": "bengkulu-kota", **{f"pantau.x{i}": c[0] for i, c in enumerate(CREDENTIALS)}}
    provider = telemetry.setup_tracing("pantau-test", given)
    try:
        resource = dict(provider.resource.attributes)
    finally:
        telemetry.shutdown(provider)
    assert resource["pantau.site"] == "bengkulu-kota"
    assert not any(key.startswith("pantau.x") for key in resource)


async def test_sink_errors_are_redacted() -> None:
    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError(f"cannot forward to {CREDENTIALS[0][0]} or {CREDENTIALS[1][0]}")

    sink = JsonLinesSink(Broken(), name="broken")
    event = DetectionEvent(
        camera="bengkulu/pasar-minggu",
        site="bengkulu-kota",
        pod="pool-bengkulu-kota-0",
        timestamp=datetime(2024, 5, 1, 3, 4, 5, tzinfo=UTC),
        frame_id="0b7c-uid:s1:1",
        detections=[],
        traceparent=f"00-{1:032x}-{2:016x}-01",
    )
    await sink.publish(event)
    error = sink.stats.last_error or ""
    assert f"{CREDENTIALS[0][1]} or {CREDENTIALS[1][1]}" in error
    assert not any(secret in error for secret in CREDENTIALS[0][2] + CREDENTIALS[1][2])
