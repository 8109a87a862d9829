"""Camera spec and status, mirroring crds/cameras.pantau.io.yaml (tests/test_models.py keeps them in sync).

The CEL rules of the CRD are repeated here as validators, so the operator rejects what the API server
would (objects written before a rule existed, or tests that bypass the server)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Final, Literal

from pydantic import AfterValidator, Field, model_validator

from pantau.models.conditions import ApiModel, Conditions, Generation
from pantau.models.limits import (
    CLASS_NAME_PATTERN,
    CREDENTIALS_IN_URL_PATTERN,
    DATA_KEY_PATTERN,
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    MAX_CLASSES,
    MAX_FPS,
    MAX_RESOLUTION,
    MAX_SESSIONS,
    MAX_URL,
    MIN_RESOLUTION,
    SCHEMES,
)
from pantau.redact import has_secret_query

_CREDENTIALS_IN_URL: Final = re.compile(CREDENTIALS_IN_URL_PATTERN)
SUPPORTED_SCHEMES: Final = tuple(f"{scheme}://" for scheme in SCHEMES)
PROTOCOL_SCHEMES: Final[dict[str, tuple[str, ...]]] = {
    "rtsp": ("rtsp://",),
    "rtsps": ("rtsps://",),
    "http-mjpeg": ("http://", "https://"),
    "http-snapshot": ("http://", "https://"),
    "file": ("file://",),
}
TLS_SCHEMES: Final = ("rtsps://", "https://")


def url_has_credentials(url: str) -> bool:
    return _CREDENTIALS_IN_URL.match(url) is not None


def _check_fps(value: float) -> float:
    if not 0 < value <= MAX_FPS:
        raise ValueError(
            f"fps must be above 0 and at most {MAX_FPS:g}: set it in that range, e.g. 5, "
            "or a fraction such as 0.2 for one frame every 5 seconds"
        )
    return value


def _check_secret_name(value: str) -> str:
    if not re.fullmatch(DNS_SUBDOMAIN_PATTERN, value):
        raise ValueError(
            "not a valid Secret name: use lower-case letters, digits, '-' and '.', "
            "starting and ending with a letter or digit"
        )
    return value


def _check_secret_key(value: str) -> str:
    if not re.fullmatch(DATA_KEY_PATTERN, value):
        raise ValueError("not a valid Secret key: give a non-empty key of letters, digits, '-', '_' or '.'")
    return value


def has_duplicates(values: Iterable[str]) -> bool:
    seen = list(values)
    return len(set(seen)) != len(seen)


def _check_unique(values: tuple[str, ...]) -> tuple[str, ...]:
    if has_duplicates(values):
        raise ValueError("each entry may appear only once: remove the duplicates")
    return values


Fps = Annotated[float, AfterValidator(_check_fps)]
Score = Annotated[float, Field(ge=0, le=1)]
DnsLabel = Annotated[str, Field(max_length=63, pattern=DNS_LABEL_PATTERN)]
SecretName = Annotated[str, Field(max_length=253), AfterValidator(_check_secret_name)]
SecretKey = Annotated[str, Field(max_length=253), AfterValidator(_check_secret_key)]
ClassName = Annotated[str, Field(max_length=32, pattern=CLASS_NAME_PATTERN)]
ClassNames = Annotated[tuple[ClassName, ...], Field(max_length=MAX_CLASSES), AfterValidator(_check_unique)]

SourceProtocol = Literal["rtsp", "rtsps", "http-mjpeg", "http-snapshot", "file"]
Transport = Literal["tcp", "udp"]


class SiteRef(ApiModel):
    name: Annotated[str, Field(max_length=253)]


class CredentialsSecretRef(ApiModel):
    name: SecretName
    username_key: SecretKey = "username"
    password_key: SecretKey = "password"  # noqa: S105 (the name of a key, not a password)


class CaSecretRef(ApiModel):
    name: SecretName
    key: SecretKey = "ca.crt"


class SourceTLS(ApiModel):
    insecure_skip_verify: bool = False
    server_name: Annotated[str, Field(max_length=253)] | None = None
    ca_secret_ref: CaSecretRef | None = None


class Resolution(ApiModel):
    width: Annotated[int, Field(ge=MIN_RESOLUTION, le=MAX_RESOLUTION)]
    height: Annotated[int, Field(ge=MIN_RESOLUTION, le=MAX_RESOLUTION)]


class Source(ApiModel):
    url: Annotated[str, Field(max_length=MAX_URL)]
    protocol: SourceProtocol
    transport: Transport | None = None
    resolution: Resolution | None = None
    max_sessions: Annotated[int, Field(ge=1, le=MAX_SESSIONS)] = 1
    credentials_secret_ref: CredentialsSecretRef | None = None
    tls: SourceTLS | None = None

    @model_validator(mode="after")
    def _check_url_and_options(self) -> Source:
        # Messages never quote the URL: a rejected one may hold a password.
        if url_has_credentials(self.url):
            raise ValueError(
                "the URL embeds a user name or password (user:pass@ or user@): remove them from "
                "spec.source.url and put them in a Secret named by spec.source.credentialsSecretRef"
            )
        if has_secret_query(self.url):
            raise ValueError(
                "the URL carries a credential in its query (password=, token=, key=, ...): remove it from "
                "spec.source.url and put the login in a Secret named by spec.source.credentialsSecretRef"
            )
        if not self.url.startswith(SUPPORTED_SCHEMES):
            raise ValueError(
                "unsupported URL scheme: spec.source.url must start with rtsp://, rtsps://, http://, "
                "https:// or file://"
            )
        schemes = PROTOCOL_SCHEMES[self.protocol]
        if not self.url.startswith(schemes):
            raise ValueError(
                f"the URL scheme does not match protocol {self.protocol}: spec.source.url must start "
                f"with {' or '.join(schemes)}, or set spec.source.protocol to match the URL"
            )
        if self.transport is not None and self.protocol not in ("rtsp", "rtsps"):
            raise ValueError(
                "transport applies to RTSP only: remove spec.source.transport or set "
                "spec.source.protocol to rtsp or rtsps"
            )
        if self.tls is not None and not self.url.startswith(TLS_SCHEMES):
            raise ValueError(
                "tls applies to rtsps:// and https:// URLs only: remove spec.source.tls or use a TLS URL"
            )
        return self


class Sampling(ApiModel):
    fps: Fps | None = None


class Detection(ApiModel):
    classes: ClassNames | None = None
    min_score: Score | None = None


class CameraSpec(ApiModel):
    site_ref: SiteRef
    paused: bool = False
    dedicated_pod: bool = False
    source: Source
    sampling: Sampling | None = None
    detection: Detection | None = None


class CameraStatus(ApiModel):
    observed_generation: Generation | None = None
    conditions: Conditions = ()
    shard: Annotated[str, Field(max_length=63)] | None = None
    pod: Annotated[str, Field(max_length=253)] | None = None
    streaming: bool | None = None
    reason: Annotated[str, Field(max_length=64, pattern=r"^[A-Z][A-Za-z0-9]*$")] | None = None
    fps: Annotated[float, Field(ge=0)] | None = None
    frames_processed: Annotated[int, Field(ge=0)] | None = None
    frames_dropped: Annotated[int, Field(ge=0)] | None = None
    last_frame_time: datetime | None = None
    detection_counts: (
        Annotated[dict[str, Annotated[int, Field(ge=0)]], Field(max_length=MAX_CLASSES)] | None
    ) = None
