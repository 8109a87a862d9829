"""The Triton scaler: every `triton_scale_interval` seconds, while this operator is the active peer,
read the Triton Deployment's scale subresource, the HPAs beside it and the metrics of each ready
Triton pod; ask pantau.reconcile.triton what to do; set replicas through the scale subresource.

Why a background task and not a Kopf daemon on the Deployment: Kopf watches one set of namespaces
for every kind, the ones holding Sites, and Triton usually lives elsewhere (the release namespace);
a daemon would also put Kopf's finalizer on a Deployment the operator does not own. Kopf's peering
pauses handlers but not such a task, so each pass first checks the peering object itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import kopf

from pantau.k8s.api import ApiError, KubeApi
from pantau.reconcile.scaling import Behavior, ScalerState
from pantau.reconcile.triton import (
    DEPLOYMENT_API,
    TritonBounds,
    TritonObservation,
    active_peer,
    hpa_targeting,
    plan_triton,
    ready_pod_addresses,
    scaled_event,
)
from pantau.settings import OperatorSettings
from pantau.triton.metrics import MetricsError, MetricsSnapshot, fetch_metrics, load_between, metrics_url

log = logging.getLogger("pantau.operator.triton")
TASK_KEY = "triton_scaler"
METRICS_SECONDS = 5.0  # longest wait for one pod's metrics (fewer when passes come more often)


@dataclass
class TritonScaler:
    settings: OperatorSettings
    peering: Any  # Kopf's peering settings (priority drawn at start-up by registration.configure)
    http: httpx.AsyncClient
    snapshots: dict[str, MetricsSnapshot] = field(default_factory=dict)  # pod uid -> last reading
    state: ScalerState | None = None
    owner: str | None = ""  # the HPA seen last pass ("" before the first), to log changes once

    @property
    def target(self) -> tuple[str, str]:
        namespace, _, name = self.settings.triton_deployment.partition("/")
        return namespace, name

    def bounds(self) -> TritonBounds:
        s = self.settings
        return TritonBounds(s.triton_min_replicas, s.triton_max_replicas, Behavior(target=s.triton_target))

    async def active(self, api: KubeApi) -> bool:
        if self.peering.standalone:
            return True
        peering = await api.get("kopf.dev/v1", "ClusterKopfPeering", None, self.peering.name)
        peers = (peering or {}).get("status") or {}
        return active_peer(peers, int(self.peering.priority), datetime.now(UTC))

    async def loads(self, addresses: dict[str, str]) -> list[float]:
        """The load figure of each pod read twice so far (this pass and the one before)."""

        port = self.settings.triton_metrics_port
        seconds = min(METRICS_SECONDS, self.settings.triton_scale_interval)

        async def read(address: str) -> MetricsSnapshot | None:
            try:
                async with asyncio.timeout(seconds):  # the whole body, not each read of it
                    return await fetch_metrics(self.http, metrics_url(address, port))
            except MetricsError as exc:
                log.warning("Triton metrics at %s refused: %s", address, exc)
            except (httpx.HTTPError, TimeoutError) as exc:
                log.debug("Triton metrics at %s: %r", address, exc)
            return None

        readings = await asyncio.gather(*(read(a) for a in addresses.values()))
        figures: list[float] = []
        current: dict[str, MetricsSnapshot] = {}
        for uid, reading in zip(addresses, readings, strict=True):
            before = self.snapshots.get(uid)
            if reading is None:
                continue
            current[uid] = reading
            figure = load_between(before, reading, self.settings.triton_instances) if before else None
            if figure is not None:
                figures.append(figure.load)
        self.snapshots = current
        return figures

    async def pass_once(self, api: KubeApi) -> None:
        namespace, name = self.target
        scale = await api.get_scale(DEPLOYMENT_API, "Deployment", namespace, name)
        if scale is None:
            log.warning("Triton Deployment %s/%s not found: nothing to scale", namespace, name)
            self.state = None
            return
        hpa = hpa_targeting(
            await api.list_objects("autoscaling/v2", "HorizontalPodAutoscaler", namespace), name
        )
        self._tell_owner(hpa)
        loads: list[float] = []
        if hpa is not None:
            self.snapshots = {}
        if hpa is None:
            selector = str((scale.get("status") or {}).get("selector") or "")
            pods = await api.list_objects("v1", "Pod", namespace, label_selector=selector) if selector else []
            loads = await self.loads(ready_pod_addresses(pods))
        replicas = int((scale.get("spec") or {}).get("replicas") or 0)
        plan = plan_triton(
            TritonObservation(time.monotonic(), replicas, loads, hpa), self.bounds(), self.state
        )
        self.state = plan.state
        if plan.replicas is None:
            log.debug("Triton %s/%s: %s", namespace, name, plan.message)
            return
        await api.set_replicas(DEPLOYMENT_API, "Deployment", namespace, name, plan.replicas)
        log.info("Triton %s/%s scaled: %s", namespace, name, plan.message)
        uid = str((scale.get("metadata") or {}).get("uid", ""))
        # Posted through the API, not kopf.event: Kopf's event queue exists only inside its handlers.
        await api.create(scaled_event(namespace, name, uid, plan.message, datetime.now(UTC)))

    def _tell_owner(self, hpa: str | None) -> None:
        if hpa != self.owner:
            namespace, name = self.target
            if hpa is not None:
                log.info("Triton %s/%s: HPA %s targets it; leaving its replicas alone", namespace, name, hpa)
            elif self.owner:
                log.info(
                    "Triton %s/%s: HPA %s is gone; the operator scales it again", namespace, name, self.owner
                )
        self.owner = hpa

    async def run(self, memo: Any) -> None:
        while True:
            state = memo.get("state")
            if state is not None:
                try:
                    if await self.active(state.api):
                        await self.pass_once(state.api)
                    else:
                        self.state, self.snapshots = None, {}
                except ApiError as exc:
                    log.warning("Triton scaling pass failed: %s", exc)
                except Exception:  # the loop outlives any one pass; the next one retries
                    log.exception("Triton scaling pass failed")
            await asyncio.sleep(self.settings.triton_scale_interval)


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    ours: OperatorSettings = memo.get("settings") or OperatorSettings()
    if not ours.triton_deployment:
        return
    timeout = httpx.Timeout(min(METRICS_SECONDS, ours.triton_scale_interval))
    scaler = TritonScaler(ours, settings.peering, httpx.AsyncClient(timeout=timeout))
    memo[TASK_KEY] = (scaler, asyncio.create_task(scaler.run(memo), name="triton-scaler"))
    log.info("Triton scaling of %s every %ss", ours.triton_deployment, ours.triton_scale_interval)


@kopf.on.cleanup()
async def stop(memo: Any, **_: Any) -> None:
    found: tuple[TritonScaler, asyncio.Task[None]] | None = memo.get(TASK_KEY)
    if found is None:
        return
    scaler, task = found
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await scaler.http.aclose()
