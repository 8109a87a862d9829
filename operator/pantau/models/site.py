"""Site spec and status, mirroring crds/sites.pantau.io.yaml (tests/test_models.py keeps them in sync)."""

from __future__ import annotations

import ipaddress
import re
from decimal import Decimal
from typing import Annotated, Final, Literal

from pydantic import AfterValidator, AwareDatetime, Field, model_validator

from pantau.models.camera import (
    ClassNames,
    DnsLabel,
    Fps,
    Score,
    SecretKey,
    SecretName,
    has_duplicates,
    url_has_credentials,
)
from pantau.models.conditions import ApiModel, Conditions, Generation
from pantau.models.limits import (
    HEADER_NAME_PATTERN,
    MAX_ALLOWED_NETWORKS,
    MAX_CAMERAS_PER_POD,
    MAX_EVENT_SINKS,
    MAX_FALLBACK_FPS,
    MAX_FALLBACK_THREADS,
    MAX_FPS,
    MAX_FPS_PER_POD,
    MAX_PODS,
    MAX_QUALITY_FLOOR,
    MAX_UPLINK_BANDWIDTH,
    MAX_UPLINK_LATENCY_MS,
    MAX_URL,
    MIN_FALLBACK_FPS,
    MIN_HEADROOM_PERCENT,
    MIN_QUALITY_FLOOR,
    MIN_SCALE_FLOOR,
    MIN_UPLINK_BANDWIDTH,
    MIN_UPLINK_FPS,
    MIN_UPLINK_LATENCY_MS,
    WEBHOOK_URL_PATTERN,
)
from pantau.redact import has_secret_query

# Kubernetes resource.Quantity, as the API server's own schema spells it.
QUANTITY_PATTERN: Final = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
TRITON_ADDRESS_PATTERN: Final = r"^[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?:[0-9]{1,5}$"
DEFAULT_CLASSES: Final = ("person", "bicycle", "car", "motorcycle", "bus", "truck")

Quantity = Annotated[str, Field(pattern=QUANTITY_PATTERN)] | int
Count = Annotated[int, Field(ge=0)]


def _check_network(value: str) -> str:
    try:
        if "/" not in value:
            raise ValueError(value)
        ipaddress.ip_network(value, strict=True)
    except ValueError:
        raise ValueError(
            "not a network in CIDR notation: write it as address/prefix with no host bits set, "
            "e.g. 127.0.0.0/8 or fd00::/8"
        ) from None
    return value


Network = Annotated[str, Field(max_length=64), AfterValidator(_check_network)]


