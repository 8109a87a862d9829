"""Observed facts and ingest reports, as data, for the pure planners' tests."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from pantau.builders.pool import PoolSettings
from pantau.contract import CameraStatusReport
from pantau.models.camera import CameraSpec
from pantau.models.site import SiteSpec
from pantau.reconcile.facts import ObjectFacts, PodFacts, SecretFacts, SiteObservation

NOW: Final = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
LONG_AGO: Final = "2026-11-29T09:00:00Z"  # a pool created an hour before NOW
POOL: Final = "alun-ingest"
SETTINGS: Final = PoolSettings(
    default_image="pantau:test", triton_address="triton:8001", model="yolox", otlp_endpoint=None
)


def site(**ingest: Any) -> ObjectFacts:
    spec = SiteSpec.model_validate({"displayName": "Alun-alun", "region": "Kota Bengkulu", "ingest": ingest})
    return ObjectFacts("ns", "alun", "site-uid", 3, spec)


def cam(
    name: str,
    fps: float = 5,
    secret: str | None = None,
    status: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
    url: str | None = None,
    max_sessions: int = 1,
    tls: dict[str, Any] | None = None,
    **spec: Any,
) -> ObjectFacts:
    source: dict[str, Any] = {
        "url": url or f"rtsp://10.0.0.1/{name}",
        "protocol": "rtsps" if (url or "").startswith("rtsps://") else "rtsp",
        "maxSessions": max_sessions,
    }
    if tls is not None:
        source["tls"] = tls
    if secret:
        source["credentialsSecretRef"] = {"name": secret}
    body = {"siteRef": {"name": "alun"}, "source": source, "sampling": {"fps": fps}, **spec}
    return ObjectFacts(
        "ns",
        name,
        f"uid-{name}",
        1,
        CameraSpec.model_validate(body),
        labels=labels or {},
        status=status or {},
    )


def observe(
    the_site: ObjectFacts,
    cameras: list[ObjectFacts],
    ready: dict[str, bool] | None = None,
    secrets: frozenset[str] | Mapping[str, SecretFacts] = frozenset(),
    pool_created: str | None = LONG_AGO,
) -> SiteObservation:
    """`ready`: pod name -> readiness (each gets an IP); `secrets`: names of consenting Secrets, or
    each Secret's facts; `pool_created` None: no StatefulSet seen."""
    pods = {name: PodFacts(ok, f"10.1.0.{i}") for i, (name, ok) in enumerate(sorted((ready or {}).items()))}
    pools = {POOL: pool_created} if pool_created is not None else {}
    facts = secrets if isinstance(secrets, Mapping) else {n: SecretFacts(consent=True) for n in secrets}
    return SiteObservation(the_site, tuple(cameras), pods, pools, facts)


def report(name: str, state: str = "Streaming", **fields: Any) -> CameraStatusReport:
    return CameraStatusReport.model_validate(
        {"namespace": "ns", "name": name, "state": state, "fps": 0.0, "url": "rtsp://10.0.0.1/x", **fields}
    )


def ready_condition(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Ready")
