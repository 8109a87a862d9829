"""OpenTelemetry for ingest pods: one trace per processed frame, exported by OTLP, configured by `OTEL_*`.

A frame's trace is a root span "frame" (started at the capture time) with children "read/decode",
"infer", "analyse" and "publish". Its W3C `traceparent` goes to Triton as gRPC metadata and into the
detection event, so a receiver can find the trace of every event.

Configuration is the SDK's own: the OTLP exporters read `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`,
`..._HEADERS`, `..._TIMEOUT`, `..._INSECURE` and TLS files themselves, the TracerProvider reads
`OTEL_TRACES_SAMPLER[_ARG]`, the resource reads `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`,
the BatchSpanProcessor reads `OTEL_BSP_*`. This module only decides *whether* to export (an endpoint
is set and `OTEL_TRACES_EXPORTER` is not `none`) and *which* exporter (`OTEL_EXPORTER_OTLP_[TRACES_]
PROTOCOL`: `grpc` or `http/protobuf`). Without an endpoint spans are still created, so every event still
carries a `traceparent`. Nothing here reads the environment at import time.

Span attributes never hold secrets: helpers here set only keys from an allow-list, and drop any value
in which `pantau.redact.has_credentials` finds a credential (URL user info, or a secret-looking query
value such as `?password=` or `?token=`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from pantau.redact import has_credentials

log = logging.getLogger(__name__)

# ----- span names -----
SPAN_FRAME: Final = "frame"
SPAN_READ_DECODE: Final = "read/decode"
SPAN_INFER: Final = "infer"
SPAN_ANALYSE: Final = "analyse"
SPAN_PUBLISH: Final = "publish"

# ----- attribute keys -----
# OpenTelemetry semantic conventions where one exists ...
ATTR_K8S_POD_NAME: Final = "k8s.pod.name"
ATTR_K8S_NAMESPACE_NAME: Final = "k8s.namespace.name"
ATTR_SERVER_ADDRESS: Final = "server.address"
ATTR_SERVER_PORT: Final = "server.port"
ATTR_RPC_SYSTEM: Final = "rpc.system"
ATTR_ERROR_TYPE: Final = "error.type"
# ... and our own namespace for the rest.
ATTR_CAMERA: Final = "pantau.camera"  # "<namespace>/<name>" of the Camera object
ATTR_SITE: Final = "pantau.site"
ATTR_MODEL: Final = "pantau.model"
ATTR_FRAME_ID: Final = "pantau.frame_id"
ATTR_DETECTIONS: Final = "pantau.detections"  # detections in the frame, all classes
ATTR_DETECTIONS_PREFIX: Final = "pantau.detections."  # + class name: detections of that class
ATTR_BATCH_SIZE: Final = "pantau.batch_size"  # frames in the Triton request this frame went in
ATTR_WIRE: Final = "pantau.wire"  # uint8 | jpeg
ATTR_FRAME_WIDTH: Final = "pantau.frame.width"
ATTR_FRAME_HEIGHT: Final = "pantau.frame.height"
ATTR_SINKS: Final = "pantau.sinks"  # event sinks the detection event was handed to
ATTR_KEYFRAME: Final = "pantau.keyframe"  # the sample was a keyframe
ATTR_DROP_REASON: Final = "pantau.drop_reason"  # why the frame was not analysed (e.g. InferenceUnavailable)
ATTR_INFERENCE: Final = "pantau.inference"  # "local": the pod's fallback detector analysed the frame

ALLOWED_ATTRIBUTES: Final = frozenset(
    {
        ATTR_K8S_POD_NAME,
        ATTR_K8S_NAMESPACE_NAME,
        ATTR_SERVER_ADDRESS,
        ATTR_SERVER_PORT,
        ATTR_RPC_SYSTEM,
        ATTR_ERROR_TYPE,
        ATTR_CAMERA,
        ATTR_SITE,
        ATTR_MODEL,
        ATTR_FRAME_ID,
        ATTR_DETECTIONS,
        ATTR_BATCH_SIZE,
        ATTR_WIRE,
        ATTR_FRAME_WIDTH,
        ATTR_FRAME_HEIGHT,
        ATTR_SINKS,
        ATTR_KEYFRAME,
        ATTR_DROP_REASON,
        ATTR_INFERENCE,
    }
)
_CLASS_KEY: Final = re.compile(re.escape(ATTR_DETECTIONS_PREFIX) + r"[a-z][a-z_]*[a-z]")

TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
INSTRUMENTATION_NAME: Final = "pantau.ingest"

_PROTOCOLS: Final = ("grpc", "http/protobuf")
DEFAULT_PROTOCOL: Final = "grpc"


# ----- secrets -----


def _safe_value(value: object) -> AttributeValue | None:
    """`value` as an attribute value, or None when it is not a valid one or holds a credential."""
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return None if has_credentials(value) else value
    if isinstance(value, list | tuple):
        if all(isinstance(v, str) for v in value):
            return None if any(has_credentials(v) for v in value) else [str(v) for v in value]
        if all(isinstance(v, bool) for v in value):
            return [bool(v) for v in value]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return [int(v) for v in value]
        if all(isinstance(v, float) for v in value):
            return [float(v) for v in value]
    return None


def is_allowed_key(key: str) -> bool:
    return key in ALLOWED_ATTRIBUTES or _CLASS_KEY.fullmatch(key) is not None


def safe_attributes(attributes: Mapping[str, object]) -> dict[str, AttributeValue]:
    """The attributes that may go on a span: allow-listed keys only, OTel value types only, and no value
    that holds a credential (a camera URL can embed its password, in its user info or its query)."""
    safe: dict[str, AttributeValue] = {}
    for key, value in attributes.items():
        if not is_allowed_key(key):
            log.debug("span attribute %s is not on the allow-list; dropped", key)
            continue
        coerced = _safe_value(value)
        if coerced is None:
            log.debug("span attribute %s has an unsafe or unsupported value; dropped", key)
            continue
        safe[key] = coerced
    return safe


def class_attribute(class_name: str) -> str:
    """The attribute key of the per-class detection count, e.g. `pantau.detections.traffic_light`."""
    return ATTR_DETECTIONS_PREFIX + re.sub(r"[^a-z]+", "_", class_name.lower()).strip("_")


def set_attributes(span: Span, attributes: Mapping[str, object]) -> None:
    """Set `attributes` on `span` through `safe_attributes`."""
    span.set_attributes(safe_attributes(attributes))


def set_detections(span: Span, class_counts: Mapping[str, int]) -> None:
    """The frame's detection count, in total and per class."""
    attributes: dict[str, object] = {ATTR_DETECTIONS: sum(class_counts.values())}
    for name, count in class_counts.items():
        attributes[class_attribute(name)] = count
    set_attributes(span, attributes)


