"""`pantau bench inference` runs end to end on the real stack, with tiny settings.

Functional only: every path produces rows with frames, the wire sizes are measured, the goals are
computed. No timing thresholds: a shared CI machine's numbers are not a test result.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from pantau.triton import contract
from pantau_dev.bench import inference
from pantau_dev.stack import DevStack, StackInfo

pytestmark = pytest.mark.integration


def test_benchmark_runs_every_path(dev_stack: DevStack, stack_info: StackInfo, shared_dir: Path) -> None:
    assert stack_info.triton_grpc
    config = inference.BenchConfig(
        frames=4, seconds=1.5, warmup=0.3, rounds=1, concurrency=(1, 2), max_batch=2, wire_frames=2
    )
    report = inference.run(
        config,
        inference.Endpoints.of_stack(dev_stack),
        shared_dir / "models" / "yolox_nano.onnx",
        shared_dir / "footage" / "vtest.avi",
    )

    keys = list(inference.plan(config))
    assert [(r.path, r.wire, r.concurrency, r.batch) for r in report.rows] == keys
    # One round: each row is its only run (runs are listed in the order they ran).
    assert (
        sorted(report.runs, key=lambda r: keys.index((r.path, r.wire, r.concurrency, r.batch))) == report.rows
    )
    assert {(r.path, r.wire) for r in report.rows} == {
        ("a", "-"),
        ("b", "uint8"),
        ("b", "jpeg"),
        ("c", "fp32"),
    }
    for row in report.rows:
        assert row.frames > 0, row
        assert row.fps > 0
        assert row.p50_ms is not None
        assert row.p99_ms is not None
        assert 0 < row.p50_ms <= row.p99_ms
        assert (row.cpu_bound_fps or 0) > 0
        if row.path != "a":
            assert (row.server_cpu_ms or 0) > 0  # Triton's process tree is measured

    sizes = {s.wire: s for s in report.wire}
    assert sizes["uint8"].tensor_bytes == 416 * 416 * 3 + 8
    assert sizes["fp32"].tensor_bytes == 416 * 416 * 3 * 4 + 8
    assert 0 < sizes["jpeg"].tensor_bytes < sizes["uint8"].tensor_bytes
    for wire in ("uint8", "jpeg", "fp32"):
        # Measured on the TCP stream: the tensors plus a little protocol, never less.
        assert sizes[wire].tensor_bytes <= sizes[wire].request_bytes < sizes[wire].tensor_bytes * 1.05
        assert sizes[wire].response_bytes > 0
    # The same work on every path: the uint8 and fp32 paths run the same network on the same pixels.
    assert sizes["-"].detections == sizes["uint8"].detections == sizes["fp32"].detections > 0

    names = [g.name for g in report.goals]
    assert len(names) == 6
    assert all(g.value > 0 for g in report.goals)
    assert all((g.cpu_bound or 0) > 0 for g in report.goals if g.name.startswith("(b)"))
    mb = {g.name: g for g in report.goals if g.name.startswith("MB")}
    assert not mb["MB/frame on the wire, uint8"].met  # 0.52 MB of pixels: a fact, not a timing
    assert mb["MB/frame on the wire, jpeg"].met

    console = Console(record=True, width=200)
    inference.render(report, console)
    text = console.export_text()
    for heading in ("Throughput and latency", "Bytes on the wire", "Goals", contract.JPEG_MODEL):
        assert heading in text
    assert json.loads(report.to_json())["rows"][0]["path"] == "a"
