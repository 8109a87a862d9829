"""What the operator keeps between handler calls, and the write side of a reconcile pass:
compare what the plan wants with what was observed (or just written) and send only differences."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import kopf
from pydantic import ValidationError

from pantau.builders import names
from pantau.contract import INGEST_PORT, LABEL_SHARD
from pantau.k8s.api import KubeApi
from pantau.models import GROUP, VERSION
from pantau.models.camera import CameraSpec
from pantau.models.site import SiteSpec
from pantau.reconcile.site import Event, ObjectFacts, camera_status_without_site, plan_site
from pantau.settings import OperatorSettings

API_VERSION = f"{GROUP}/{VERSION}"
# A write is trusted over the (possibly lagging) watch for this long; after that the observed
# state wins again, so hand-made drift is repaired.
WRITE_MEMORY_SECONDS = 30.0
log = logging.getLogger("pantau.operator")


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _errors(exc: ValidationError) -> str:
    # include_input=False: a rejected value may be a URL with a password in it.
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
        for e in exc.errors(include_input=False, include_url=False)
    )


def _facts(body: Mapping[str, Any], model: type[SiteSpec] | type[CameraSpec]) -> ObjectFacts:
    """A watched object as the planner sees it; an invalid spec is kept as its error message."""
    meta = body["metadata"]
    spec: SiteSpec | CameraSpec | None
    try:
        spec, error = model.model_validate(_plain(body.get("spec") or {})), None
    except ValidationError as exc:
        spec, error = None, _errors(exc)
    labels, status = dict(meta.get("labels") or {}), _plain(body.get("status") or {})
    return ObjectFacts(
        meta["namespace"], meta["name"], meta["uid"], meta.get("generation", 0), spec, error, labels, status
    )


@dataclass
class OperatorState:
    settings: OperatorSettings
    api: KubeApi
    http: httpx.AsyncClient = field(default_factory=lambda: httpx.AsyncClient(timeout=2.0))
    dirty: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)
    written: dict[tuple[str, ...], tuple[str, float]] = field(default_factory=dict)

    @classmethod
    def create(cls, settings: OperatorSettings) -> OperatorState:
        return cls(settings, KubeApi.from_environment(settings.field_manager, settings.api_concurrency))

    async def aclose(self) -> None:
        await self.api.aclose()
        await self.http.aclose()

    async def pull_reports(self, addresses: list[str]) -> dict[str, dict[str, Any]]:
        """Per-camera /status entries of the given ingest pods (health flows by pull); a pod that
        does not answer contributes nothing, and its cameras keep their last written facts."""
        allowed = [a for a in addresses if self.settings.may_poll(a)]

        async def one(address: str) -> list[dict[str, Any]]:
            try:
                resp = await self.http.get(f"http://{address}:{INGEST_PORT}/status")
                resp.raise_for_status()
                cameras: list[dict[str, Any]] = resp.json().get("cameras", [])
                return cameras
            except (httpx.HTTPError, ValueError) as exc:
                log.debug("status of %s: %s", address, exc)
                return []

        found = await asyncio.gather(*(one(a) for a in allowed))
        return {c["name"]: c for cams in found for c in cams}

    # ----- facts from watched bodies -----

    @staticmethod
    def site_facts(body: Mapping[str, Any]) -> ObjectFacts:
        return _facts(body, SiteSpec)

    @staticmethod
    def camera_facts(body: Mapping[str, Any]) -> ObjectFacts:
        return _facts(body, CameraSpec)

    # ----- dirty flags -----

    def dirty_flag(self, namespace: str, name: str) -> asyncio.Event:
        return self.dirty.setdefault((namespace, name), asyncio.Event())

    def mark(self, namespace: str, name: str) -> None:
        flag = self.dirty.get((namespace, name))
        if flag is not None:
            flag.set()

    def mark_namespace(self, namespace: str) -> None:
        for (ns, _), flag in self.dirty.items():
            if ns == namespace:
                flag.set()

    def forget(self, namespace: str, name: str) -> None:
        self.dirty.pop((namespace, name), None)

    # ----- writes, each skipped when nothing would change -----

    def _recently_written(self, key: tuple[str, ...], desired: Any) -> bool:
        seen = self.written.get(key)
        return (
            seen is not None
            and seen[0] == json.dumps(desired, sort_keys=True)
            and (time.monotonic() - seen[1] < WRITE_MEMORY_SECONDS)
        )

    def _remember(self, key: tuple[str, ...], desired: Any) -> None:
        self.written[key] = (json.dumps(desired, sort_keys=True), time.monotonic())

    async def apply_child(self, child: dict[str, Any], present: bool) -> None:
        meta = child["metadata"]
        key = ("child", child["kind"], meta["namespace"], meta["name"])
        if present and self._recently_written(key, child):
            return
        await self.api.apply(child)
        self._remember(key, child)

    async def set_camera_label(self, camera: ObjectFacts, shard: str | None) -> None:
        if camera.labels.get(LABEL_SHARD) == shard:
            return
        key = ("label", camera.namespace, camera.name)
        if self._recently_written(key, shard):
            return
        labels = {LABEL_SHARD: shard} if shard else {}
        body = {
            "apiVersion": API_VERSION,
            "kind": "Camera",
            "metadata": {"name": camera.name, "namespace": camera.namespace, "labels": labels},
        }
        await self.api.apply(body)
        self._remember(key, shard)

    async def set_status(self, kind: str, facts: ObjectFacts, status: dict[str, Any]) -> None:
        if _plain(facts.status) == status:
            return
        key = ("status", kind, facts.namespace, facts.name)
        if self._recently_written(key, status):
            return
        body = {
            "apiVersion": API_VERSION,
            "kind": kind,
            "metadata": {"name": facts.name, "namespace": facts.namespace},
            "status": status,
        }
        await self.api.apply(body, subresource="status")
        self._remember(key, status)

    def post(self, namespace: str, uids: Mapping[str, str], events: list[Event]) -> None:
        for e in events:
            uid = uids.get(f"{e.kind}/{e.name}")
            if uid is None:
                continue
            ref = {
                "apiVersion": API_VERSION,
                "kind": e.kind,
                "metadata": {"name": e.name, "namespace": namespace, "uid": uid},
            }
            kopf.event(ref, type=e.type, reason=e.reason, message=e.message)  # type: ignore[arg-type]


def _only(store: Any) -> ObjectFacts | None:
    return next(iter(store), None) if store is not None else None


async def reconcile_site(state: OperatorState, namespace: str, name: str, indexes: Mapping[str, Any]) -> None:
    """One pass: plan from the indexes, then write what differs."""
    site = _only(indexes["site_index"].get((namespace, name)))
    if site is None:
        return
    now = datetime.now(UTC)
    cameras: list[ObjectFacts] = list(indexes["camera_index"].get((namespace, name), []))
    if site.spec is None:
        status = {
            "observedGeneration": site.generation,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "InvalidSpec",
                    "message": site.error or "",
                    "lastTransitionTime": now.replace(microsecond=0).isoformat().replace("+00:00", "Z"),
                    "observedGeneration": site.generation,
                }
            ],
        }
        await state.set_status("Site", site, status)
        return
    secrets = frozenset(indexes["secret_index"].get(namespace, []))
    pods = indexes["pod_index"]
    prefix = names.pool_name(name) + "-"
    pool_pods = {
        pod: next(iter(pods[(ns, pod)])) for ns, pod in pods if ns == namespace and pod.startswith(prefix)
    }
    pods_ready = {pod: ready for pod, (ready, _ip) in pool_pods.items()}
    reports = await state.pull_reports([ip for ready, ip in pool_pods.values() if ready and ip])
    plan = plan_site(site, cameras, pods_ready, secrets, state.settings.pool(), now, reports)

    pools = indexes["pool_index"]
    for child in plan.children:
        present = child["kind"] != "StatefulSet" or (namespace, child["metadata"]["name"]) in pools
        await state.apply_child(child, present)
    by_name = {c.name: c for c in cameras}
    await asyncio.gather(
        *(state.set_camera_label(by_name[n], shard) for n, shard in plan.camera_labels.items()),
        *(
            state.set_status("Camera", by_name[n], status)
            for n, status in plan.camera_status.items()
            if not _pod_coming(status, pool_pods, pools, namespace, now)
        ),
    )
    await state.set_status("Site", site, plan.site_status)
    uids = {f"Camera/{c.name}": c.uid for c in cameras} | {f"Site/{name}": site.uid}
    state.post(namespace, uids, plan.events)


POD_START_GRACE = 60.0


def _pod_coming(
    status: dict[str, Any], pods: Mapping[str, Any], pools: Any, namespace: str, now: datetime
) -> bool:
    """A Camera whose pod is not created yet, in a pool created less than a minute ago: its status
    would say PodNotReady now and PodReady seconds later, so it is written once, later."""
    pod = status.get("pod")
    ready = [c for c in status.get("conditions", []) if c.get("type") == "Ready"]
    if not pod or pod in pods or not ready or ready[0].get("reason") != "PodNotReady":
        return False
    created = next(iter(pools.get((namespace, pod.rsplit("-", 1)[0]), [])), "")
    if not created:
        return True  # the StatefulSet itself is being created
    age = now - datetime.fromisoformat(created.replace("Z", "+00:00"))
    return age.total_seconds() < POD_START_GRACE


async def reconcile_orphan_camera(state: OperatorState, camera: ObjectFacts, site_name: str) -> None:
    """A Camera whose Site does not exist: unassigned, not ready, and told why."""
    status = camera_status_without_site(camera, site_name, datetime.now(UTC))
    before = [c for c in camera.status.get("conditions") or [] if c.get("type") == "Ready"]
    await state.set_camera_label(camera, None)
    await state.set_status("Camera", camera, status)
    if not before or before[0].get("reason") != status["reason"]:
        state.post(
            camera.namespace,
            {f"Camera/{camera.name}": camera.uid},
            [Event("Camera", camera.name, "Warning", status["reason"], status["conditions"][-1]["message"])],
        )