# ----- setup -----


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def otlp_protocol() -> str:
    """The OTLP protocol for traces from `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or `..._PROTOCOL`.

    The default is `grpc`: the Python SDK's historical default, and what the operator's default
    endpoints (port 4317) speak."""
    protocol = (
        _env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or _env("OTEL_EXPORTER_OTLP_PROTOCOL") or DEFAULT_PROTOCOL
    )
    if protocol not in _PROTOCOLS:
        raise ValueError(
            f"unsupported OTLP protocol {protocol!r}: "
            "set OTEL_EXPORTER_OTLP_PROTOCOL to grpc or http/protobuf"
        )
    return protocol


def otlp_exporter_from_env() -> SpanExporter | None:
    """The OTLP span exporter the `OTEL_*` variables ask for, or None when no endpoint is set or
    `OTEL_TRACES_EXPORTER` is `none`. The exporter reads endpoint, headers, timeout and TLS settings
    from the environment itself."""
    exporters = (_env("OTEL_TRACES_EXPORTER") or "otlp").lower()
    if exporters == "none":
        return None
    if "otlp" not in {e.strip() for e in exporters.split(",")}:
        log.warning("OTEL_TRACES_EXPORTER=%s: only otlp is supported; spans are not exported", exporters)
        return None
    if _env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") is None and _env("OTEL_EXPORTER_OTLP_ENDPOINT") is None:
        return None
    if otlp_protocol() == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter()


def setup_tracing(service_name: str, resource_attributes: Mapping[str, str]) -> TracerProvider:
    """A TracerProvider for this process, exporting by OTLP in batches when an endpoint is configured.

    `service_name` is the default; `OTEL_SERVICE_NAME` wins when set. `resource_attributes` (e.g. the
    site and pod) are merged over `OTEL_RESOURCE_ATTRIBUTES`. The provider is not installed globally:
    pass it (or its tracer) to the code that traces. Call `shutdown(provider)` at exit."""
    attributes: dict[str, AttributeValue] = {
        key: value for key, value in resource_attributes.items() if not has_credentials(value)
    }
    if _env("OTEL_SERVICE_NAME") is None:
        attributes["service.name"] = service_name
    provider = TracerProvider(resource=Resource.create(attributes))
    exporter = otlp_exporter_from_env()
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
        log.info("tracing: exporting spans by OTLP/%s", otlp_protocol())
    else:
        log.info("tracing: no OTLP endpoint configured; spans are not exported")
    return provider


