"""What the operator keeps between handler calls, and the read and write sides of a pass: read the
indexes and the ingest pods' reports, ask pantau.reconcile what should be, and send only what
differs from what was observed (or just written). Nothing here decides."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import httpx
import kopf
from pydantic import ValidationError

from pantau.builders import names
from pantau.contract import (
    INGEST_PORT,
    LABEL_SHARD,
    MAX_STATUS_BYTES,
    STATUS_PATH,
    PodStatusReport,
    ReportError,
    parse_status,
)
from pantau.k8s.api import KubeApi
from pantau.models import GROUP, VERSION
from pantau.models.camera import CameraSpec
from pantau.models.site import SiteSpec
from pantau.reconcile.camera import CameraPlan, secrets_of
from pantau.reconcile.facts import Event, ObjectFacts, PodFacts, SecretFacts, SiteObservation
from pantau.reconcile.pool_size import Memory
from pantau.reconcile.reports import camera_reports, pods_to_poll
from pantau.reconcile.site import SitePlan, plan_site, sink_secrets
from pantau.settings import OperatorSettings

API_VERSION = f"{GROUP}/{VERSION}"
# A write is trusted over the (possibly lagging) watch for this long; after that the observed
# state wins again, so hand-made drift is repaired.
WRITE_MEMORY_SECONDS = 30.0
# The pool's objects other than the StatefulSet are not watched, so the operator cannot see them
# drift: it re-applies them (unchanged) this often instead, which is their drift repair. At 30 s that
# was a steady 6 no-op writes per Site every 30 s; a deleted StatefulSet is seen by its watch and
# recreated at the next pass whatever this says.
CHILD_REFRESH_SECONDS = 300.0
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


# ----- the ingest pods' reports -----


async def read_limited(response: httpx.Response, limit: int = MAX_STATUS_BYTES) -> bytes:
    """The body of a streamed response, refused (ReportError) as soon as it grows past `limit`: a pod
    cannot make the operator hold more than that in memory. A compressed body is refused too (the
    request asks for none): inflating it could take any amount of memory before the count."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ReportError(f"report of {declared} bytes is over the {limit}-byte limit")
    if response.headers.get("content-encoding", "identity").lower() not in ("identity", ""):
        raise ReportError("report is compressed; it was asked for uncompressed")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise ReportError(f"report is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


async def fetch_report(http: httpx.AsyncClient, address: str) -> PodStatusReport:
    url = f"http://{address}:{INGEST_PORT}{STATUS_PATH}"
    async with http.stream("GET", url, headers={"Accept-Encoding": "identity"}) as response:
        response.raise_for_status()
        body = await read_limited(response)
    return parse_status(body)


async def pull_reports(
    http: httpx.AsyncClient, targets: Mapping[str, str], per_pod_seconds: float
) -> dict[str, PodStatusReport]:
    """Pod name -> report, of the pods in `targets` (pod name -> address) that answered within
    `per_pod_seconds` with a report that parses. Any other pod contributes nothing, and its cameras
    keep their last written facts."""

    async def one(pod: str, address: str) -> PodStatusReport | None:
        try:
            async with asyncio.timeout(per_pod_seconds):
                return await fetch_report(http, address)
        except ReportError as exc:
            log.warning("status of pod %s refused: %s", pod, exc)
        except (httpx.HTTPError, TimeoutError) as exc:
            log.debug("status of pod %s: %r", pod, exc)
        return None

    found = await asyncio.gather(*(one(pod, address) for pod, address in targets.items()))
    return {pod: report for pod, report in zip(targets, found, strict=True) if report is not None}


class SecretCache:
    """The Secrets that Cameras name: whether each exists and consents to being used, asked one by one
    for its metadata only. The operator neither lists nor watches Secrets, nor ever receives their
    data. A consenting Secret is trusted for `refresh` seconds (a withdrawn consent is noticed within
    that); a missing or refusing one is asked for again on every pass, so creating or labelling it is
    noticed at the next pass."""

    def __init__(self, api: KubeApi, refresh: float) -> None:
        self._api, self._refresh = api, refresh
        # (namespace, name) -> (when it was seen consenting, its facts)
        self._seen: dict[tuple[str, str], tuple[float, SecretFacts]] = {}

    async def facts(self, namespace: str, names: Iterable[str]) -> dict[str, SecretFacts]:
        now = time.monotonic()
        wanted = set(names)
        stale = sorted(
            n for n in wanted if now - self._seen.get((namespace, n), (-math.inf,))[0] > self._refresh
        )
        found = await asyncio.gather(*(self._api.metadata("v1", "Secret", namespace, n) for n in stale))
        fresh: dict[str, SecretFacts] = {}
        for name, metadata in zip(stale, found, strict=True):
            self._seen.pop((namespace, name), None)
            if metadata is None:
                continue
            fresh[name] = facts = SecretFacts.of(metadata)
            if facts.consent:
                self._seen[(namespace, name)] = (now, facts)
        cached = {
            n: self._seen[(namespace, n)][1] for n in wanted - fresh.keys() if (namespace, n) in self._seen
        }
        return cached | fresh


@dataclass
class OperatorState:
    settings: OperatorSettings
    api: KubeApi
    http: httpx.AsyncClient = field(default_factory=lambda: httpx.AsyncClient(timeout=2.0))
    dirty: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)
    written: dict[tuple[str, ...], tuple[str, float]] = field(default_factory=dict)
    secrets: SecretCache = field(init=False)
    # Site uid -> its pool's scaler (by uid: a Site deleted and created again starts afresh)
    scalers: dict[str, Memory] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.secrets = SecretCache(self.api, self.settings.secret_refresh)

    @classmethod
    def create(cls, settings: OperatorSettings) -> OperatorState:
        return cls(settings, KubeApi.from_environment(settings.field_manager, settings.api_concurrency))

    async def aclose(self) -> None:
        await self.api.aclose()
        await self.http.aclose()

    async def pull_reports(self, targets: Mapping[str, str]) -> dict[str, PodStatusReport]:
        return await pull_reports(self.http, targets, self.settings.status_timeout)

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

    def mark_labelled(self, namespace: str, value: str) -> None:
        """Mark the Site whose pantau.io/site label value (children carry it) is `value`: a long
        Site name becomes a shortened, hashed value there (names.label_value)."""
        for (ns, name), flag in self.dirty.items():
            if ns == namespace and names.label_value(name) == value:
                flag.set()

    def forget(self, namespace: str, name: str, uid: str | None = None) -> None:
        self.dirty.pop((namespace, name), None)
        if uid is not None:
            self.scalers.pop(uid, None)

    # ----- writes, each skipped when nothing would change -----

    def _recently_written(
        self, key: tuple[str, ...], desired: Any, memory: float = WRITE_MEMORY_SECONDS
    ) -> bool:
        seen = self.written.get(key)
        return (
            seen is not None
            and seen[0] == json.dumps(desired, sort_keys=True)
            and (time.monotonic() - seen[1] < memory)
        )

    def _remember(self, key: tuple[str, ...], desired: Any) -> None:
        self.written[key] = (json.dumps(desired, sort_keys=True), time.monotonic())

    async def apply_child(self, child: dict[str, Any], present: bool) -> None:
        meta = child["metadata"]
        key = ("child", child["kind"], meta["namespace"], meta["name"])
        if present and self._recently_written(key, child, CHILD_REFRESH_SECONDS):
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

    @staticmethod
    def post(events: Iterable[Event]) -> None:
        for e in events:
            ref = {
                "apiVersion": API_VERSION,
                "kind": e.kind,
                "metadata": {"name": e.name, "namespace": e.namespace, "uid": e.uid},
            }
            kopf.event(ref, type=e.type, reason=e.reason, message=e.message)  # type: ignore[arg-type]

    # ----- applying plans -----

    async def apply_site_plan(self, observed: SiteObservation, plan: SitePlan) -> None:
        for child in plan.children:
            await self.apply_child(child, (child["kind"], child["metadata"]["name"]) not in plan.unseen)
        by_name = {c.name: c for c in observed.cameras}
        await asyncio.gather(
            *(self.set_camera_label(by_name[n], shard) for n, shard in plan.camera_labels.items()),
            *(self.set_status("Camera", by_name[n], status) for n, status in plan.camera_status.items()),
        )
        await self.set_status("Site", observed.site, plan.site_status)
        self.post(plan.events)

    async def apply_camera_plan(self, camera: ObjectFacts, plan: CameraPlan) -> None:
        await self.set_camera_label(camera, plan.label)
        if plan.status is not None:
            await self.set_status("Camera", camera, plan.status)
        self.post(plan.events)


