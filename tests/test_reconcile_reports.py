"""Which ingest pods are polled, and which report speaks for each Camera."""

from __future__ import annotations

from pantau.contract import PodStatusReport
from pantau.reconcile.facts import ObjectFacts, PodFacts, SiteObservation
from pantau.reconcile.reports import camera_reports, pods_to_poll
from tests.cases_reconcile import NOW, POOL, cam, report, site


def pod_report(pod: str, *cameras: object) -> PodStatusReport:
    return PodStatusReport.model_validate(
        {
            "pod": pod,
            "site": "alun",
            "shard": pod,
            "started_at": NOW.isoformat(),
            "cameras": list(cameras),
            "triton": {"address": "triton:8001", "reachable": True},
        }
    )


def test_only_the_pools_ready_pods_with_an_allowed_ip_are_polled() -> None:
    pods = {
        f"{POOL}-0": PodFacts(True, "10.1.0.1"),
        f"{POOL}-1": PodFacts(False, "10.1.0.2"),  # not ready
        f"{POOL}-2": PodFacts(True, ""),  # no IP yet
        f"{POOL}-3": PodFacts(True, "192.168.0.9"),  # not allowed
        f"{POOL}-ingest-0": PodFacts(True, "10.1.0.5"),  # another Site's pool
        "triton-0": PodFacts(True, "10.1.0.6"),
    }
    observed = SiteObservation(site(), (), pods)
    assert pods_to_poll(observed, lambda ip: ip.startswith("10.")) == {f"{POOL}-0": "10.1.0.1"}


def test_an_invalid_site_is_not_polled() -> None:
    broken = ObjectFacts("ns", "alun", "site-uid", 1, None, error="bad")
    observed = SiteObservation(broken, (), {f"{POOL}-0": PodFacts(True, "10.1.0.1")})
    assert pods_to_poll(observed, lambda ip: True) == {}


def test_reports_of_the_sites_own_cameras_only_the_labelled_pod_winning() -> None:
    moving = cam("b", labels={"pantau.io/shard": f"{POOL}-1"})
    observed = SiteObservation(site(), (cam("a"), moving))
    reports = {
        f"{POOL}-0": pod_report(
            f"{POOL}-0",
            report("a").model_dump(),
            report("b", "Stopped").model_dump(),
            {**report("a").model_dump(), "namespace": "elsewhere"},
            report("stranger").model_dump(),
        ),
        f"{POOL}-1": pod_report(f"{POOL}-1", report("b", "Starting").model_dump()),
    }
    chosen = camera_reports(reports, observed)
    assert sorted(chosen) == ["a", "b"]
    assert chosen["a"].namespace == "ns"
    assert chosen["b"].state == "Starting"
