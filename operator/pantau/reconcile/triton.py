"""Decisions about the Triton Deployment's replicas: whether the operator may scale it at all, and to
how many, from the load its pods report. Pure: the handler reads the cluster and Triton's metrics,
passes plain facts in, and writes what comes out.

Who owns the replicas. An HPA (or a KEDA ScaledObject, which works through an HPA) that targets the
Deployment owns them: the operator then leaves them alone, whatever its own settings say, so two
controllers never fight over one field. Among several operator replicas only the active peer acts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pantau.reconcile.scaling import Behavior, Sample, ScalerState, decide

DEPLOYMENT_API = "apps/v1"
EVENT_COMPONENT = "pantau-operator"  # as Kopf's posting.reporting_component says for the other Events


@dataclass(frozen=True)
class TritonBounds:
    """The operator's policy for the Triton Deployment (from its settings)."""

    lo: int
    hi: int
    behavior: Behavior = field(default_factory=Behavior)


@dataclass(frozen=True)
class TritonObservation:
    """One pass's facts. `loads`: the load figure (replicas' worth of work, see
    pantau.triton.metrics) of each ready pod that gave one; a ready pod that did not answer is left
    out and so counts as not ready (never as idle capacity)."""

    at: float  # monotonic seconds
    replicas: int  # the Deployment's spec.replicas, as its scale subresource says
    loads: Sequence[float]
    hpa: str | None = None  # an HPA that targets the Deployment, by name


@dataclass(frozen=True)
class TritonPlan:
    """What to do: `replicas` to set (None: leave them), why, and the scaler state to keep (None:
    start afresh next time, as after an HPA is removed)."""

    replicas: int | None
    reason: str
    message: str
    state: ScalerState | None


def plan_triton(observed: TritonObservation, bounds: TritonBounds, state: ScalerState | None) -> TritonPlan:
    if observed.hpa is not None:
        return TritonPlan(
            None,
            "HPAPresent",
            f"HorizontalPodAutoscaler {observed.hpa} targets the Deployment: replicas are left to it",
            None,
        )
    if state is None:
        # The first pass (or the first since the operator took over, or since an HPA went): the running
        # replicas are the starting point, so nothing is removed before a full down window. Nothing
        # is decided yet either: a load figure needs two readings of each pod.
        return TritonPlan(
            None,
            "Resumed",
            f"{observed.replicas} running replica(s) taken as the starting point",
            ScalerState.resumed(observed.at, observed.replicas),
        )
    load = sum(observed.loads)
    sample = Sample(at=observed.at, load=load, ready=len(observed.loads))
    decision = decide(sample, observed.replicas, bounds.lo, bounds.hi, bounds.behavior, state)
    message = (
        f"load {load:.2f} replicas' worth over {len(observed.loads)} reporting pod(s), target "
        f"{bounds.behavior.target:.2f} per replica, bounds [{bounds.lo}, {bounds.hi}]: "
        f"{observed.replicas} -> {decision.replicas} ({decision.reason})"
    )
    replicas = decision.replicas if decision.replicas != observed.replicas else None
    return TritonPlan(replicas, decision.reason, message, decision.state)


def scaled_event(namespace: str, name: str, uid: str, message: str, now: datetime) -> dict[str, Any]:
    """The Event that tells a scaling of the Deployment (core/v1, the kind `kubectl describe` shows)."""
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{name}.", "namespace": namespace},
        "involvedObject": {
            "apiVersion": DEPLOYMENT_API,
            "kind": "Deployment",
            "namespace": namespace,
            "name": name,
            "uid": uid,
        },
        "type": "Normal",
        "reason": "TritonScaled",
        "message": message,
        "source": {"component": EVENT_COMPONENT},
        "reportingComponent": EVENT_COMPONENT,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


def hpa_targeting(hpas: Iterable[Mapping[str, Any]], deployment: str) -> str | None:
    """The name of the first HPA (sorted by name) whose scaleTargetRef is the Deployment, if any."""
    names = sorted(
        str(h.get("metadata", {}).get("name", ""))
        for h in hpas
        if _targets(h.get("spec", {}).get("scaleTargetRef") or {}, deployment)
    )
    return names[0] if names else None


def _targets(ref: Mapping[str, Any], deployment: str) -> bool:
    group = str(ref.get("apiVersion", DEPLOYMENT_API)).split("/")[0]
    return ref.get("kind") == "Deployment" and ref.get("name") == deployment and group in ("apps", "v1")


def active_peer(peers: Mapping[str, Any], own_priority: int, now: datetime) -> bool:
    """Whether this operator is the one that acts, by the rule Kopf's peering applies to its
    handlers: among the live entries of the peering object (last seen less than their lifetime ago)
    ours must hold the highest priority, alone. Our entry is found by our priority, which each replica
    draws at random at start; a tie pauses every operator in Kopf, and here too."""
    live = [p for p in peers.values() if isinstance(p, Mapping) and _alive(p, now)]
    priorities = [int(p.get("priority", 0)) for p in live]
    return priorities.count(own_priority) == 1 and max(priorities) == own_priority


def _alive(peer: Mapping[str, Any], now: datetime) -> bool:
    try:
        seen = datetime.fromisoformat(str(peer["lastseen"]))
        lifetime = timedelta(seconds=int(peer.get("lifetime", 60)))
    except (KeyError, TypeError, ValueError):
        return False
    return seen + lifetime > now


def ready_pod_addresses(pods: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """uid -> pod IP of the pods that are Ready and not being deleted."""
    found: dict[str, str] = {}
    for pod in pods:
        meta, status = pod.get("metadata", {}), pod.get("status", {})
        conditions = status.get("conditions") or []
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        if ready and status.get("podIP") and not meta.get("deletionTimestamp"):
            found[str(meta.get("uid", ""))] = str(status["podIP"])
    return found