class Toleration(ApiModel):
    key: Annotated[str, Field(max_length=316)] | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: Annotated[str, Field(max_length=63)] | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: Annotated[int, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _check_value(self) -> Toleration:
        if self.operator == "Exists" and self.value is not None:
            raise ValueError(
                "a toleration with operator Exists matches any value: remove value, or set operator to Equal"
            )
        return self


class Placement(ApiModel):
    zone: Annotated[str, Field(max_length=63)] | None = None
    node_selector: Annotated[dict[str, Annotated[str, Field(max_length=63)]], Field(max_length=16)] | None = (
        None
    )
    tolerations: Annotated[tuple[Toleration, ...], Field(max_length=16)] = ()


_SUFFIXES: Final[dict[str, Decimal | int]] = {
    "": 1, "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}  # fmt: skip


def quantity_value(quantity: str | int) -> Decimal:
    """A resource.Quantity (already matching QUANTITY_PATTERN) as a number, to compare two of them.
    Hand-written because the models may not import the Kubernetes client; the CRD's CEL rules use
    the API server's own quantity() for the same comparisons."""
    text = str(quantity)
    number = re.match(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", text)
    assert number is not None
    return Decimal(number.group(0)) * Decimal(_SUFFIXES[text[number.end() :]])


class ResourceList(ApiModel):
    cpu: Quantity | None = None
    memory: Quantity | None = None

    @model_validator(mode="after")
    def _check_sign(self) -> ResourceList:
        for name in ("cpu", "memory"):
            value = getattr(self, name)
            if value is not None and quantity_value(value) < 0:
                raise ValueError(f"{name} must not be negative: give a quantity such as 500m or 512Mi")
        return self


class Resources(ApiModel):
    requests: ResourceList | None = None
    limits: ResourceList | None = None

    @model_validator(mode="after")
    def _check_requests_within_limits(self) -> Resources:
        if self.requests is None or self.limits is None:
            return self
        for name in ("cpu", "memory"):
            asked, limit = getattr(self.requests, name), getattr(self.limits, name)
            if asked is not None and limit is not None and quantity_value(asked) > quantity_value(limit):
                raise ValueError(
                    f"requests.{name} is above limits.{name}: lower spec.ingest.resources.requests.{name} "
                    f"or raise spec.ingest.resources.limits.{name}"
                )
        return self


class PodCapacity(ApiModel):
    cameras: Annotated[int, Field(ge=1, le=MAX_CAMERAS_PER_POD)] = 8
    fps: Annotated[int, Field(ge=1, le=MAX_FPS_PER_POD)] = 40


Seconds = Annotated[int, Field(ge=0, le=3600)]
Period = Annotated[int, Field(ge=1, le=1800)]
Percent = Annotated[int, Field(ge=1, le=1000)]


class ScaleUp(ApiModel):
    """How fast the pool may grow (the HorizontalPodAutoscaler's scaleUp rules and defaults)."""

    stabilization_window_seconds: Seconds = 0
    pods: Annotated[int, Field(ge=1, le=MAX_PODS)] | None = 4
    percent: Percent | None = 100
    period_seconds: Period = 15


class ScaleDown(ApiModel):
    """How fast the pool may shrink (the HorizontalPodAutoscaler's scaleDown rules and defaults)."""

    stabilization_window_seconds: Seconds = 300
    pods: Annotated[int, Field(ge=1, le=MAX_PODS)] | None = None
    percent: Percent | None = 100
    period_seconds: Period = 15


class Scaling(ApiModel):
    """The pool follows its measured CPU: pods = ceil(cores used / (CPU request x target))."""

    target_utilization_percent: Annotated[int, Field(ge=1, le=100)] = 70
    tolerance_percent: Annotated[int, Field(ge=0, le=100)] = 10
    scale_up: ScaleUp = ScaleUp()
    scale_down: ScaleDown = ScaleDown()


class IngestPool(ApiModel):
    min_pods: Annotated[int, Field(ge=0, le=MAX_PODS)] = 1
    max_pods: Annotated[int, Field(ge=1, le=MAX_PODS)] = 4
    pod_capacity: PodCapacity = PodCapacity()
    scaling: Scaling = Scaling()
    image: Annotated[str, Field(max_length=512)] | None = None
    resources: Resources | None = None

    @model_validator(mode="after")
    def _check_bounds(self) -> IngestPool:
        if self.min_pods > self.max_pods:
            raise ValueError(
                "minPods is greater than maxPods: lower spec.ingest.minPods or raise spec.ingest.maxPods"
            )
        return self


def _within(low: float, high: float, message: str) -> AfterValidator:
    """A bound the CRD states as a CEL rule with `message` (a schema `minimum` of 0.01 would let a
    whole 0 through: the API server compares integers with int64(minimum))."""

    def check(value: float) -> float:
        if not low <= value <= high:
            raise ValueError(message)
        return value

    return AfterValidator(check)


FALLBACK_FPS_OUT_OF_RANGE: Final = (
    f"fps must be at least {MIN_FALLBACK_FPS:g} and at most {MAX_FALLBACK_FPS:g}: set "
    "spec.inference.fallback.fps in that range, e.g. 0.2 (one frame every 5 s per camera)"
)
SCALE_FLOOR_OUT_OF_RANGE: Final = (
    f"scaleFloor must be at least {MIN_SCALE_FLOOR:g} and at most 1: set spec.uplink.scaleFloor in that "
    "range, e.g. 0.5 (half the width and height)"
)
MIN_FPS_OUT_OF_RANGE: Final = (
    f"minFps must be at least {MIN_UPLINK_FPS:g} and at most {MAX_FPS:g}: set spec.uplink.minFps in that "
    "range, e.g. 0.1 (one frame every 10 s)"
)


class Fallback(ApiModel):
    """While Triton cannot be reached, the ingest pod analyses frames itself with an onnxruntime copy of
    the same detector, at this reduced rate (its events carry "inference": "local")."""

    enabled: bool = False
    # Frames per second per camera.
    fps: Annotated[float, _within(MIN_FALLBACK_FPS, MAX_FALLBACK_FPS, FALLBACK_FPS_OUT_OF_RANGE)] = 0.2
    threads: Annotated[int, Field(ge=1, le=MAX_FALLBACK_THREADS)] = 1  # onnxruntime's threads


class Inference(ApiModel):
    triton_address: Annotated[str, Field(max_length=260, pattern=TRITON_ADDRESS_PATTERN)] | None = None
    model: Annotated[str, Field(max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")] | None = None
    fallback: Fallback | None = None


BANDWIDTH_NOT_QUANTITY: Final = (
    "bandwidth must be a quantity of bits per second, as in the kubernetes.io/egress-bandwidth "
    "annotation: set spec.uplink.bandwidth to e.g. 512k, 2M or 10M"
)
BANDWIDTH_OUT_OF_RANGE: Final = (
    f"bandwidth must be at least {MIN_UPLINK_BANDWIDTH} and at most {MAX_UPLINK_BANDWIDTH} bits per "
    "second: set spec.uplink.bandwidth in that range, e.g. 2M (M is mega; a lower-case m is milli)"
)


def _check_bandwidth(value: str) -> str:
    # The same two checks, and messages, as the CRD's CEL rules on spec.uplink.bandwidth.
    if not re.fullmatch(QUANTITY_PATTERN, value):
        raise ValueError(BANDWIDTH_NOT_QUANTITY)
    bits = quantity_value(value)
    if not quantity_value(MIN_UPLINK_BANDWIDTH) <= bits <= quantity_value(MAX_UPLINK_BANDWIDTH):
        raise ValueError(BANDWIDTH_OUT_OF_RANGE)
    return value


class Uplink(ApiModel):
    """The Site's link to Triton and the event sinks. Ingest pods keep what they send within
    headroom x bandwidth by lowering, in order, JPEG quality (to quality_floor), resolution (to
    scale_floor), then sampled fps camera by camera, lowest Camera priority first (to min_fps)."""

    bandwidth: Annotated[str, Field(max_length=32), AfterValidator(_check_bandwidth)]  # bits per second
    max_latency_milliseconds: (
        Annotated[int, Field(ge=MIN_UPLINK_LATENCY_MS, le=MAX_UPLINK_LATENCY_MS)] | None
    ) = None  # older frames are dropped (Stale), not sent
    headroom_percent: Annotated[int, Field(ge=MIN_HEADROOM_PERCENT, le=100)] = 90
    quality_floor: Annotated[int, Field(ge=MIN_QUALITY_FLOOR, le=MAX_QUALITY_FLOOR)] = 40
    scale_floor: Annotated[float, _within(MIN_SCALE_FLOOR, 1.0, SCALE_FLOOR_OUT_OF_RANGE)] = 0.5
    min_fps: Annotated[float, _within(MIN_UPLINK_FPS, MAX_FPS, MIN_FPS_OUT_OF_RANGE)] = 0.1

    @property
    def bits_per_second(self) -> float:
        return float(quantity_value(self.bandwidth))


class CameraDefaults(ApiModel):
    fps: Fps = 5
    classes: ClassNames = DEFAULT_CLASSES
    min_score: Score = 0.35


class HeaderSecretRef(ApiModel):
    """A request header whose value is a Secret's key (e.g. Authorization: Bearer ...)."""

    name: SecretName
    key: SecretKey = "token"
    header: Annotated[str, Field(max_length=64, pattern=HEADER_NAME_PATTERN)] = "Authorization"


class EventSink(ApiModel):
    name: DnsLabel
    type: Literal["webhook", "stdout"]
    url: Annotated[str, Field(max_length=MAX_URL)] | None = None
    header_secret_ref: HeaderSecretRef | None = None

    @model_validator(mode="after")
    def _check_url(self) -> EventSink:
        # Messages never quote the URL: a rejected one may hold a password.
        if self.type == "webhook" and self.url is None:
            raise ValueError(
                "a webhook sink needs a URL: set spec.eventSinks[].url to an http:// or https:// address"
            )
        if self.type != "webhook" and self.url is not None:
            raise ValueError(
                "only webhook sinks take a URL: remove spec.eventSinks[].url or set type to webhook"
            )
        if self.url is not None and url_has_credentials(self.url):
            raise ValueError("the URL embeds a user name or password: remove them from spec.eventSinks[].url")
        if self.url is not None and has_secret_query(self.url):
            raise ValueError(
                "the URL carries a credential in its query (token=, key=, ...): remove it from "
                "spec.eventSinks[].url and send it in a header from a Secret named by "
                "spec.eventSinks[].headerSecretRef"
            )
        if self.header_secret_ref is not None and self.type != "webhook":
            raise ValueError("only webhook sinks send headers: remove spec.eventSinks[].headerSecretRef")
        if self.url is not None and not re.fullmatch(WEBHOOK_URL_PATTERN, self.url):
            raise ValueError(
                "the webhook URL must start with http:// or https:// and name a host: "
                "fix spec.eventSinks[].url"
            )
        return self


class SiteSpec(ApiModel):
    display_name: Annotated[str, Field(min_length=1, max_length=128)]
    region: Annotated[str, Field(min_length=1, max_length=128)]
    placement: Placement | None = None
    ingest: IngestPool = IngestPool()
    inference: Inference | None = None
    uplink: Uplink | None = None  # None: no budget, frames are sent as they are
    camera_defaults: CameraDefaults = CameraDefaults()
    event_sinks: Annotated[tuple[EventSink, ...], Field(max_length=MAX_EVENT_SINKS)] = ()
    # Networks of addresses a camera may not otherwise use (loopback, link-local, cloud metadata) that
    # this Site's cameras and sinks may use after all, e.g. 127.0.0.0/8 for a relay on the node.
    allowed_camera_networks: Annotated[tuple[Network, ...], Field(max_length=MAX_ALLOWED_NETWORKS)] = ()

    @model_validator(mode="after")
    def _check_sink_names(self) -> SiteSpec:
        if has_duplicates(sink.name for sink in self.event_sinks):
            raise ValueError(
                "event sink names must be unique: rename or remove the duplicate entry in spec.eventSinks"
            )
        return self


class CameraCounts(ApiModel):
    total: Count
    ready: Count
    streaming: Count
    failed: Count


class PodCounts(ApiModel):
    desired: Count
    ready: Count


class ScalingStatus(ApiModel):
    """What the pool's size was last decided on."""

    cpu_cores: Annotated[float, Field(ge=0)] | None = None  # measured, the pool's pods together
    utilization_percent: Count | None = None  # of the ready pods' CPU requests
    declared_pods: Count  # what the Cameras' declared cost needs (the floor)
    recommended_pods: Count  # what the measured load needs, before stabilisation and rate limits
    reason: Annotated[str, Field(max_length=64)]
    last_scale_time: AwareDatetime | None = None
    moved_cameras: Count | None = None  # at the last resize
    min_moves: Count | None = None  # the fewest that resize could have moved


class UplinkCounts(ApiModel):
    bandwidth: Annotated[str, Field(max_length=32)]
    limited_cameras: Annotated[int, Field(ge=0)]


class SiteStatus(ApiModel):
    observed_generation: Generation | None = None
    conditions: Conditions = ()
    cameras: CameraCounts | None = None
    pods: PodCounts | None = None
    scaling: ScalingStatus | None = None
    uplink: UplinkCounts | None = None
