"""The operator's one typed settings object, read once from PANTAU_* variables at start-up."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pantau.builders.pool import PoolSettings
from pantau.models.limits import MODEL_CLASSES


class OperatorSettings(BaseSettings):
    """Everything tunable about the operator; tests pass small timings through these fields."""

    model_config = SettingsConfigDict(env_prefix="PANTAU_", frozen=True, extra="ignore")

    namespaces: tuple[str, ...] = Field(
        default=(), description="Namespaces to watch; empty = all (cluster-wide)."
    )
    ingest_image: str = Field(default="ghcr.io/pantau/pantau:0.1.0", description="Default ingest pod image.")
    ingest_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="imagePullPolicy of the ingest pods."
    )
    triton_address: str = Field(default="triton.pantau.svc:8001", description="Default Triton gRPC address.")
    model: str = Field(default="yolox", description="Default detector model name.")
    otlp_endpoint: str | None = Field(default=None, description="OTLP endpoint handed to ingest pods.")
    ingest_service_name: str = Field(
        default="pantau-ingest", min_length=1, description="OTEL_SERVICE_NAME of the ingest pods."
    )
    ingest_otel_env: dict[str, str] = Field(
        default_factory=dict,
        description="More OTEL_* variables for the ingest pods (sampler, resource attributes, ...).",
    )
    field_manager: str = Field(default="pantau", description="Server-side apply field manager.")
    resync_interval: float = Field(
        default=5.0, gt=0, description="Seconds between drift-repair passes per Site."
    )
    debounce: float = Field(default=1.0, ge=0, description="Seconds to gather Camera changes into one pass.")
    settle_max: float = Field(
        default=20.0, ge=0, description="Longest wait for a Site's Cameras to stop arriving before a pass."
    )
    watch_server_timeout: int = Field(default=300, gt=0, description="Server-side watch timeout, seconds.")
    watch_client_timeout: int = Field(default=330, gt=0, description="Client-side watch timeout, seconds.")
    inactivity_timeout: float = Field(
        default=120.0, gt=0, description="Restart a watch that brought nothing for this long (silent stalls)."
    )
    request_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds one API request may take: a silently dead connection is left.",
    )
    liveness_port: int = Field(default=8080, ge=1, le=65535, description="Port of the /healthz endpoint.")
    liveness_host: str = Field(default="0.0.0.0", description="Listen address of the /healthz endpoint.")
    peering: bool = Field(
        default=False,
        description="Kopf peering (one active operator among replicas); needs the peering CRDs.",
    )
    peering_name: str = Field(default="pantau", description="The ClusterKopfPeering (or KopfPeering) object.")
    peering_lifetime: int = Field(
        default=15, ge=5, description="Seconds a silent peer counts as alive: a standby takes over after it."
    )
    secret_refresh: float = Field(
        default=60.0,
        gt=0,
        description="Seconds a Secret seen to exist is trusted before it is checked again.",
    )
    api_concurrency: int = Field(default=8, ge=1, description="API requests the operator keeps in flight.")
    status_networks: tuple[str, ...] = Field(
        default=(),
        description="Networks (CIDRs) of ingest pods whose /status the operator may poll; empty = any.",
    )
    admission_port: int = Field(
        default=0, ge=0, le=65535, description="Port of the validating webhook (HTTPS); 0: not served."
    )
    admission_host: str = Field(default="0.0.0.0", description="Listen address of the validating webhook.")
    admission_cert_dir: str = Field(
        default="/etc/pantau/webhook", description="Directory holding the webhook's tls.crt and tls.key."
    )
    file_source_dirs: tuple[str, ...] = Field(
        default=(), description="Directories (absolute) file:// camera sources may read; empty: none."
    )
    model_classes: tuple[str, ...] = Field(
        default=MODEL_CLASSES, min_length=1, description="Class names the detector reports."
    )
    status_timeout: float = Field(
        default=5.0, gt=0, description="Seconds one ingest pod's /status may take, whole body included."
    )
    analytics_interval: float | None = Field(
        default=None,
        gt=0,
        description="Seconds of the interval whose zone and line counts Cameras' status shows; unset: 300.",
    )
    fallback_model_url: str | None = Field(
        default=None,
        description="Where ingest pods of a Site with spec.inference.fallback download the detector's ONNX "
        "file (the chart's triton.model.url); unset: they cannot run the fallback.",
    )
    fallback_model_sha256: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$", description="SHA-256 of that file (triton.model.sha256)."
    )
    triton_deployment: str = Field(
        default="",
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$",
        description="The Triton Deployment the operator scales, as namespace/name; empty: none.",
    )
    triton_min_replicas: int = Field(default=1, ge=0, description="Fewest Triton replicas the operator sets.")
    triton_max_replicas: int = Field(default=4, ge=1, description="Most Triton replicas the operator sets.")
    triton_target: float = Field(
        default=0.7, gt=0, le=1, description="Load per Triton replica to aim at (queue + compute time ratio)."
    )
    triton_instances: int = Field(
        default=1, ge=1, description="Model instances one Triton replica runs (what its load is divided by)."
    )
    triton_scale_interval: float = Field(
        default=15.0, gt=0, description="Seconds between Triton scaling passes (the HPA's sync period)."
    )
    triton_metrics_port: int = Field(default=8002, ge=1, le=65535, description="Triton's metrics port.")

    @field_validator("file_source_dirs")
    @classmethod
    def _absolute(cls, dirs: tuple[str, ...]) -> tuple[str, ...]:
        relative = [d for d in dirs if not d.startswith("/")]
        if relative:
            raise ValueError(f"PANTAU_FILE_SOURCE_DIRS takes absolute directories: fix {', '.join(relative)}")
        return dirs

    @field_validator("ingest_otel_env")
    @classmethod
    def _otel_only(cls, env: dict[str, str]) -> dict[str, str]:
        wrong = sorted(k for k in env if not k.startswith("OTEL_") or k == "OTEL_SERVICE_NAME")
        if wrong:
            raise ValueError(
                f"PANTAU_INGEST_OTEL_ENV may hold OTEL_* variables only (the service name has its own "
                f"setting, PANTAU_INGEST_SERVICE_NAME): remove {', '.join(wrong)}"
            )
        return env

    @model_validator(mode="after")
    def _triton_bounds(self) -> OperatorSettings:
        if self.triton_min_replicas > self.triton_max_replicas:
            raise ValueError(
                f"PANTAU_TRITON_MIN_REPLICAS ({self.triton_min_replicas}) is above "
                f"PANTAU_TRITON_MAX_REPLICAS ({self.triton_max_replicas})"
            )
        return self

    def may_poll(self, address: str) -> bool:
        if not self.status_networks:
            return True
        ip = ipaddress.ip_address(address)
        return any(ip in ipaddress.ip_network(n) for n in self.status_networks)

    def pool(self) -> PoolSettings:
        return PoolSettings(
            analytics_interval=self.analytics_interval,
            fallback_model_url=self.fallback_model_url,
            fallback_model_sha256=self.fallback_model_sha256,
            default_image=self.ingest_image,
            triton_address=self.triton_address,
            model=self.model,
            otlp_endpoint=self.otlp_endpoint,
            service_name=self.ingest_service_name,
            otel_env=self.ingest_otel_env,
            image_pull_policy=self.ingest_pull_policy,
        )
