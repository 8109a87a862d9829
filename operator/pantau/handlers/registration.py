"""Thin Kopf layer: indexes of what the operator sees, a reconcile loop per Site, and status for
Cameras whose Site is missing. All decisions are in pantau.reconcile; all writes go through
pantau.k8s.

Why a daemon per Site instead of create/update handlers: a Site's assignment depends on all its
Cameras, its pods and the Secrets they name, which change without the Site changing. Events on
any of them mark the Site "dirty"; its loop coalesces bursts (5,000 new Cameras -> a few passes)
and also runs every `resync_interval` seconds, which repairs drift such as a deleted workload.
Cameras carry no Kopf state at all, so the operator adds nothing to them but a label and status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from datetime import UTC, datetime
from typing import Any

import kopf

from pantau.contract import ANNOTATION_PREFIX, LABEL_MANAGED_BY, LABEL_SITE, MANAGED_BY
from pantau.handlers import admission
from pantau.handlers.state import OperatorState, reconcile_site
from pantau.k8s.api import ApiError
from pantau.models import GROUP, VERSION
from pantau.reconcile.camera import plan_orphan_camera
from pantau.reconcile.facts import ObjectFacts
from pantau.settings import OperatorSettings

SITES = (GROUP, VERSION, "sites")
CAMERAS = (GROUP, VERSION, "cameras")
MANAGED = {LABEL_MANAGED_BY: MANAGED_BY}
log = logging.getLogger("pantau.operator")


def configure(settings: kopf.OperatorSettings, ours: OperatorSettings) -> None:
    """Kopf's own state under our domain; watch timeouts so a silent stall is noticed."""
    settings.persistence.finalizer = f"{ANNOTATION_PREFIX}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=ANNOTATION_PREFIX)
    settings.watching.server_timeout = ours.watch_server_timeout
    settings.watching.client_timeout = ours.watch_client_timeout
    settings.watching.inactivity_timeout = ours.inactivity_timeout
    settings.networking.request_timeout = ours.request_timeout  # Kopf's default waits 5 minutes
    settings.networking.connect_timeout = min(10.0, ours.request_timeout)
    settings.posting.reporting_component = "pantau-operator"
    settings.posting.level = logging.WARNING  # only warnings of the framework become Events
    # The CRDs are installed before the operator (the chart's crds/): no need to watch for new ones,
    # which would need list/watch on every CustomResourceDefinition.
    settings.scanning.disabled = True
    settings.peering.standalone = not ours.peering
    if ours.peering:
        # Each replica draws its priority at start; the highest acts, the others wait. A standby takes
        # over once the active one's entry is `lifetime` seconds old. Mandatory: a missing peering
        # object stops the operator instead of letting replicas run unpaired. Cluster-wide even when
        # only some namespaces are served: one ClusterKopfPeering per release, whatever it serves.
        settings.peering.name = ours.peering_name
        settings.peering.clusterwide = True
        settings.peering.mandatory = True
        settings.peering.lifetime = ours.peering_lifetime
        settings.peering.priority = random.SystemRandom().randint(1, 1_000_000)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    ours = memo.get("settings") or OperatorSettings()
    configure(settings, ours)
    memo["state"] = OperatorState.create(ours)
    admission.enable(settings, ours, memo)


@kopf.on.cleanup()
async def cleanup(memo: Any, **_: Any) -> None:
    state: OperatorState | None = memo.get("state")
    if state is not None:
        await state.aclose()


# ----- indexes: what the operator knows, kept current by Kopf's watches -----
# Indexes and triggers are `async def` though they never await: Kopf runs a plain function in a
# thread of its executor, and at 5,000 Cameras that hop per event cost more than the function.


@kopf.index(*SITES)
async def site_index(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], ObjectFacts]:
    return {(namespace or "", name): OperatorState.site_facts(body)}


@kopf.index(*CAMERAS)
async def camera_index(
    namespace: str | None, spec: kopf.Spec, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], ObjectFacts]:
    site = (spec.get("siteRef") or {}).get("name", "")
    return {(namespace or "", site): OperatorState.camera_facts(body)}


@kopf.index("v1", "pods", labels=MANAGED)
async def pod_index(
    namespace: str | None, name: str, status: kopf.Status, **_: Any
) -> dict[tuple[str, str], tuple[bool, str, str | None]]:
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    unschedulable = next(
        (
            str(c.get("message") or "no node fits")
            for c in conditions
            if c.get("type") == "PodScheduled"
            and c.get("status") == "False"
            and c.get("reason") == "Unschedulable"
        ),
        None,
    )
    return {(namespace or "", name): (ready, status.get("podIP") or "", unschedulable)}


