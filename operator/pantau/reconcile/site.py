"""Decisions for one Site: its pool, its cameras' assignments and everyone's status. Pure.

Input is what the operator observes (a SiteObservation: the Site, its Cameras, the pods, pools and
Secrets of its namespace) and the ingest pods' reports; output is a SitePlan, what should be: the
pool's manifests, each Camera's shard label and status, the Site's status and the Events worth
telling. The handler writes what differs from what it observed or last wrote, and decides nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from pantau.builders import names
from pantau.builders.pool import DEFAULT_RESOURCES, PoolSettings, SiteRef, build_pool
from pantau.contract import LABEL_SHARD, CameraStatusReport
from pantau.models.camera import CameraSpec
from pantau.models.site import SiteSpec
from pantau.reconcile.assignment import CameraLoad, assign, desired_pods
from pantau.reconcile.camera import CameraPlan, PoolView, plan_camera, secrets_of
from pantau.reconcile.facts import JSON, Event, ObjectFacts, SiteObservation, event
from pantau.reconcile.pool_size import Memory, Sizing, cpu_request, scaling_status, size
from pantau.reconcile.reports import pool_pods
from pantau.reconcile.scaling import min_moves
from pantau.reconcile.sessions import over_budget
from pantau.reconcile.status import Verdict, condition, dump, merge, observed_condition, observed_conditions

FULL_HD = 1920 * 1080


@dataclass(frozen=True)
class SitePlan:
    children: list[JSON]  # the pool's objects, in apply order
    unseen: frozenset[tuple[str, str]]  # (kind, name) of children no watch shows: write even if just written
    camera_labels: dict[str, str | None]  # camera name -> shard label (None: no label)
    camera_status: dict[str, JSON]  # camera name -> status to write now (a Camera whose pod is coming waits)
    site_status: JSON
    events: list[Event]
    memory: Memory | None = None  # the pool's scaler, to keep for the next pass


def camera_cost(spec: CameraSpec, site: SiteSpec) -> float:
    """fps x pixels, in 1080p frames per second."""
    fps = spec.sampling.fps if spec.sampling and spec.sampling.fps else site.camera_defaults.fps
    res = spec.source.resolution
    pixels = res.width * res.height if res else FULL_HD
    return float(fps) * pixels / FULL_HD


def sink_secrets(spec: SiteSpec) -> list[str]:
    """The Secrets the Site's webhook sinks read their header from."""
    return [sink.header_secret_ref.name for sink in spec.event_sinks if sink.header_secret_ref is not None]


def plan_site(
    observed: SiteObservation,
    settings: PoolSettings,
    now: datetime,
    reports: Mapping[str, CameraStatusReport] | None = None,
    cores: float | None = None,
    memory: Memory | None = None,
) -> SitePlan:
    """Everything one reconcile pass of a Site decides.

    `reports` are the ingest pods' reports by camera name (see reconcile.reports): they say whether
    a camera streams, and why not (AuthFailed, Timeout, ...). `cores` is the CPU the pool's pods
    reported together (None: none reported), `memory` what the last pass kept of the pool's scaler."""
    site = observed.site
    if site.spec is None:
        return plan_invalid_site(site, now)
    cameras = sorted(observed.cameras, key=lambda c: c.name)
    pool, sizing = size_pool(observed, cameras, cores, memory, now)
    # Only Secrets that exist and consent to this Site: no pool Role ever names any other.
    named = {s for c in _active(cameras) if c.name not in pool.over_budget for s in secrets_of(c.spec)}
    named |= set(sink_secrets(site.spec))
    secret_names = sorted(
        s for s in named if s in pool.secrets and pool.secrets[s].refusal(s, site.name) is None
    )
    owner = SiteRef(name=site.name, namespace=site.namespace, uid=site.uid)
    plans = {c.name: plan_camera(c, pool, (reports or {}).get(c.name), now) for c in cameras}
    status, told = site_status(site, cameras, plans, pool, now)
    scaled, told_scaled = _scaling(site, cameras, pool, sizing, memory, now)
    status["scaling"] = scaled
    return SitePlan(
        children=build_pool(owner, site.spec, pool.shards, secret_names, settings, _urls(cameras, pool)),
        unseen=frozenset() if pool.created is not None else frozenset({("StatefulSet", pool.name)}),
        camera_labels={name: p.label for name, p in plans.items()},
        camera_status={name: p.status for name, p in plans.items() if p.status is not None},
        site_status=status,
        events=[e for p in plans.values() for e in p.events] + told + told_scaled,
        memory=sizing.memory,
    )


