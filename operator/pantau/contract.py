"""What the operator and the ingest pods share, written once: the labels they select on, the ingest
pod's settings (the operator renders the pod's environment from the same model the pod parses it
with) and the /status report (the pod serves it, the operator parses it with the same model).

Either side imports this module and never the other side's code (import-linter checks it)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from pantau.models.site import CameraDefaults, EventSink
from pantau.redact import redact_url

# ----- labels and annotations -----

# Recommended labels (https://kubernetes.io/docs/concepts/overview/working-with-objects/common-labels/).
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_PART_OF: Final = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
# Pantau's own labels.
LABEL_SITE: Final = "pantau.io/site"
# On a Camera: the ingest pod (a StatefulSet pod name, "<pool>-<ordinal>") that serves it. Ingest pods
# watch Cameras with the selector pantau.io/shard=<their own pod name>.
LABEL_SHARD: Final = "pantau.io/shard"
# On a Secret: its owner's consent that Cameras use it ("true"), optionally only Cameras of the Sites
# listed (comma-separated) in the annotation. Without the label no pool is ever granted the Secret.
LABEL_CREDENTIALS: Final = "pantau.io/credentials"
ANNOTATION_CREDENTIALS_SITES: Final = "pantau.io/sites"
# Kopf's own state (finalizer, progress, diff-base) lives under this prefix.
ANNOTATION_PREFIX: Final = "pantau.io"
# Well-known labels Pantau sets or selects on.
LABEL_ZONE: Final = "topology.kubernetes.io/zone"
LABEL_HOSTNAME: Final = "kubernetes.io/hostname"
# Label values.
PART_OF: Final = "pantau"
MANAGED_BY: Final = "pantau"
INGEST_APP: Final = "pantau-ingest"
INGEST_COMPONENT: Final = "ingest"

# ----- the ingest container -----

INGEST_COMMAND: Final = ("pantau", "ingest")
INGEST_PORT: Final = 8080
HEALTHZ_PATH: Final = "/healthz"
READYZ_PATH: Final = "/readyz"
STATUS_PATH: Final = "/status"
METRICS_PATH: Final = "/metrics"
# A /status body larger than this is refused unread: a pod serves at most a few hundred cameras
# (a few hundred bytes each), so anything near this size is a bug or a hostile endpoint.
MAX_STATUS_BYTES: Final = 4 * 1024 * 1024

# Settings the kubelet fills from the pod itself (the downward API): field -> fieldPath.
DOWNWARD_FIELDS: Final[Mapping[str, str]] = {
    "pod_name": "metadata.name",
    "namespace": "metadata.namespace",
    "pod_ip": "status.podIP",
}


def _env(name: str) -> Any:
    return AliasChoices(name)


class IngestSettings(BaseSettings):
    """An ingest pod's settings, read from its environment. The operator never writes variable names
    itself: it fills this model and renders the environment with `pod_env`."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    pod_name: str = Field(validation_alias=_env("POD_NAME"))
    namespace: str = Field(validation_alias=_env("POD_NAMESPACE"))
    pod_ip: str = Field(default="127.0.0.1", validation_alias=_env("POD_IP"))
    site: str = Field(validation_alias=_env("PANTAU_SITE"))
    triton_address: str = Field(validation_alias=_env("PANTAU_TRITON_ADDRESS"))
    model: str = Field(default="yolox", validation_alias=_env("PANTAU_MODEL"))
    port: int = Field(default=INGEST_PORT, ge=1, le=65535, validation_alias=_env("PANTAU_INGEST_PORT"))
    # Starting values of the Site's camera defaults and event sinks (JSON). The operator renders neither:
    # its pods watch their Site for them, so a change needs no rollout. A pod run by hand may set them.
    camera_defaults: CameraDefaults = Field(
        default_factory=CameraDefaults, validation_alias=_env("PANTAU_CAMERA_DEFAULTS")
    )
    event_sinks: tuple[EventSink, ...] = Field(default=(), validation_alias=_env("PANTAU_EVENT_SINKS"))
    # Tunables (tests shorten them).
    queue_size: int = Field(default=2, ge=1, validation_alias=_env("PANTAU_INGEST_QUEUE"))
    read_timeout: float = Field(default=10.0, gt=0, validation_alias=_env("PANTAU_INGEST_READ_TIMEOUT"))
    backoff_base: float = Field(default=1.0, gt=0, validation_alias=_env("PANTAU_INGEST_BACKOFF_BASE"))
    backoff_cap: float = Field(default=30.0, gt=0, validation_alias=_env("PANTAU_INGEST_BACKOFF_CAP"))
    auth_backoff: float = Field(default=60.0, gt=0, validation_alias=_env("PANTAU_INGEST_AUTH_BACKOFF"))
    secret_refresh: float = Field(default=60.0, gt=0, validation_alias=_env("PANTAU_INGEST_SECRET_REFRESH"))
    # Frames per Triton request: 1 suits a CPU Triton (a batch costs as much as its frames apart and
    # each waits for the last); a GPU's pays off with more (see pantau/triton/client.py).
    max_batch: int = Field(default=1, ge=1, validation_alias=_env("PANTAU_INGEST_MAX_BATCH"))
    # Triton requests outstanding at once: the model's instances (2 in the chart's build). A Site with
    # an uplink raises it to cover the WAN's round trip (pantau.ingest.budget.WAN_IN_FLIGHT).
    max_in_flight: int = Field(default=2, ge=1, validation_alias=_env("PANTAU_INGEST_MAX_IN_FLIGHT"))
    # Where webhook sinks keep undelivered events (one SQLite file per sink), on the pod's volume so they
    # outlive a container restart; unset: in memory only.
    spool_dir: str | None = Field(default=None, validation_alias=_env("PANTAU_INGEST_SPOOL_DIR"))
    # Seconds of the interval whose analytics counts the Camera's status shows (aligned to the clock).
    analytics_interval: float = Field(
        default=300.0, gt=0, validation_alias=_env("PANTAU_INGEST_ANALYTICS_INTERVAL")
    )
    # The fallback detector's model (Site spec.inference.fallback): a file in the pod, or a URL and its
    # SHA-256 (the chart's triton.model.url) downloaded once onto the pod's volume (spool_dir).
    fallback_model: str | None = Field(default=None, validation_alias=_env("PANTAU_INGEST_FALLBACK_MODEL"))
    fallback_model_url: str | None = Field(
        default=None, validation_alias=_env("PANTAU_INGEST_FALLBACK_MODEL_URL")
    )
    fallback_model_sha256: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$", validation_alias=_env("PANTAU_INGEST_FALLBACK_MODEL_SHA256")
    )
    # Seconds between readiness checks of Triton while no inference has told how it is.
    triton_check: float = Field(default=5.0, gt=0, validation_alias=_env("PANTAU_INGEST_TRITON_CHECK"))
    # A frame in processing for longer than this means the pipeline is stuck: /healthz fails, so the
    # kubelet restarts the container. Above the longest legitimate wait (Triton's deadline times its retries).
    stall_timeout: float = Field(default=60.0, gt=0, validation_alias=_env("PANTAU_INGEST_STALL_TIMEOUT"))

    @field_validator("camera_defaults", "event_sinks", mode="before")
    @classmethod
    def _json(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    @property
    def shard(self) -> str:
        """Cameras assigned to this pod carry pantau.io/shard=<pod name>."""
        return self.pod_name


def env_name(field: str) -> str:
    """The environment variable an ingest setting is read from."""
    alias = IngestSettings.model_fields[field].validation_alias
    assert isinstance(alias, AliasChoices)
    return str(alias.choices[0])


def _env_value(value: Any) -> str:
    if isinstance(value, BaseModel):
        return value.model_dump_json(by_alias=True, exclude_none=True)
    if isinstance(value, tuple | list):
        return json.dumps([v.model_dump(mode="json", by_alias=True, exclude_none=True) for v in value])
    return str(value)


def pod_env(**values: Any) -> list[dict[str, Any]]:
    """The container environment that makes an ingest pod read `values` (IngestSettings field names):
    the downward-API fields as fieldRefs first (later variables may refer to them as $(NAME)), then
    each given value as the pod will parse it. The values are validated here, so the operator never
    renders an environment the pod would refuse."""
    unknown = set(values) - set(IngestSettings.model_fields)
    if unknown:
        raise ValueError(f"not an ingest setting: {sorted(unknown)}")
    placeholders = {field: f"$({env_name(field)})" for field in DOWNWARD_FIELDS}
    checked = IngestSettings.model_validate({**placeholders, **values})
    env: list[dict[str, Any]] = [
        {"name": env_name(field), "valueFrom": {"fieldRef": {"fieldPath": path}}}
        for field, path in DOWNWARD_FIELDS.items()
    ]
    env += [
        {"name": env_name(field), "value": _env_value(getattr(checked, field))}
        for field in IngestSettings.model_fields
        if field in values and field not in DOWNWARD_FIELDS
    ]
    return env


# ----- the /status report -----

CameraState = Literal["Starting", "Streaming", "Backoff", "Stopped", "Failed"]
CAMERA_STATES: Final[tuple[CameraState, ...]] = ("Starting", "Streaming", "Backoff", "Stopped", "Failed")
REASON_PATTERN: Final = r"^[A-Z][A-Za-z0-9]*$"
MAX_MESSAGE: Final = 1024
MAX_CAMERAS_PER_REPORT: Final = 1000


def _short(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


Redacted = Annotated[str, AfterValidator(redact_url)]
Count = Annotated[int, Field(ge=0)]
Reason = Annotated[str, Field(pattern=REASON_PATTERN, max_length=128)]


class _Report(BaseModel):
    # Unknown fields are ignored: an operator must read the report of a newer pod during an upgrade.
    model_config = ConfigDict(frozen=True, extra="ignore", hide_input_in_errors=True)


class LatencySummary(_Report):
    """Inference latency of a camera's recent frames (request sent → detections back), milliseconds.
    `count` and `sum_ms` (all frames since the camera started) make /metrics a complete summary."""

    p50: float = Field(ge=0)
    p99: float = Field(ge=0)
    count: Count = 0
    sum_ms: float = Field(default=0.0, ge=0)


class LineCounts(_Report):
    """Crossings of one line: totals by direction, and by class ("person" -> {"forward": n, ...})."""

    forward: Count = 0
    backward: Count = 0
    classes: dict[str, dict[str, Count]] = Field(default_factory=dict)


class ZoneCounts(_Report):
    """One zone: entries, exits and loitering so far (or in an interval), occupancy now; by class too."""

    entered: Count = 0
    exited: Count = 0
    loitering: Count = 0
    occupancy: Count = 0
    classes: dict[str, dict[str, Count]] = Field(default_factory=dict)


class AnalyticsCounts(_Report):
    lines: dict[str, LineCounts] = Field(default_factory=dict)
    zones: dict[str, ZoneCounts] = Field(default_factory=dict)


class AnalyticsInterval(AnalyticsCounts):
    """The counts of the last completed interval (occupancy at its end)."""

    start: AwareDatetime
    end: AwareDatetime


class AnalyticsReport(AnalyticsCounts):
    """Tracking and zone/line analytics of one camera: counts since its worker started."""

    tracks: Count = 0  # tracks followed now
    last_interval: AnalyticsInterval | None = None


class UplinkReport(_Report):
    """How a camera sends under its Site's uplink budget (Site spec.uplink), from the pod's plan."""

    quality: int = Field(ge=1, le=100)  # JPEG quality (libjpeg's scale)
    scale: float = Field(gt=0, le=1)  # resolution factor of both sides
    fps: float = Field(ge=0)  # sampled frames per second the plan gives the camera
    asked_fps: float = Field(ge=0)  # what the Camera (or its Site's defaults) asks for
    limited: bool  # below its asked fps, the reference quality (80) or full resolution
    stage: Literal["none", "quality", "resolution", "fps"]  # the furthest step the pod's plan took
    budget_bps: float = Field(ge=0)  # the pod's share of the Site's bandwidth, bits per second
    sent_bps: float = Field(ge=0)  # what the pod sent (frames and events), bits per second, recent
    message: Annotated[str, AfterValidator(_short)]


class CameraStatusReport(_Report):
    """What the pod knows about one of its cameras."""

    namespace: str
    name: str
    state: CameraState
    reason: Reason | None = None  # e.g. AuthFailed, Timeout
    message: Annotated[Redacted, AfterValidator(_short)] | None = None
    last_frame_time: AwareDatetime | None = None  # capture time of the last processed frame
    fps: float = Field(ge=0)  # measured processed frames per second (recent)
    frames_sampled: Count = 0  # samples the source delivered (processed + dropped + in flight)
    frames_processed: Count = 0
    frames_dropped: dict[str, Count] = Field(default_factory=dict)  # reason -> frames
    # Measured load: CPU seconds per second (recent) of the camera's threads and its share of the pod's
    # other work, so the cameras' figures add up to the pod's; `cpu_seconds` is the running total.
    cpu_cores: float = Field(default=0.0, ge=0)
    cpu_seconds: float = Field(default=0.0, ge=0)
    # Median age of recent samples when the pipeline took them (decode, letterbox, queue), ms.
    decode_lag_ms: float | None = Field(default=None, ge=0)
    inference_latency_ms: LatencySummary | None = None
    detections: dict[str, Count] = Field(default_factory=dict)  # class -> detections since start
    analytics: AnalyticsReport | None = None
    uplink: UplinkReport | None = None  # None: the Site has no uplink budget
    # Frames analysed in the pod by the fallback detector while Triton could not be reached.
    frames_local: Count = 0
    url: Redacted  # the source URL with userinfo shown as REDACTED:REDACTED@

    @property
    def camera(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def streaming(self) -> bool:
        return self.state == "Streaming"


class TritonReport(_Report):
    """The pod's Triton as its real calls (inferences and readiness checks) found it."""

    address: str
    reachable: bool  # the latest call was answered
    model: str | None = None
    model_ready: bool | None = None  # None: no answer has told yet
    last_success: AwareDatetime | None = None
    last_error: Annotated[Redacted, AfterValidator(_short)] | None = None
    last_error_time: AwareDatetime | None = None


class SinkStats(_Report):
    """Counters of one event sink (or the sum over a MultiSink's sinks)."""

    name: str
    published: Count = 0  # events handed to the sink
    delivered: Count = 0  # events written / accepted by the receiver (2xx)
    dropped: Count = 0  # events given up, all reasons
    dropped_reasons: dict[str, Count] = Field(default_factory=dict)
    pending: Count = 0  # events buffered, in flight included
    retries: Count = 0  # failed attempts that were (or will be) retried
    last_error: str | None = None  # no URL path, query or header value in it


class PodStatusReport(_Report):
    """The /status payload: the pod, its cameras, its Triton connection and its event sinks."""

    pod: str
    site: str
    shard: str
    started_at: AwareDatetime
    cpu_cores: float = Field(default=0.0, ge=0)  # the pod's process, CPU seconds per second (recent)
    cameras: list[CameraStatusReport] = Field(default_factory=list, max_length=MAX_CAMERAS_PER_REPORT)
    triton: TritonReport
    sinks: list[SinkStats] = Field(default_factory=list)


class ReportError(ValueError):
    """A /status body that is too large or does not parse as a PodStatusReport."""


def parse_status(body: bytes) -> PodStatusReport:
    """A pod's /status body as a typed report; anything else is refused with a short reason (never
    the body itself: it comes from a pod and may hold anything)."""
    if len(body) > MAX_STATUS_BYTES:
        raise ReportError(f"report of {len(body)} bytes is over the {MAX_STATUS_BYTES}-byte limit")
    try:
        return PodStatusReport.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ReportError(f"report does not parse: {where}: {first['msg']}") from None
