"""Scaling across the cluster, on the real stack with Pantau installed by its chart: a load step at one
Site grows only that Site's pool, on its zone's nodes; measured CPU grows a pool above what its Cameras
declare; a pool no node can take says so on its Site. The scenario is `pantau bench scale`'s, small."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from pantau_dev.bench.scale import (
    HOME_ZONE,
    OTHER_ZONE,
    ScaleConfig,
    ScaleStack,
    remove_site,
    render,
    run,
    run_policy,
    scale_stack,
)
from pantau_dev.procs import wait_for
from pantau_dev.stack import KWOK_TAINT, DevStack
from tests.test_inference_triton import model_path, triton_models  # noqa: F401 - shared fixtures

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def diagnose(request: pytest.FixtureRequest, cluster: ScaleStack) -> Iterator[None]:
    """On a failure, what the operator said and what the Sites show (the stack is gone afterwards)."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        logs = cluster.tools.kubectl(
            "logs", "-n", cluster.release.namespace, "-l", "app.kubernetes.io/component=operator",
            "--tail=60", "--all-containers", check=False,
        )  # fmt: skip
        sites = cluster.tools.kubectl("get", "sites", "-n", "pantau-scale", "-o", "yaml", check=False)
        pods = cluster.tools.kubectl("get", "pods", "-A", "-o", "wide", check=False)
        print(f"\n--- operator log ---\n{logs.stdout}{logs.stderr}\n--- sites ---\n{sites.stdout[-6000:]}")
        print(f"--- pods ---\n{pods.stdout}")


@pytest.fixture(scope="module")
def cluster(
    dev_stack: DevStack,
    triton_models: str,  # noqa: F811 - the detector loaded into the stack's Triton
    shared_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ScaleStack]:
    footage = shared_dir / "footage" / "vtest.avi"
    with scale_stack(dev_stack, tmp_path_factory.mktemp("scale"), footage, print) as found:
        yield found


def condition(obj: dict[str, object], kind: str) -> dict[str, str] | None:
    status = obj.get("status") or {}
    assert isinstance(status, dict)
    return next((c for c in status.get("conditions", []) if c["type"] == kind), None)


def test_a_load_step_grows_only_that_sites_pool_on_its_zones_nodes(cluster: ScaleStack) -> None:
    other = [f"seluma-cam-{i}" for i in range(5)]
    cluster.apply(cluster.site("seluma", OTHER_ZONE, 4), *cluster.cameras("seluma", other, 1))
    wait_for(
        lambda: cluster.replicas("seluma") == (2, 2), timeout=60, what="the other zone's pool", interval=1
    )
    config = ScaleConfig(cameras=2, step=6, fps=1, per_pod=4, latency_seconds=3, noise_minutes=5, timeout=180)
    result = run_policy(cluster, config, "kota", None)
    print(f"\nstep +6 cameras -> new capacity ready, all streaming: {result.step_ready_s:.1f} s")
    assert (result.pods_before, result.pods_after) == (1, 2)
    assert cluster.pods_in_zone("kota", HOME_ZONE)
    assert result.other_site_replicas == (2, 2)
    # The resize is on the Site: how many cameras moved, against the fewest possible.
    assert result.min_moves is not None
    assert result.moved_cameras is not None
    assert result.min_moves <= result.moved_cameras <= 2
    assert result.events > 0  # the cameras' events reached the Site's webhook sink
    site = cluster.get("site", "kota")
    assert site["status"]["scaling"]["declaredPods"] == 2


def test_measured_cpu_grows_a_pool_above_what_its_cameras_declare(cluster: ScaleStack) -> None:
    # Pods that ask for 5 millicores of CPU: whatever the cameras really use is far above the target,
    # so the pool grows past the one pod their declared cost needs, up to maxPods.
    site = cluster.site("hungry", HOME_ZONE, 8)
    site["spec"]["ingest"] |= {"maxPods": 3, "resources": {"requests": {"cpu": "5m", "memory": "128Mi"}}}
    cluster.apply(site, *cluster.cameras("hungry", ["hungry-a", "hungry-b"], 2))

    def grown() -> dict[str, Any] | None:
        obj = cluster.get("site", "hungry")
        scaling = obj.get("status", {}).get("scaling", {})
        return scaling if cluster.replicas("hungry")[0] == 3 and scaling.get("cpuCores") else None

    scaling = wait_for(grown, timeout=120, what="the pool grown on measured CPU", interval=1)
    assert scaling["declaredPods"] == 1
    assert scaling["recommendedPods"] >= 3
    assert scaling["utilizationPercent"] > 100
    assert scaling["reason"] in {"ScaleUp", "AtMax", "RateLimitedUp"}


def test_a_pool_no_node_can_take_degrades_its_site(cluster: ScaleStack) -> None:
    cluster.apply(cluster.site("kaur", "kaur", 8), *cluster.cameras("kaur", ["kaur-a"], 1))

    def degraded() -> dict[str, str] | None:
        found = condition(cluster.get("site", "kaur"), "Degraded")
        return found if found is not None and found["status"] == "True" else None

    found = wait_for(degraded, timeout=60, what="Degraded=True on the Site", interval=1)
    assert found["reason"] == "Unschedulable"
    assert "kaur-ingest-0 cannot be scheduled" in found["message"]
    assert "spec.placement" in found["message"]
    events = cluster.tools.kubectl(
        "get", "events", "-n", "pantau-scale", "--field-selector", "involvedObject.name=kaur", "-o", "name"
    )
    assert events.stdout.strip()
    # A node of that zone appears (the kwok node relabelled): the pod is placed and Degraded clears.
    node = cluster.info.kwok_nodes[-1]
    cluster.tools.kubectl("label", "node", node, "topology.kubernetes.io/zone=kaur", "--overwrite")
    site = cluster.site("kaur", "kaur", 8)
    site["spec"]["placement"]["tolerations"] = [{k: KWOK_TAINT[k] for k in ("key", "value", "effect")}]
    cluster.apply(site)
    started = time.monotonic()
    wait_for(
        lambda: (condition(cluster.get("site", "kaur"), "Degraded") or {}).get("status") == "False",
        timeout=90,
        what="Degraded cleared once a node fits",
        interval=1,
    )
    print(f"\nnode of the zone added -> Degraded cleared: {time.monotonic() - started:.1f} s")


def test_bench_scale_measures_both_policies_and_writes_every_key(cluster: ScaleStack, tmp_path: Path) -> None:
    """`pantau bench scale`'s run, tiny: both policies on the stack, the table, and the JSON's keys."""
    for site in ("kota", "hungry", "kaur"):
        remove_site(cluster, site, 120)
    config = ScaleConfig(
        cameras=1, step=2, fps=1, per_pod=2, latency_seconds=2, noise_minutes=10, timeout=180
    )
    report = run(cluster, config)
    out = tmp_path / "scale.json"
    out.write_text(report.to_json())
    found = json.loads(out.read_text())
    keys = {"step_ready_s", "flaps", "moved_cameras", "min_moves", "triton_replicas_max"}
    keys |= {"latency_p50_ms", "latency_p99_ms"}
    assert keys <= set(found)
    assert keys <= set(found["naive"])
    assert found["pods_after"] > found["pods_before"]
    assert found["naive"]["pods_after"] > found["naive"]["pods_before"]
    assert found["flaps"] == 0  # the simulated noise, in the same run as the naive policy's
    assert found["naive"]["flaps"] > 0
    console = Console(record=True, width=140)
    render(report, console)
    text = console.export_text()
    assert "naive / Pantau" in text
    assert "step_ready_s" in text
