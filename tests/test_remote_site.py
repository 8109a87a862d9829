"""A remote district on a simulated WAN (issue 15), on the real stack with Pantau installed by its chart:
the Site's ingest pod on the node, Triton and the event sink in a data-centre network namespace made by
the test, the link between them 2 Mbit/s (tbf), 2% loss (nftables numgen), 200 ms added to each round
trip (a userspace relay), and a 5-minute outage (the link set down). What is asserted: the bytes the pod
offers the link stay within the Site's budget, the status says the cameras are limited and how, the
outage loses no event and delivers none twice to the idempotent sink, the pod's fallback detector keeps
analysing meanwhile (its events marked), and frames are analysed again within 10 s of the link's return.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console

from pantau_dev.bench import link, link_recall
from pantau_dev.bench.link import LinkConfig, LinkStack, measure
from pantau_dev.procs import wait_for
from pantau_dev.receiver import ReceiverSummary
from pantau_dev.stack import DevStack
from tests.test_chart_triton import model_download  # noqa: F401 - shared fixture
from tests.test_inference_triton import model_path, triton_models  # noqa: F401 - shared fixtures

pytestmark = pytest.mark.integration

BUDGET_BPS = 2_000_000  # the link's rate and the Site's spec.uplink.bandwidth
LOSS_PERCENT = 2.0
OUTAGE_S = 300.0  # the 5 minutes, in real time
RECOVERY_S = 10.0
PRIORITIES = {"gerbang": 90, "pasar": 70, "parkir": 50, "terminal": 30, "sekolah": 10, "kantor": 10}
FPS = 2.0  # per camera: six cameras at 2 fps of JPEG quality 80 ask for about 2.4 Mbit/s


@pytest.fixture(scope="module")
def cluster(
    dev_stack: DevStack,
    triton_models: str,  # noqa: F811 - the detector's repository, built for the data centre's Triton
    model_download: tuple[str, str],  # noqa: F811 - where the pods fetch the fallback detector
    shared_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LinkStack]:
    found = LinkStack(
        dev_stack,
        tmp_path_factory.mktemp("district"),
        shared_dir / "footage" / "vtest.avi",
        print,
        model_download=model_download,
    )
    try:
        found.up()
        yield found
    finally:
        found.down()


@pytest.fixture(autouse=True)
def diagnose(request: pytest.FixtureRequest, cluster: LinkStack) -> Iterator[None]:
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        logs = cluster.tools.kubectl(
            "logs", "-n", "pantau-district", "district-ingest-0", "--tail=80", check=False
        )
        status = cluster.pod_status("district")
        print(f"\n--- ingest pod ---\n{logs.stdout}{logs.stderr}\n--- status ---\n{status}")
        print(f"--- counters ---\n{cluster.counters()}")


def condition(obj: dict[str, Any], kind: str) -> dict[str, str] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == kind), None)


def received(cluster: LinkStack) -> ReceiverSummary:
    assert cluster.receiver is not None
    return cluster.receiver.summary()


def test_a_district_on_a_thin_lossy_link_stays_in_budget_and_survives_a_5_minute_outage(
    cluster: LinkStack,
) -> None:
    cluster.wan.shape(BUDGET_BPS, loss_percent=LOSS_PERCENT)
    budget = {"bandwidth": "2M", "maxLatencyMilliseconds": 5000}
    cluster.apply(
        cluster.site("district", budget, fallback=True), *cluster.cameras("district", PRIORITIES, FPS)
    )

    # ----- shaped: within the budget, and the status says how each camera is sent -----
    def limited() -> list[dict[str, Any]] | None:
        cams = [c for c in cluster.get("cameras")["items"] if c["metadata"]["name"] in PRIORITIES]
        ok = len(cams) == len(PRIORITIES) and all(
            c.get("status", {}).get("streaming") and (condition(c, "Degraded") or {}).get("status") == "True"
            for c in cams
        )
        return cams if ok else None

    cams = wait_for(limited, timeout=240, what="every camera streaming, limited by the uplink", interval=2)
    for cam in cams:
        degraded = condition(cam, "Degraded")
        assert degraded is not None
        assert degraded["reason"] == "UplinkLimited"
        uplink = cam["status"]["uplink"]
        assert uplink["limited"] is True
        assert f"quality {uplink['quality']}" in degraded["message"]
    site_degraded = condition(cluster.get("site", "district"), "Degraded")
    assert site_degraded is not None
    assert (site_degraded["status"], site_degraded["reason"]) == ("True", "UplinkLimited")

    offered = measure(cluster, 40.0)
    print(f"\noffered to the link: {offered * 8 / 1e6:.3f} Mbit/s (budget {BUDGET_BPS / 1e6:.1f})")
    assert offered * 8 <= 1.10 * BUDGET_BPS
    assert offered * 8 >= 0.5 * BUDGET_BPS  # it uses the link, not a trickle
    figures = cluster.figures("district")
    fps = {u["fps"] for u in figures.uplink}
    print(f"plan: {figures.uplink}")
    by_priority = sorted(figures.uplink, key=lambda u: u["fps"])
    assert by_priority[0]["fps"] <= by_priority[-1]["fps"]
    assert fps  # every camera has a plan
    assert figures.processed > 0

    # ----- the outage: 5 minutes with the link down -----
    before = cluster.figures("district")
    cluster.wan.down()
    down_at = time.monotonic()

    def unavailable() -> bool:
        cams = [c for c in cluster.get("cameras")["items"] if c["metadata"]["name"] in PRIORITIES]
        return all((condition(c, "Ready") or {}).get("reason") == "InferenceUnavailable" for c in cams)

    wait_for(unavailable, timeout=60, what="InferenceUnavailable on every camera", interval=1)
    print(f"InferenceUnavailable shown {time.monotonic() - down_at:.1f} s after the link went down")
    wait_for(
        lambda: time.monotonic() - down_at >= OUTAGE_S or None,
        timeout=OUTAGE_S + 60,
        what="the outage's end",
        interval=5,
    )
    during = cluster.figures("district")
    assert during.local > before.local  # the fallback detector analysed frames meanwhile
    print(f"the fallback analysed {during.local - before.local} frames during the outage")
    # Every sample is a result (Triton's, the fallback's) or a drop counted with its reason.
    assert sum(during.dropped.values()) > sum(before.dropped.values())
    assert set(during.dropped) <= {"InferenceUnavailable", "Timeout", "QueueFull", "Stale"}
    assert during.sink_pending > 0  # kept on the pod's volume while the sink cannot be reached
    assert during.sink_dropped == 0

    # ----- the link returns: analysed by Triton again within 10 s -----
    cluster.wan.restore()
    back_at = time.monotonic()
    returned = during.by_triton

    def analysed_again() -> float | None:
        now = cluster.figures("district")
        return time.monotonic() - back_at if now.by_triton > returned else None

    recovery = wait_for(analysed_again, timeout=60, what="frames analysed by Triton again", interval=0.5)
    print(f"frames analysed by Triton again {recovery:.1f} s after the link returned")
    assert recovery <= RECOVERY_S

    def ready_again() -> bool:
        cams = [c for c in cluster.get("cameras")["items"] if c["metadata"]["name"] in PRIORITIES]
        return all((condition(c, "Ready") or {}).get("status") == "True" for c in cams)

    wait_for(ready_again, timeout=60, what="the cameras Ready again", interval=1)
    print(f"every camera Ready again {time.monotonic() - back_at:.1f} s after the link returned")

    # ----- nothing lost, nothing twice: stop the cameras and let the backlog drain -----
    for name in PRIORITIES:
        cluster.tools.kubectl(
            "patch", "camera", name, "-n", "pantau-district", "--type=merge", "-p", '{"spec":{"paused":true}}'
        )
    drained = wait_for(
        lambda: ((f := cluster.figures("district")).sink_pending == 0 and f) or None,
        timeout=300,
        what="the backlog delivered",
        interval=2,
    )
    summary = received(cluster)
    print(f"published {drained.sink_published}, delivered {drained.sink_delivered}, received {summary}")
    assert drained.sink_dropped == 0
    assert summary.unique == drained.sink_published  # every event the pod published arrived, once or more
    again = summary.received - summary.unique
    print(f"delivered again after a lost answer (the idempotent receiver keeps one): {again}")
    assert cluster.receiver is not None
    local_events = [d for d in cluster.receiver.deliveries() if d.body.get("inference") == "local"]
    assert local_events  # the fallback's events, marked as such, delivered after the outage


def test_the_receiver_is_reachable_only_through_the_link(cluster: LinkStack) -> None:
    """The data centre is a namespace of its own: its receiver answers over the veth, and not at all while
    the link is down (so what the pod sends cannot take another path)."""
    assert cluster.receiver is not None
    url = f"{cluster.receiver.base_url}/summary"
    assert httpx.get(url, timeout=5).status_code == 200
    cluster.wan.down()
    try:
        with pytest.raises(httpx.HTTPError):
            httpx.get(url, timeout=2)
    finally:
        cluster.wan.restore()
    wait_for(
        lambda: httpx.get(url, timeout=2).status_code == 200, timeout=10, what="the link back", interval=0.5
    )


def test_bench_link_measures_both_modes_and_writes_every_key(
    cluster: LinkStack,
    shared_dir: Path,
    model_path: Path,  # noqa: F811 - the shared fixture, imported above
    tmp_path: Path,
) -> None:
    """`pantau bench link`'s run, small: one budget, both modes, the table and the JSON's keys."""
    footage = shared_dir / "footage" / "vtest.avi"
    truth = shared_dir / "footage" / "PETS09-S2L1-gt.txt"

    def recall(settings: list[tuple[int, float]]) -> dict[tuple[int, float], float]:
        rows = link_recall.recall_table(
            footage, truth, model_path, [(q, s, 10.0) for q, s in settings], max_frames=30
        )
        return {(r.setting.quality, r.setting.scale): r.recall for r in rows}

    config = LinkConfig(budgets_mbps=(2.0,), cameras=2, fps=4.0, window=15.0, outage=5.0, timeout=180.0)
    report = link.run(cluster, config, recall)
    out = Console(width=160, record=True)
    link.render(report, out)
    print(out.export_text())
    found = json.loads(report.to_json())
    (tmp_path / "link.json").write_text(report.to_json())
    row = found["budgets"][0]
    for key in ("budget_mbps", "bytes_per_s", "effective_fps", "recall", "events_lost", "recovery_s"):
        assert key in row
        assert key in row["no_adaptation"]
    assert row["budget_mbps"] == 2.0
    assert row["bytes_per_s"] * 8 <= 1.1 * 2e6
    assert row["events_lost"] == 0
    assert row["quality"] is not None  # Pantau sent JPEGs at a planned quality
    assert row["no_adaptation"]["quality"] is None  # and without a budget, raw pixels
    # Adaptation analyses more frames through the same link than raw pixels do.
    assert row["effective_fps"] > row["no_adaptation"]["effective_fps"]
    assert 0 <= row["recall"] <= 1