@kopf.index("apps", "v1", "statefulsets", labels=MANAGED)
async def pool_index(
    namespace: str | None, name: str, meta: kopf.Meta, **_: Any
) -> dict[tuple[str, str], str]:
    return {(namespace or "", name): str(meta.get("creationTimestamp") or "")}


# ----- triggers: mark the affected Site dirty -----


@kopf.on.event(*SITES)
async def site_changed(namespace: str | None, name: str, type: str, memo: Any, **kwargs: Any) -> None:
    state: OperatorState = memo["state"]
    ns = namespace or ""
    state.mark(ns, name)
    if type == "DELETED":  # its Cameras stay: each is told its Site is gone, not left Ready
        # A copy: the index changes while this handler awaits its writes.
        for camera in list(kwargs["camera_index"].get((ns, name), [])):
            await _tell_orphan(state, camera, name, site_exists=False, deleted=False)


@kopf.on.event(*CAMERAS)
async def camera_changed(
    namespace: str | None,
    spec: kopf.Spec,
    body: kopf.Body,
    type: str,
    memo: Any,
    **kwargs: Any,
) -> None:
    state: OperatorState = memo["state"]
    site = (spec.get("siteRef") or {}).get("name", "")
    ns = namespace or ""
    state.mark(ns, site)
    if type == "DELETED" or (ns, site) in kwargs["site_index"]:
        return  # gone, or its Site's pass decides for it: no need to parse it here
    await _tell_orphan(state, OperatorState.camera_facts(body), site, site_exists=False, deleted=False)


async def _tell_orphan(
    state: OperatorState, camera: ObjectFacts, site: str, *, site_exists: bool, deleted: bool
) -> None:
    """A Camera whose Site does not exist gets its status (and shard label) from no Site's pass."""
    plan = plan_orphan_camera(camera, site, site_exists=site_exists, deleted=deleted, now=datetime.now(UTC))
    if plan is None:
        return
    try:
        await state.apply_camera_plan(camera, plan)
    except ApiError as exc:
        log.warning("camera %s/%s: status not written: %s", camera.namespace, camera.name, exc)


@kopf.on.event("v1", "pods", labels=MANAGED)
@kopf.on.event("apps", "v1", "statefulsets", labels=MANAGED)
async def child_changed(namespace: str | None, labels: kopf.Labels, memo: Any, **_: Any) -> None:
    site = labels.get(LABEL_SITE)
    if site:
        memo["state"].mark_labelled(namespace or "", site)


# ----- the reconcile loop of each Site -----


async def settle(state: OperatorState, cameras: Any, key: tuple[str, str]) -> None:
    """Wait while the Site's Cameras are still arriving (a burst of kubectl applies), up to
    `settle_max` seconds: sizing the pool from a half-created set would resize it again and
    again, moving Cameras between pods at each step."""
    count = len(cameras.get(key, []))
    waited = 0.0
    while True:
        await asyncio.sleep(state.settings.debounce)
        waited += state.settings.debounce
        now = len(cameras.get(key, []))
        if now == count or waited >= state.settings.settle_max:
            return
        count = now


@kopf.daemon(*SITES, cancellation_timeout=10)
async def site_loop(
    namespace: str | None, name: str, stopped: kopf.DaemonStopped, memo: Any, **kwargs: Any
) -> None:
    state: OperatorState = memo["state"]
    namespace = namespace or ""
    dirty = state.dirty_flag(namespace, name)
    dirty.set()
    first = True
    while not stopped:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(dirty.wait(), timeout=state.settings.resync_interval)
        if stopped:
            break
        await settle(state, kwargs["camera_index"], (namespace, name))
        dirty.clear()
        try:
            await reconcile_site(state, namespace, name, kwargs)
            if first:
                log.info("site %s/%s: first pass done", namespace, name)
                first = False
        except ApiError as exc:
            # Classified once here: the next pass (dirty again, or the resync) retries.
            log.warning("site %s/%s: reconcile failed: %s", namespace, name, exc)
            if exc.transient:
                dirty.set()
                await asyncio.sleep(1.0)
    state.forget(namespace, name, kwargs.get("uid"))