def shutdown(provider: TracerProvider, timeout: float = 10.0) -> None:
    """Export what is still buffered (waiting at most `timeout` seconds), then stop the provider."""
    if not provider.force_flush(timeout_millis=int(timeout * 1000)):
        log.warning("tracing: not every span was exported within %.0f s", timeout)
    provider.shutdown()


def get_tracer(provider: TracerProvider) -> Tracer:
    """The tracer the ingest pipeline creates its spans with."""
    return provider.get_tracer(INSTRUMENTATION_NAME)


# ----- spans of a frame -----


@contextmanager
def _guarded(span: Span) -> Iterator[Span]:
    # The SDK would record the exception's message as a span event; messages may quote a camera URL
    # with its password, so only the exception's type is recorded.
    try:
        yield span
    except BaseException as exc:
        span.set_attribute(ATTR_ERROR_TYPE, type(exc).__qualname__)
        span.set_status(Status(StatusCode.ERROR))
        raise


@contextmanager
def frame_span(
    tracer: Tracer,
    camera: str,
    site: str,
    pod: str,
    start_time_ns: int,
    *,
    frame_id: str | None = None,
    model: str | None = None,
) -> Iterator[Span]:
    """The root span of one frame's trace, started at the frame's capture time (ns since the epoch) and
    made current, so `stage_span` calls inside it become its children. Always a new trace, whatever
    span is current."""
    namespace = camera.split("/", 1)[0] if "/" in camera else None
    attributes: dict[str, object] = {ATTR_CAMERA: camera, ATTR_SITE: site, ATTR_K8S_POD_NAME: pod}
    if namespace:
        attributes[ATTR_K8S_NAMESPACE_NAME] = namespace
    if frame_id is not None:
        attributes[ATTR_FRAME_ID] = frame_id
    if model is not None:
        attributes[ATTR_MODEL] = model
    with (
        tracer.start_as_current_span(
            SPAN_FRAME,
            context=otel_context.Context(),  # empty: a root span
            kind=SpanKind.INTERNAL,
            attributes=safe_attributes(attributes),
            start_time=start_time_ns,
            record_exception=False,
            set_status_on_exception=False,
        ) as span,
        _guarded(span),
    ):
        yield span


@contextmanager
def stage_span(
    tracer: Tracer,
    name: str,
    attributes: Mapping[str, object] | None = None,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
) -> Iterator[Span]:
    """A child of the current span (e.g. `SPAN_INFER` inside `frame_span`), with safe attributes."""
    with (
        tracer.start_as_current_span(
            name,
            kind=kind,
            attributes=safe_attributes(attributes or {}),
            record_exception=False,
            set_status_on_exception=False,
        ) as span,
        _guarded(span),
    ):
        yield span


def past_span(
    tracer: Tracer, name: str, start_ns: int, end_ns: int, attributes: Mapping[str, object] | None = None
) -> None:
    """A child of the current span for work already done (e.g. the decode, timed on the reader
    thread), with safe attributes."""
    span = tracer.start_span(name, start_time=start_ns, attributes=safe_attributes(attributes or {}))
    span.end(end_time=end_ns)


# ----- propagation -----


def _carrier(span: Span) -> dict[str, str]:
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context=trace.set_span_in_context(span))
    return carrier


def traceparent_of(span: Span) -> str | None:
    """The W3C `traceparent` of `span` ("00-<trace id>-<span id>-<flags>"); None for a span with an
    invalid context (tracing disabled by `OTEL_SDK_DISABLED`)."""
    return _carrier(span).get(TRACEPARENT)


def grpc_metadata(span: Span) -> dict[str, str]:
    """The trace-context headers of `span` for a Triton call (`tritonclient` `headers=`, sent as gRPC
    metadata): `traceparent`, and `tracestate` when there is one. Empty when tracing is disabled."""
    return {k: v for k, v in _carrier(span).items() if k in (TRACEPARENT, TRACESTATE)}


def trace_id_of(span: Span) -> str:
    """The 32-hex-digit trace id of `span`, as Jaeger and the `traceparent` spell it."""
    return f"{span.get_span_context().trace_id:032x}"
