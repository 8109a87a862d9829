"""A Site's pool size: the declared cost's floor at once, measured CPU above it with HPA rules, and
what the Site's status and Events say about it. Pure, in simulated time."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from pantau.builders.pool import DEFAULT_RESOURCES
from pantau.models.site import SiteSpec
from pantau.reconcile.facts import PodFacts
from pantau.reconcile.pool_size import Memory, cpu_request, scaling_status, size
from pantau.reconcile.site import plan_site
from tests.cases_reconcile import NOW, POOL, SETTINGS, cam, observe, site


def spec(**ingest: object) -> SiteSpec:
    return SiteSpec.model_validate({"displayName": "A", "region": "B", "ingest": ingest})


REQUEST = 0.25  # the default pods' CPU request


def test_a_new_pool_starts_at_what_the_declared_cost_needs() -> None:
    sizing = size(
        spec(maxPods=8), declared=3, pods=0, ready=0, cores=None, request=REQUEST, memory=None, now=NOW
    )
    assert sizing.shards == 3
    assert sizing.memory.replicas == 3


def test_cameras_heavier_than_declared_grow_the_pool_and_a_dip_does_not_shrink_it() -> None:
    s = spec(maxPods=8)
    memory = Memory(2, size(s, 2, 2, 2, None, REQUEST, None, NOW).memory.state)
    # Two pods at 0.25 cores each would be 100% busy at 0.5 cores; measured 0.7: 0.7 / (0.25 x 0.7) = 4.
    grown = size(s, 2, 2, 2, 0.7, REQUEST, memory, NOW + timedelta(seconds=15))
    assert (grown.shards, grown.decision.reason) == (4, "ScaleUp")
    # The load falls back: the pool keeps its pods for the scale-down window (300 s by default) ...
    memory, at = grown.memory, NOW + timedelta(seconds=30)
    for _ in range(19):
        held = size(s, 2, 4, 4, 0.3, REQUEST, memory, at)
        assert held.shards == 4, held.decision
        memory, at = held.memory, at + timedelta(seconds=15)
    # ... and then follows it down, never below the declared floor.
    later = size(s, 2, 4, 4, 0.3, REQUEST, memory, at + timedelta(seconds=15))
    assert later.shards == 2


def test_a_declared_step_is_applied_at_once_and_max_pods_always_holds() -> None:
    s = spec(maxPods=5)
    first = size(s, 1, 1, 1, 0.05, REQUEST, None, NOW)
    step = size(s, 4, 1, 1, 0.05, REQUEST, first.memory, NOW + timedelta(seconds=5))
    assert (step.shards, step.decision.reason) == (4, "AtMin")  # the floor moved: no waiting, no rate limit
    # The step counts against this period's scale-up allowance (max of +4 pods, +100%): one more pod.
    hot = size(s, 4, 4, 4, 10.0, REQUEST, step.memory, NOW + timedelta(seconds=10))
    assert (hot.shards, hot.decision.reason) == (5, "RateLimitedUp")
    hotter = size(s, 4, 5, 5, 10.0, REQUEST, hot.memory, NOW + timedelta(seconds=30))
    assert (hotter.shards, hotter.decision.reason) == (5, "AtMax")


def test_without_measurements_the_declared_cost_stands_for_the_load() -> None:
    s = spec(maxPods=8, scaling={"scaleDown": {"stabilizationWindowSeconds": 60}})
    start = size(s, 3, 3, 0, None, REQUEST, None, NOW)
    assert (start.shards, start.decision.reason) == (3, "WithinTolerance")
    # Cameras deleted: the pool shrinks after the Site's scale-down window, not at once.
    soon = size(s, 1, 3, 0, None, REQUEST, start.memory, NOW + timedelta(seconds=30))
    assert soon.shards == 3
    done = size(s, 1, 3, 0, None, REQUEST, soon.memory, NOW + timedelta(seconds=61))
    assert done.shards == 1


def test_the_cpu_request_comes_from_the_site_else_the_defaults() -> None:
    assert cpu_request(spec(), DEFAULT_RESOURCES) == 0.25
    assert cpu_request(spec(resources={"requests": {"cpu": "1500m"}}), DEFAULT_RESOURCES) == 1.5
    assert cpu_request(spec(resources={"limits": {"cpu": 2}}), DEFAULT_RESOURCES) == 2.0
    assert cpu_request(spec(resources={"requests": {"memory": "1Gi"}}), DEFAULT_RESOURCES) == 1.0


def test_the_status_keeps_noisy_figures_until_they_move_a_step() -> None:
    s = spec()
    sizing = size(s, 1, 1, 1, 0.1, REQUEST, None, NOW)
    first = scaling_status(sizing, 1, None, None, NOW)
    assert first == {
        "declaredPods": 1,
        "recommendedPods": 1,
        "reason": "Steady",  # 40% of the request, below the 70% target, yet one pod is the fewest
        "cpuCores": 0.1,
        "utilizationPercent": 40,
    }
    noisy = size(s, 1, 1, 1, 0.11, REQUEST, sizing.memory, NOW + timedelta(seconds=5))
    assert scaling_status(noisy, 1, first, None, NOW) == first  # 44%: no rewrite
    moved = size(s, 1, 1, 1, 0.15, REQUEST, sizing.memory, NOW + timedelta(seconds=5))
    assert scaling_status(moved, 1, first, None, NOW)["utilizationPercent"] == 60


def test_a_resize_tells_how_many_cameras_moved_against_the_fewest_possible() -> None:
    cameras = [cam(f"c{i}", fps=5) for i in range(16)]
    the_site = site(maxPods=4)
    first = plan_site(observe(the_site, cameras, {f"{POOL}-{i}": True for i in range(2)}), SETTINGS, NOW)
    assert first.children[4]["spec"]["replicas"] == 2
    labelled = [
        cam(c.name, fps=5, labels={"pantau.io/shard": str(first.camera_labels[c.name])}) for c in cameras
    ]
    pods = {f"{POOL}-{i}": True for i in range(2)}
    # The two pods report 0.9 cores together: 0.9 / (0.25 x 0.7) -> 6, capped at maxPods 4.
    plan = plan_site(
        observe(the_site, labelled, pods),
        SETTINGS,
        NOW + timedelta(seconds=5),
        cores=0.9,
        memory=first.memory,
    )
    assert plan.children[4]["spec"]["replicas"] == 4
    scaling = plan.site_status["scaling"]
    assert scaling["reason"] == "AtMax"
    assert scaling["minMoves"] == 8  # 16 cameras over 4 pods: half of each old pod's must go
    assert scaling["minMoves"] <= scaling["movedCameras"] <= 16
    moved = sum(1 for c in labelled if plan.camera_labels[c.name] != c.labels["pantau.io/shard"])
    assert scaling["movedCameras"] == moved
    [told] = [e for e in plan.events if e.reason == "PoolResized"]
    assert f"from 2 to 4 pods (AtMax): {moved} cameras moved, 8 had to" in told.message


@pytest.mark.parametrize("percent", [0, 101])
def test_the_target_is_a_percentage(percent: int) -> None:
    with pytest.raises(ValueError, match="targetUtilizationPercent"):
        spec(scaling={"targetUtilizationPercent": percent})


def test_a_pod_no_node_fits_degrades_the_site_with_the_schedulers_words() -> None:
    cameras = [cam(f"c{i}") for i in range(12)]
    observed = observe(site(maxPods=4), cameras, {f"{POOL}-0": True})
    why = "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."
    observed = replace(observed, pods={**observed.pods, f"{POOL}-1": PodFacts(False, "", unschedulable=why)})
    plan = plan_site(observed, SETTINGS, NOW)
    degraded = next(c for c in plan.site_status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "Unschedulable")
    assert f"pod {POOL}-1 cannot be scheduled: {why}" in degraded["message"]
    assert [e.reason for e in plan.events if e.type == "Warning"] == ["Unschedulable"]
    # Told once: the next pass, with the condition already written, posts nothing new.
    again = plan_site(replace(observed, site=replace(observed.site, status=plan.site_status)), SETTINGS, NOW)
    assert not [e for e in again.events if e.reason == "Unschedulable"]
    fine = plan_site(observe(site(maxPods=4), cameras, {f"{POOL}-0": True, f"{POOL}-1": True}), SETTINGS, NOW)
    degraded = next(c for c in fine.site_status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("False", "Scheduled")