# ----- reading the indexes -----


def _first(store: Iterable[Any] | None) -> Any:
    return next(iter(store), None) if store is not None else None


def observe_site(
    namespace: str, name: str, indexes: Mapping[str, Any], secrets: Mapping[str, SecretFacts] | None = None
) -> SiteObservation | None:
    """What the indexes hold for one Site's pass (and `secrets`, the named Secrets that exist); None
    once the Site is gone."""
    site: ObjectFacts | None = _first(indexes["site_index"].get((namespace, name)))
    if site is None:
        return None
    pods = {pod: _first(store) for (ns, pod), store in indexes["pod_index"].items() if ns == namespace}
    pools = {pool: _first(store) for (ns, pool), store in indexes["pool_index"].items() if ns == namespace}
    return SiteObservation(
        site=site,
        cameras=tuple(indexes["camera_index"].get((namespace, name), [])),
        pods={pod: PodFacts(*facts) for pod, facts in pods.items() if facts is not None},
        pools={pool: created for pool, created in pools.items() if created is not None},
        secrets=secrets or {},
    )


async def reconcile_site(state: OperatorState, namespace: str, name: str, indexes: Mapping[str, Any]) -> None:
    """One pass: read, pull the reports the plan asks for, plan, then write what differs."""
    observed = observe_site(namespace, name, indexes)
    if observed is None:
        return
    named = {s for c in observed.cameras if c.spec is not None for s in secrets_of(c.spec)}
    if observed.site.spec is not None:
        named |= set(sink_secrets(observed.site.spec))
    observed = replace(observed, secrets=await state.secrets.facts(namespace, named))
    pulled = await state.pull_reports(pods_to_poll(observed, state.settings.may_poll))
    reports = camera_reports(pulled, observed)
    cores = sum(r.cpu_cores for r in pulled.values()) if pulled else None
    uid = observed.site.uid
    plan = plan_site(
        observed, state.settings.pool(), datetime.now(UTC), reports, cores, state.scalers.get(uid)
    )
    await state.apply_site_plan(observed, plan)
    if plan.memory is not None:  # kept once written: a failed pass decides again from the last one
        state.scalers[uid] = plan.memory