def plan_invalid_site(site: ObjectFacts, now: datetime) -> SitePlan:
    """A Site whose spec does not parse: not ready, saying why; its pool and Cameras are left as
    they are until the spec is fixed."""
    wanted = condition("Ready", Verdict(False, "InvalidSpec", site.error or ""), site.generation, now)
    ready = observed_condition(site.status, "Ready")
    conditions = merge([ready] if ready else [], [wanted], now)
    status = {"observedGeneration": site.generation, "conditions": dump(conditions)}
    return SitePlan([], frozenset(), {}, {}, status, [])


def size_pool(
    observed: SiteObservation,
    cameras: Sequence[ObjectFacts],
    cores: float | None,
    memory: Memory | None,
    now: datetime,
) -> tuple[PoolView, Sizing]:
    """How many ingest pods the Site needs (pool_size.size: declared cost, then measured CPU), and
    which pod reads each active Camera."""
    spec: SiteSpec = observed.site.spec
    refused = over_budget(_active(cameras))
    loads = [
        CameraLoad(key=c.name, cost=camera_cost(c.spec, spec), dedicated=c.spec.dedicated_pod)
        for c in _active(cameras)
        if c.name not in refused
    ]
    capacity = spec.ingest.pod_capacity
    declared = desired_pods(
        loads, capacity.cameras, float(capacity.fps), spec.ingest.min_pods, spec.ingest.max_pods
    )
    name = names.pool_name(observed.site.name)
    pods = pool_pods(name, observed.pods)
    ready = sum(1 for pod in pods.values() if pod.ready)
    request = cpu_request(spec, DEFAULT_RESOURCES)
    sizing = size(spec, declared, len(pods), ready, cores, request, memory, now)
    shards = sizing.shards
    return PoolView(
        site=observed.site.name,
        name=name,
        shards=shards,
        assignment=assign(loads, shards, capacity.cameras, float(capacity.fps)) if shards else None,
        pods=pods,
        created=observed.pools.get(name),
        secrets=observed.secrets,
        over_budget=refused,
    ), sizing


def site_status(
    site: ObjectFacts,
    cameras: Sequence[ObjectFacts],
    plans: Mapping[str, CameraPlan],
    pool: PoolView,
    now: datetime,
) -> tuple[JSON, list[Event]]:
    """The Site's status, and a Warning when it becomes overloaded."""
    pods_up = pool.ready_pods()
    pool_ok = pods_up == pool.shards
    overloaded = pool.assignment is not None and pool.assignment.overloaded
    ready = sum(p.ready for p in plans.values())
    pool_verdict = Verdict(
        pool_ok, "PoolReady" if pool_ok else "PoolNotReady", f"{pods_up}/{pool.shards} ingest pods ready"
    )
    load_verdict = Verdict(
        overloaded,
        "OverCapacity" if overloaded else "WithinCapacity",
        "cameras exceed the pool's capacity at maxPods" if overloaded else "within capacity",
    )
    cameras_verdict = Verdict(pool_ok, pool_verdict.reason, f"{ready}/{len(cameras)} cameras ready")
    degraded = _unschedulable(pool)
    limited = sorted(
        (name, p.status["uplink"])
        for name, p in plans.items()
        if p.status is not None and (p.status.get("uplink") or {}).get("limited")
    )
    if not degraded.ok and limited:
        degraded = _uplink_limited(site, limited, len(cameras))
    wanted = [
        condition("PoolReady", pool_verdict, site.generation, now),
        condition("Overloaded", load_verdict, site.generation, now),
        condition("Degraded", degraded, site.generation, now),
        condition("Ready", cameras_verdict, site.generation, now),
    ]
    status = {
        "observedGeneration": site.generation,
        "conditions": dump(merge(observed_conditions(site.status), wanted, now)),
        "cameras": {
            "total": len(cameras),
            "ready": ready,
            "streaming": sum(1 for c in cameras if c.status.get("streaming")),
            "failed": sum(p.failed for p in plans.values()),
        },
        "pods": {"desired": pool.shards, "ready": pods_up},
    }
    if site.spec.uplink is not None:
        status["uplink"] = {"bandwidth": site.spec.uplink.bandwidth, "limitedCameras": len(limited)}
    before = observed_condition(site.status, "Overloaded")
    told = []
    if overloaded and (before is None or before.status != "True"):
        message = f"{len(_active(cameras))} cameras need more than {site.spec.ingest.max_pods} pods"
        told.append(event("Site", site, "Warning", "OverCapacity", message))
    stuck_before = observed_condition(site.status, "Degraded")
    if degraded.ok and (stuck_before is None or stuck_before.reason != "Unschedulable"):
        told.append(event("Site", site, "Warning", "Unschedulable", degraded.message))
    return status, told


