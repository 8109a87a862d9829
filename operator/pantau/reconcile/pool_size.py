"""How many pods a Site's ingest pool runs: the Cameras' declared cost sets a floor, their measured CPU
raises it. Pure; the handler keeps the scaler's state between passes and passes the clock.

Two signals, one policy (reconcile/scaling.py, the HorizontalPodAutoscaler's rules):

- **Declared cost** (fps x pixels, `assignment.desired_pods`) is known the moment a Camera is created,
  before any frame: twenty new cameras get their pods at once, not after a measurement window. It is
  the policy's lower bound, so it is applied immediately, like an HPA's minReplicas.
- **Measured CPU** (each pod's /status `cpu_cores`, all of its process) catches what the declaration
  misses: busier scenes, costlier codecs, cameras declared too light. utilisation = cores used / (ready
  pods x each pod's CPU request), the HPA's definition; the policy grows the pool above the floor when
  it exceeds the Site's target, and shrinks it back only after the scale-down window.

Declared cost decides which pod reads which camera (`assignment.assign`), measured load only how many
pods there are: moving cameras on every fluctuation of a measurement would drop streams for nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from pantau.models.site import Scaling, SiteSpec, quantity_value
from pantau.reconcile.scaling import Behavior, Decision, Sample, ScalerState, ScalingRule, decide

# A status field moves only when the utilisation moved this many points: no write per noisy pass.
UTILIZATION_STEP: Final = 10


@dataclass(frozen=True)
class Memory:
    """What the operator keeps of one pool between passes (in memory: a restart starts afresh, carefully)."""

    replicas: int
    state: ScalerState


@dataclass(frozen=True)
class Sizing:
    shards: int
    declared: int
    decision: Decision
    cores: float | None  # measured, None when no pod reported
    request: float  # each pod's CPU request, cores: what utilisation is measured against
    memory: Memory


def behavior(scaling: Scaling) -> Behavior:
    """The Site's scaling fields as the policy's Behavior."""
    up, down = scaling.scale_up, scaling.scale_down
    return Behavior(
        target=scaling.target_utilization_percent / 100,
        tolerance=scaling.tolerance_percent / 100,
        up=ScalingRule(
            stabilization_s=up.stabilization_window_seconds,
            pods=up.pods,
            percent=up.percent,
            period_s=up.period_seconds,
        ),
        down=ScalingRule(
            stabilization_s=down.stabilization_window_seconds,
            pods=down.pods,
            percent=down.percent,
            period_s=down.period_seconds,
        ),
    )


def cpu_request(spec: SiteSpec, default: Mapping[str, Any]) -> float:
    """Each pod's CPU request in cores: the Site's, else the operator's default; 1 core when neither
    names one (there is then no request to measure utilisation against, so a core stands in)."""
    resources = spec.ingest.resources
    if resources is None:
        asked = (default.get("requests") or {}).get("cpu") or (default.get("limits") or {}).get("cpu")
    else:  # a limit alone is also the request (the API server's defaulting)
        requests, limits = resources.requests, resources.limits
        asked = (requests.cpu if requests else None) or (limits.cpu if limits else None)
    value = quantity_value(asked) if asked is not None else Decimal(1)
    return float(value) if value > 0 else 1.0


def size(
    spec: SiteSpec,
    declared: int,
    pods: int,
    ready: int,
    cores: float | None,
    request: float,
    memory: Memory | None,
    now: datetime,
) -> Sizing:
    """The pool's size this pass. `pods`/`ready` are the pool's pods the watch shows; `cores` the CPU
    its pods reported (None: none reported); `memory` what the last pass kept (None after a start)."""
    at = now.timestamp()
    if memory is not None:  # the policy's clock must not run backwards (a wall clock stepped back)
        at = max([at, *(when for when, _ in memory.state.recommendations + memory.state.changes)])
    ingest = spec.ingest
    lo = min(max(ingest.min_pods, declared), ingest.max_pods)
    if memory is None:
        # After a start: the pods that run count as recommended now, so nothing is removed before a
        # full scale-down window of measurements; a new pool starts at its floor.
        current = pods or lo
        memory = Memory(current, ScalerState.resumed(at, current))
    rules = behavior(ingest.scaling)
    if cores is None:
        # Nothing measured yet (pods starting, or none can report): the declared cost stands for the
        # load, so a pool shrinks after its Cameras are deleted, through the same scale-down window.
        sample = Sample(at=at, load=declared * request * rules.target, ready=memory.replicas)
    else:
        sample = Sample(at=at, load=cores, ready=min(ready, memory.replicas))
    decision = decide(sample, memory.replicas, lo, ingest.max_pods, rules, memory.state, request)
    return Sizing(
        shards=decision.replicas,
        declared=declared,
        decision=decision,
        cores=cores,
        request=request,
        memory=Memory(decision.replicas, decision.state),
    )


def scaling_status(
    sizing: Sizing,
    ready: int,
    previous: Mapping[str, Any] | None,
    moved: tuple[int, int] | None,
    now: datetime,
) -> dict[str, Any]:
    """The Site's status.scaling: what this size was decided on. Figures that noise moves on every pass
    keep their last written value until they change by a step, so a steady pool is not rewritten."""
    previous = previous or {}
    status: dict[str, Any] = {
        "declaredPods": sizing.declared,
        "recommendedPods": sizing.decision.raw,
        "reason": sizing.decision.reason,
    }
    if sizing.cores is not None and ready:
        percent = round(100 * sizing.cores / (sizing.request * ready))
        before = previous.get("utilizationPercent")
        if isinstance(before, int) and abs(percent - before) < UTILIZATION_STEP:
            percent, cores = before, previous.get("cpuCores", round(sizing.cores, 2))
        else:
            cores = round(sizing.cores, 2)
        status |= {"cpuCores": cores, "utilizationPercent": percent}
    if moved is not None:
        status |= {"lastScaleTime": _time(now), "movedCameras": moved[0], "minMoves": moved[1]}
    else:
        status |= {k: previous[k] for k in ("lastScaleTime", "movedCameras", "minMoves") if k in previous}
    return status


def _time(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")
