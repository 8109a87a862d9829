"""`pantau bench operator` runs end to end on the real stack, with a tiny count of Cameras.

Functional only: the operator assigns every Camera, the pools exist, every measure of the report is
there and consistent. No timing thresholds: a shared CI machine's numbers are not a test result.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from rich.console import Console

from pantau_dev.bench import operator_scale
from pantau_dev.stack import DevStack

pytestmark = pytest.mark.integration


def test_benchmark_assigns_every_camera_and_reports_every_measure(dev_stack: DevStack) -> None:
    config = operator_scale.ScaleConfig(cameras=40, sites=2, concurrency=4, resync_interval=2, settle=5)
    report = operator_scale.run(dev_stack, config)

    assert report.converged
    assert report.assigned == 40
    assert report.pools == 2
    assert report.converge_s is not None
    assert report.lag_s is not None
    assert report.ratio is not None
    assert report.converge_s > 0
    assert report.ratio == pytest.approx(report.converge_s / report.baseline.seconds)
    for run in (report.baseline, report.created):
        assert run.objects == 40
        assert run.seconds > 0
        assert run.rate == pytest.approx(40 / run.seconds)

    # Each Camera got its shard label and its status: at least two writes that changed it.
    assert report.camera_changes >= 2 * 40
    assert sum(report.changes_per_camera.values()) == 40
    assert min(int(n) for n in report.changes_per_camera) >= 2
    assert report.camera_changes_at_converge <= report.camera_changes
    assert report.camera_writes >= report.camera_changes  # requests include writes that changed nothing
    assert {"APPLY cameras", "APPLY cameras/status", "APPLY statefulsets"} <= report.requests.keys()
    assert report.pool_writes >= 2 * 6  # six kinds of pool object per Site, applied at least once
    assert report.total_writes == (
        report.camera_writes + report.site_writes + report.pool_writes + report.event_writes
    )
    assert report.writes_per_camera == pytest.approx(report.camera_writes / 40)
    assert report.total_writes_per_camera == pytest.approx(report.total_writes / 40)
    assert report.failed_requests == {}
    assert report.steady_writes is not None  # counted once converged; kinds -> requests
    assert report.profile == {}  # recorded only with `profile` (py-spy)

    assert report.peak_rss_mb > 20  # a Python process with Kopf, kubernetes and pydantic loaded
    assert 0 < report.start_rss_mb <= report.peak_rss_mb
    assert report.final_rss_mb <= report.peak_rss_mb
    assert report.cpu_s["operator"] > 0
    assert report.cpu_s["kube-apiserver"] > 0
    assert report.log["first_passes"] >= 2
    assert report.log["errors"] == 0
    assert report.timeline
    assert report.timeline[-1]["assigned"] == 40

    goals = ["time to converge", "API writes per Camera", "operator peak RSS"]
    assert [g.name for g in report.goals] == goals
    assert all(g.value is not None and g.value > 0 for g in report.goals)

    data = json.loads(report.to_json())
    assert set(data) == {f.name for f in dataclasses.fields(operator_scale.Report)}
    assert data["baseline"]["objects"] == 40

    console = Console(record=True, width=200)
    operator_scale.render(report, console)
    text = console.export_text()
    for heading in ("Operator scale", "time to converge", "Write requests", "CPU seconds", "Goals"):
        assert heading in text
