"""The Triton scaler's decisions: who owns the replicas (an HPA, the active peer), and how many
the load asks for within the chart's bounds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from pantau.reconcile.scaling import Behavior, ScalerState
from pantau.reconcile.triton import (
    TritonBounds,
    TritonObservation,
    active_peer,
    hpa_targeting,
    plan_triton,
    ready_pod_addresses,
    scaled_event,
)
from pantau.settings import OperatorSettings

BOUNDS = TritonBounds(lo=1, hi=3, behavior=Behavior(target=0.5))


def _started(replicas: int, at: float = 0.0) -> ScalerState:
    """The state after the scaler's first pass, which only takes the running replicas as its start."""
    plan = plan_triton(TritonObservation(at=at, replicas=replicas, loads=[]), BOUNDS, None)
    assert (plan.replicas, plan.reason) == (None, "Resumed")
    assert plan.state is not None
    return plan.state


def test_a_saturated_replica_gets_company_and_the_bound_holds() -> None:
    plan = plan_triton(TritonObservation(at=100.0, replicas=1, loads=[0.9]), BOUNDS, _started(1, at=85.0))
    assert (plan.replicas, plan.reason) == (2, "ScaleUp")
    assert "1 -> 2" in plan.message
    assert "load 0.90" in plan.message
    # Far more load than three replicas can take: three, the chart's maximum.
    plan = plan_triton(TritonObservation(at=115.0, replicas=2, loads=[3.0, 3.0]), BOUNDS, plan.state)
    assert (plan.replicas, plan.reason) == (3, "AtMax")


def test_load_within_the_tolerance_changes_nothing() -> None:
    plan = plan_triton(TritonObservation(at=15.0, replicas=2, loads=[0.52, 0.5]), BOUNDS, _started(2))
    assert plan.replicas is None
    assert plan.reason == "WithinTolerance"
    assert plan.state is not None


def test_a_fresh_start_removes_nothing_at_once() -> None:
    """An operator that restarts while Triton runs three replicas must not drop two on its first pass
    (the scale-down window counts the running replicas as recommended)."""
    plan = plan_triton(TritonObservation(at=15.0, replicas=3, loads=[0.0, 0.0, 0.0]), BOUNDS, _started(3))
    assert (plan.replicas, plan.reason) == (None, "StabilizedDown")
    later = plan_triton(TritonObservation(at=316.0, replicas=3, loads=[0.0, 0.0, 0.0]), BOUNDS, plan.state)
    assert later.replicas == 1


def test_ready_pods_without_a_reading_are_not_taken_for_idle_ones() -> None:
    plan = plan_triton(TritonObservation(at=15.0, replicas=2, loads=[]), BOUNDS, _started(2))
    assert plan.replicas is None
    assert plan.reason == "AwaitingReady"


def test_below_the_minimum_the_bound_is_restored() -> None:
    plan = plan_triton(TritonObservation(at=15.0, replicas=0, loads=[]), BOUNDS, _started(0))
    assert (plan.replicas, plan.reason) == (1, "AtMin")


def test_an_hpa_owns_the_replicas() -> None:
    plan = plan_triton(
        TritonObservation(at=0.0, replicas=1, loads=[5.0], hpa="triton"), BOUNDS, ScalerState()
    )
    assert plan.replicas is None
    assert plan.reason == "HPAPresent"
    assert plan.state is None  # when it goes, the operator starts afresh


def _hpa(name: str, target: str, kind: str = "Deployment", api: str = "apps/v1") -> dict[str, object]:
    return {
        "metadata": {"name": name},
        "spec": {"scaleTargetRef": {"apiVersion": api, "kind": kind, "name": target}},
    }


def test_only_an_hpa_on_this_deployment_counts() -> None:
    others = [_hpa("ingest", "triton", kind="StatefulSet"), _hpa("web", "web")]
    assert hpa_targeting(others, "triton") is None
    assert hpa_targeting([*others, _hpa("keda-hpa-triton", "triton"), _hpa("b", "triton")], "triton") == "b"
    assert hpa_targeting([{"metadata": {"name": "broken"}, "spec": {}}], "triton") is None


NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _peer(priority: int, seen_ago: float, lifetime: int = 15) -> dict[str, object]:
    return {
        "priority": priority,
        "lifetime": lifetime,
        "lastseen": (NOW - timedelta(seconds=seen_ago)).isoformat(),
    }


@pytest.mark.parametrize(
    ("peers", "active"),
    [
        ({"a": _peer(500, 1)}, True),
        ({"a": _peer(500, 1), "b": _peer(100, 1)}, True),
        ({"a": _peer(500, 1), "b": _peer(900, 1)}, False),
        ({"a": _peer(500, 1), "b": _peer(900, 30)}, True),  # b is dead: a takes over
        ({"a": _peer(500, 1), "b": _peer(500, 1)}, False),  # a tie pauses everyone, as in Kopf
        ({"a": _peer(500, 30)}, False),  # our own entry expired: not yet (or no longer) acting
        ({}, False),
        ({"a": {"priority": 500}}, False),
    ],
)
def test_only_the_active_peer_scales(peers: dict[str, object], active: bool) -> None:
    assert active_peer(peers, 500, NOW) is active


def test_only_ready_pods_with_an_address_are_read() -> None:
    def pod(uid: str, ready: str, ip: str = "10.0.0.1", deleting: bool = False) -> dict[str, object]:
        meta: dict[str, object] = {"uid": uid}
        if deleting:
            meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        status = {"podIP": ip, "conditions": [{"type": "Ready", "status": ready}]}
        return {"metadata": meta, "status": status}

    pods = [pod("a", "True"), pod("b", "False"), pod("c", "True", ip=""), pod("d", "True", deleting=True)]
    assert ready_pod_addresses(pods) == {"a": "10.0.0.1"}


def test_a_scaling_is_told_as_an_event_on_the_deployment() -> None:
    event = scaled_event("pantau-system", "pantau-triton", "u-1", "1 -> 2 (ScaleUp)", NOW)
    assert event["metadata"] == {"generateName": "pantau-triton.", "namespace": "pantau-system"}
    assert event["involvedObject"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "namespace": "pantau-system",
        "name": "pantau-triton",
        "uid": "u-1",
    }
    assert (event["type"], event["reason"], event["message"]) == (
        "Normal",
        "TritonScaled",
        "1 -> 2 (ScaleUp)",
    )
    assert event["lastTimestamp"] == "2026-01-01T12:00:00Z"


def test_the_operator_refuses_bounds_that_cross_and_a_target_that_is_not_namespace_slash_name() -> None:
    with pytest.raises(ValidationError, match="PANTAU_TRITON_MIN_REPLICAS"):
        OperatorSettings(triton_min_replicas=5, triton_max_replicas=2)
    with pytest.raises(ValidationError, match="triton_deployment"):
        OperatorSettings(triton_deployment="pantau-triton")
    assert OperatorSettings(triton_deployment="pantau-system/pantau-triton").triton_deployment
