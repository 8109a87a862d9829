"""Settings of an ingest pod, from its environment (set by the pool's StatefulSet), read once."""

from __future__ import annotations

import json
from typing import Any

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pantau.models.site import CameraDefaults, EventSink


class IngestSettings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    pod_name: str = Field(validation_alias=AliasChoices("POD_NAME"))
    namespace: str = Field(validation_alias=AliasChoices("POD_NAMESPACE"))
    pod_ip: str = Field(default="127.0.0.1", validation_alias=AliasChoices("POD_IP"))
    site: str = Field(validation_alias=AliasChoices("PANTAU_SITE"))
    triton_address: str = Field(validation_alias=AliasChoices("PANTAU_TRITON_ADDRESS"))
    model: str = Field(default="yolox", validation_alias=AliasChoices("PANTAU_MODEL"))
    port: int = Field(default=8080, validation_alias=AliasChoices("PANTAU_INGEST_PORT"))
    camera_defaults: CameraDefaults = Field(
        default_factory=CameraDefaults, validation_alias=AliasChoices("PANTAU_CAMERA_DEFAULTS")
    )
    event_sinks: tuple[EventSink, ...] = Field(
        default=(), validation_alias=AliasChoices("PANTAU_EVENT_SINKS")
    )
    # Tunables (tests shorten them).
    queue_size: int = Field(default=2, ge=1, validation_alias=AliasChoices("PANTAU_INGEST_QUEUE"))
    read_timeout: float = Field(
        default=10.0, gt=0, validation_alias=AliasChoices("PANTAU_INGEST_READ_TIMEOUT")
    )
    backoff_base: float = Field(
        default=1.0, gt=0, validation_alias=AliasChoices("PANTAU_INGEST_BACKOFF_BASE")
    )
    backoff_cap: float = Field(default=30.0, gt=0, validation_alias=AliasChoices("PANTAU_INGEST_BACKOFF_CAP"))
    auth_backoff: float = Field(
        default=60.0, gt=0, validation_alias=AliasChoices("PANTAU_INGEST_AUTH_BACKOFF")
    )
    secret_refresh: float = Field(
        default=60.0, gt=0, validation_alias=AliasChoices("PANTAU_INGEST_SECRET_REFRESH")
    )
    max_batch: int = Field(default=8, ge=1, validation_alias=AliasChoices("PANTAU_INGEST_MAX_BATCH"))

    @field_validator("camera_defaults", "event_sinks", mode="before")
    @classmethod
    def _json(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    @property
    def shard(self) -> str:
        """Cameras assigned to this pod carry pantau.io/shard=<pod name>."""
        return self.pod_name