def _unschedulable(pool: PoolView) -> Verdict:
    """Degraded while a pod of the pool waits for a node that fits it: the scheduler's own words, so
    the SRE sees which zone, taint or resource is missing instead of a pool that silently stays short."""
    stuck = sorted(
        (name, pod.unschedulable) for name, pod in pool.pods.items() if pod.unschedulable is not None
    )
    if not stuck:
        return Verdict(False, "Scheduled", "every ingest pod has a node")
    name, why = stuck[0]
    more = f" ({len(stuck) - 1} more pods likewise)" if len(stuck) > 1 else ""
    message = (
        f"pod {name} cannot be scheduled: {why}{more}; add nodes that match spec.placement "
        "(zone, node selector, tolerations) or lower spec.ingest.maxPods"
    )
    return Verdict(True, "Unschedulable", message)


def _uplink_limited(site: ObjectFacts, limited: Sequence[tuple[str, JSON]], total: int) -> Verdict:
    """Degraded while the uplink budget sends some camera below what it asks: how many, and the most cut."""
    name, worst = min(limited, key=lambda item: (item[1]["fps"] / max(item[1]["askedFps"], 1e-9), item[0]))
    message = (
        f"{len(limited)} of {total} cameras are limited by spec.uplink.bandwidth "
        f"{site.spec.uplink.bandwidth if site.spec.uplink else '?'}: the most, {name}, is sent at quality "
        f"{worst['quality']}, scale {worst['scale']}, {worst['fps']} of {worst['askedFps']} fps; raise the "
        "bandwidth or lower the cameras' fps"
    )
    return Verdict(True, "UplinkLimited", message)


def _urls(cameras: Sequence[ObjectFacts], pool: PoolView) -> list[str]:
    """The URLs the pool's pods read: its active Cameras within their session budget."""
    return sorted({c.spec.source.url for c in _active(cameras) if c.name not in pool.over_budget})


def _active(cameras: Sequence[ObjectFacts]) -> list[ObjectFacts]:
    """The Cameras that need a pod: valid and not paused."""
    return [c for c in cameras if c.spec is not None and not c.spec.paused]


def _scaling(
    site: ObjectFacts,
    cameras: Sequence[ObjectFacts],
    pool: PoolView,
    sizing: Sizing,
    memory: Memory | None,
    now: datetime,
) -> tuple[JSON, list[Event]]:
    """The Site's status.scaling and, when the pool was resized, an Event saying how many cameras moved
    against the fewest that had to."""
    before = memory.replicas if memory is not None else None
    moved: tuple[int, int] | None = None
    told: list[Event] = []
    if before is not None and before != pool.shards and pool.assignment is not None:
        ordinals = {names.shard_name(pool.name, i): i for i in range(before)}
        placed = {c.name: ordinals.get(c.labels.get(LABEL_SHARD, "")) for c in cameras}
        now_on = pool.assignment.by_camera
        counts = [0] * before
        for name, ordinal in placed.items():
            if ordinal is not None and name in now_on:
                counts[ordinal] += 1
        changed = sum(1 for n, o in placed.items() if o is not None and n in now_on and now_on[n] != o)
        moved = (changed, min_moves(counts, pool.shards))
        message = (
            f"pool resized from {before} to {pool.shards} pods ({sizing.decision.reason}): "
            f"{changed} cameras moved, {moved[1]} had to"
        )
        told.append(event("Site", site, "Normal", "PoolResized", message))
    previous = site.status.get("scaling")
    status = scaling_status(sizing, pool.ready_pods(), previous, moved, now)
    return status, told
