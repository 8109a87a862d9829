"""Decisions for one Site: its pool, its cameras' assignments and everyone's status. Pure.

Input is what the operator observes (the Site, its Cameras, the pool's pods, which Secrets
exist), output is what should be: the pool's manifests, each Camera's shard label and status,
the Site's status, and the Events worth telling. The handler compares the output with what it
last wrote and sends only the differences.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pantau.builders import names
from pantau.builders.pool import PoolSettings, SiteRef, build_pool
from pantau.contract import LABEL_SHARD
from pantau.models.camera import CameraSpec
from pantau.models.conditions import Condition, find_condition, set_condition
from pantau.models.site import SiteSpec
from pantau.reconcile.assignment import CameraLoad, assign, desired_pods

JSON = dict[str, Any]
FULL_HD = 1920 * 1080


@dataclass(frozen=True)
class ObjectFacts:
    """What the handlers index of a Site or Camera: identity, spec (None if invalid), status."""

    namespace: str
    name: str
    uid: str
    generation: int
    spec: Any  # SiteSpec | CameraSpec | None
    error: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    status: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    kind: str  # "Site" or "Camera"
    name: str
    type: str  # Normal / Warning
    reason: str
    message: str


@dataclass(frozen=True)
class SitePlan:
    children: list[JSON]
    camera_labels: dict[str, str | None]  # camera name -> shard label (None: no label)
    camera_status: dict[str, JSON]
    site_status: JSON
    events: list[Event]


def camera_cost(spec: CameraSpec, site: SiteSpec) -> float:
    """fps x pixels, in 1080p frames per second."""
    fps = spec.sampling.fps if spec.sampling and spec.sampling.fps else site.camera_defaults.fps
    res = spec.source.resolution
    pixels = res.width * res.height if res else FULL_HD
    return float(fps) * pixels / FULL_HD


def secrets_of(spec: CameraSpec) -> list[str]:
    """The Secrets an ingest pod reads for this camera: credentials and a TLS CA bundle."""
    src = spec.source
    found = [src.credentials_secret_ref.name] if src.credentials_secret_ref else []
    if src.tls and src.tls.ca_secret_ref:
        found.append(src.tls.ca_secret_ref.name)
    return found


def _condition(type_: str, ok: bool, reason: str, message: str, generation: int, now: datetime) -> Condition:
    return Condition(
        type=type_,
        status="True" if ok else "False",
        reason=reason,
        message=message,
        last_transition_time=now,
        observed_generation=generation,
    )


def _conditions(observed: Mapping[str, Any], wanted: Sequence[Condition], now: datetime) -> list[Condition]:
    current = [Condition.model_validate(c) for c in observed.get("conditions") or []]
    for c in wanted:
        current = set_condition(current, c, now)
    return current


def _dump(conditions: Sequence[Condition]) -> list[JSON]:
    return [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in conditions]


FACTS_REFRESH_SECONDS = 60


def _facts(report: Mapping[str, Any], observed: Mapping[str, Any], now: datetime) -> JSON:
    """Counters from an ingest pod's report. They change with every frame, so they are written
    only when streaming starts or stops, or when the written ones are a minute old: status
    writes stay rare while `kubectl get` still shows live-enough numbers."""
    streaming = report.get("state") == "Streaming"
    last = observed.get("lastFrameTime")
    stale = last is None or (
        now - datetime.fromisoformat(str(last).replace("Z", "+00:00"))
    ).total_seconds() > (FACTS_REFRESH_SECONDS)
    if observed.get("streaming") == streaming and (not streaming or not stale):
        keys = ("streaming", "fps", "framesProcessed", "framesDropped", "lastFrameTime", "detectionCounts")
        return {k: observed[k] for k in keys if k in observed}
    facts: JSON = {
        "streaming": streaming,
        "fps": round(float(report.get("fps") or 0.0), 2),
        "framesProcessed": int(report.get("frames_processed") or 0),
        "framesDropped": int(sum((report.get("frames_dropped") or {}).values())),
        "detectionCounts": dict(report.get("detections") or {}),
    }
    if report.get("last_frame_time"):
        stamp = datetime.fromisoformat(str(report["last_frame_time"]).replace("Z", "+00:00"))
        facts["lastFrameTime"] = stamp.replace(microsecond=0).isoformat().replace("+00:00", "Z")
    return facts


def camera_status_without_site(camera: ObjectFacts, site_name: str, now: datetime) -> JSON:
    """Status of a Camera whose Site does not exist (or of an invalid Camera)."""
    if camera.spec is None:
        reason, message = "InvalidSpec", camera.error or "the spec is invalid"
    else:
        reason, message = "SiteNotFound", f"Site {site_name!r} does not exist in namespace {camera.namespace}"
    conditions = _conditions(
        camera.status,
        [
            _condition("Assigned", False, reason, message, camera.generation, now),
            _condition("Ready", False, reason, message, camera.generation, now),
        ],
        now,
    )
    return {"observedGeneration": camera.generation, "conditions": _dump(conditions), "reason": reason}


def plan_site(
    site: ObjectFacts,
    cameras: Sequence[ObjectFacts],
    pods_ready: Mapping[str, bool],
    secrets: frozenset[str],
    settings: PoolSettings,
    now: datetime,
    reports: Mapping[str, Mapping[str, Any]] | None = None,
) -> SitePlan:
    """Everything one reconcile pass of a Site decides.

    `reports` are the ingest pods' /status entries by camera name (pulled by the handler): they
    say whether a camera streams, and why not (AuthFailed, Timeout, ...)."""
    reports = reports or {}
    spec: SiteSpec = site.spec
    cameras = sorted(cameras, key=lambda c: c.name)
    valid = [c for c in cameras if c.spec is not None]
    active = [c for c in valid if not c.spec.paused]
    loads = [
        CameraLoad(key=c.name, cost=camera_cost(c.spec, spec), dedicated=c.spec.dedicated_pod) for c in active
    ]
    pool = spec.ingest
    shards = desired_pods(
        loads, pool.pod_capacity.cameras, float(pool.pod_capacity.fps), pool.min_pods, pool.max_pods
    )
    assignment = (
        assign(loads, shards, pool.pod_capacity.cameras, float(pool.pod_capacity.fps)) if shards else None
    )
    pool_name = names.pool_name(site.name)
    secret_names = sorted({secret for c in active for secret in secrets_of(c.spec)})
    owner = SiteRef(name=site.name, namespace=site.namespace, uid=site.uid)
    children = build_pool(owner, spec, shards, secret_names, settings)

    labels: dict[str, str | None] = {}
    statuses: dict[str, JSON] = {}
    events: list[Event] = []
    ready_count = failed = 0
    for cam in cameras:
        if cam.spec is None:
            statuses[cam.name] = camera_status_without_site(cam, site.name, now)
            labels[cam.name] = None
            failed += 1
            continue
        gen = cam.generation
        pod = None
        if cam.spec.paused or assignment is None:
            reason = "Paused" if cam.spec.paused else "NoPods"
            message = (
                "paused: no pod reads it" if cam.spec.paused else "the Site's pool has no pods (maxPods 0?)"
            )
            wanted = [
                _condition("Assigned", False, reason, message, gen, now),
                _condition("Ready", False, reason, message, gen, now),
            ]
        else:
            pod = f"{pool_name}-{assignment.by_camera[cam.name]}"
            assigned = _condition("Assigned", True, "Assigned", f"assigned to pod {pod}", gen, now)
            missing = [n for n in secrets_of(cam.spec) if n not in secrets]
            if missing:
                reason, message, ok = "SecretNotFound", f"Secret {missing[0]!r} does not exist", False
            elif not pods_ready.get(pod, False):
                reason, message, ok = "PodNotReady", f"ingest pod {pod} is not ready yet", False
            else:
                reason, message, ok = "PodReady", f"ingest pod {pod} is ready", True
            wanted = [assigned]
            report = reports.get(cam.name) if ok else None
            if report is not None:
                streaming = report.get("state") == "Streaming"
                if not streaming:
                    reason = report.get("reason") or "NotStreaming"
                    message = (
                        report.get("message") or f"camera is {report.get('state', 'not streaming').lower()}"
                    )
                    ok = False
                    wanted.append(_condition("Streaming", False, reason, message, gen, now))
                else:
                    wanted.append(
                        _condition("Streaming", True, "Streaming", f"frames arrive at pod {pod}", gen, now)
                    )
                    reason, message = "Streaming", f"frames arrive at pod {pod}"
                    if report.get("reason"):  # frames arrive but are not analysed, e.g. TritonUnavailable
                        reason, message, ok = (
                            report["reason"],
                            report.get("message") or report["reason"],
                            False,
                        )
            wanted.append(_condition("Ready", ok, reason, message, gen, now))
            ready_count += ok
            failed += reason == "SecretNotFound"
            previous = cam.labels.get(LABEL_SHARD)
            if previous and previous != pod:
                events.append(
                    Event("Camera", cam.name, "Normal", "Reassigned", f"moved from {previous} to {pod}")
                )
        conditions = _conditions(cam.status, wanted, now)
        old_ready = find_condition(
            [Condition.model_validate(c) for c in cam.status.get("conditions") or []], "Ready"
        )
        new_ready = find_condition(conditions, "Ready")
        # Problems the user must fix are told once, when they appear.
        if (
            new_ready is not None
            and new_ready.reason in ("SecretNotFound", "InvalidSpec")
            and (old_ready is None or old_ready.reason != new_ready.reason)
        ):
            events.append(Event("Camera", cam.name, "Warning", new_ready.reason, new_ready.message))
        status: JSON = dict(cam.status)
        status.update(observedGeneration=gen, conditions=_dump(conditions), shard=pod, pod=pod)
        report = reports.get(cam.name) if pod else None
        if report is not None:
            status.update(_facts(report, cam.status, now))
        status["reason"] = (
            None if new_ready and new_ready.status == "True" else (new_ready.reason if new_ready else None)
        )
        statuses[cam.name] = {k: v for k, v in status.items() if v is not None}
        labels[cam.name] = pod

    pods_up = sum(1 for i in range(shards) if pods_ready.get(f"{pool_name}-{i}", False))
    pool_ok = pods_up == shards
    overloaded = assignment is not None and assignment.overloaded
    site_conditions = _conditions(
        site.status,
        [
            _condition(
                "PoolReady",
                pool_ok,
                "PoolReady" if pool_ok else "PoolNotReady",
                f"{pods_up}/{shards} ingest pods ready",
                site.generation,
                now,
            ),
            _condition(
                "Overloaded",
                overloaded,
                "OverCapacity" if overloaded else "WithinCapacity",
                "cameras exceed the pool's capacity at maxPods" if overloaded else "within capacity",
                site.generation,
                now,
            ),
            _condition(
                "Ready",
                pool_ok,
                "PoolReady" if pool_ok else "PoolNotReady",
                f"{ready_count}/{len(cameras)} cameras ready",
                site.generation,
                now,
            ),
        ],
        now,
    )
    old = find_condition(
        [Condition.model_validate(c) for c in site.status.get("conditions") or []], "Overloaded"
    )
    if overloaded and (old is None or old.status != "True"):
        events.append(
            Event(
                "Site",
                site.name,
                "Warning",
                "OverCapacity",
                f"{len(active)} cameras need more than {pool.max_pods} pods",
            )
        )
    site_status = {
        "observedGeneration": site.generation,
        "conditions": _dump(site_conditions),
        "cameras": {
            "total": len(cameras),
            "ready": ready_count,
            "streaming": sum(1 for c in cameras if c.status.get("streaming")),
            "failed": failed,
        },
        "pods": {"desired": shards, "ready": pods_up},
    }
    return SitePlan(children, labels, statuses, site_status, events)
