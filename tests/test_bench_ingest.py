"""`pantau bench ingest` runs end to end on the real stack, with tiny settings.

Functional only: every row and the latency run are measured, every field is there and positive where
a measurement must be, the goals are computed. No timing thresholds: a shared CI machine's numbers
are not a test result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from pantau_dev.bench import ingest
from pantau_dev.bench.inference import Endpoints
from pantau_dev.stack import DevStack

pytestmark = pytest.mark.integration

# A small stream (cheap to serve and decode) with a keyframe every 0.4 s; the probe row samples
# slower than that, so its sessions decode keyframes only.
TINY = ingest.IngestConfig(
    cameras=(2,),
    rates=(0.5, 5.0),
    probe_fps=2.0,
    naive_cameras=2,
    seconds=4.0,
    warmup=2.0,
    latency_loads=((2, 2.0),),
    latency_seconds=4.0,
    stream=ingest.StreamConfig(width=640, height=360, fps=25, keyframe_interval=10),
)
# Counters that may legitimately be zero (the letterbox threads' few samples can stay under the
# clock tick that CPU times count in), and what only the Pantau sessions report.
MAY_BE_ZERO = {"keyframes_only", "errors", "other_cpu_pct", "dropped", "letterbox_cores"}
PANTAU_ONLY = {"gop_s", "letterbox_cores"}


def test_benchmark_measures_every_row_and_the_latency(dev_stack: DevStack, shared_dir: Path) -> None:
    report = ingest.run(
        TINY,
        shared_dir / "footage" / "vtest.avi",
        shared_dir / "models" / "yolox_nano.onnx",
        lambda: contextlib.nullcontext(Endpoints.of_stack(dev_stack)),
    )

    assert [(r.path, r.cameras, r.fps) for r in report.rows] == list(ingest.plan(TINY))
    for row in report.rows:
        for f in dataclasses.fields(row):
            value = getattr(row, f.name)
            if f.name in PANTAU_ONLY and row.path == "naive":
                assert value is None
            elif isinstance(value, bool | str):
                continue
            elif f.name in MAY_BE_ZERO:
                assert value >= 0, (row.path, row.fps, f.name)
            else:
                assert value > 0, (row.path, row.fps, f.name)
    assert all(r.errors == 0 for r in report.rows)
    probe = next(r for r in report.rows if r.fps == TINY.probe_fps)
    assert probe.keyframes_only == probe.cameras  # sampling slower than the GOP: keyframes only

    (latency,) = report.latency
    for f in dataclasses.fields(latency):
        value = getattr(latency, f.name)
        if isinstance(value, bool):
            continue
        assert value >= 0 if f.name in MAY_BE_ZERO else value > 0, f.name
    assert latency.p50_ms <= latency.p99_ms <= latency.max_ms

    assert [g.name for g in report.goals] == [
        "cameras/core at 0.5 fps",
        "cameras/core at 0.5 fps / naive",
        "capture -> event p50 ms",
        "capture -> event p99 ms",
    ]
    assert all(g.value > 0 for g in report.goals)

    data = json.loads(report.to_json())
    assert len(data["rows"]) == len(report.rows)
    assert data["latency"][0]["events"] == latency.events
    out = io.StringIO()
    ingest.render(report, Console(file=out, width=200))
    assert "Goals" in out.getvalue()
