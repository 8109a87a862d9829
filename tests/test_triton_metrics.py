"""Triton's Prometheus metrics, read for scaling: parsing real exposition text (captured from the
tritonserver of the nvidia-pytriton wheel serving the repository's detector, tests/golden/
triton-metrics/), load figures from two readings, and the bounded fetch."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from pantau.triton.metrics import (
    MetricsError,
    MetricsSnapshot,
    ModelCounters,
    fetch_metrics,
    load_between,
    metrics_url,
    parse_metrics,
)

GOLDEN = Path(__file__).parent / "golden" / "triton-metrics"


def _reading(name: str, at: float) -> MetricsSnapshot:
    return parse_metrics((GOLDEN / name).read_text(), at)


def test_the_counters_of_each_model_are_read_from_real_triton_text() -> None:
    t0 = _reading("t0.txt", 100.0)
    assert t0.at == 100.0
    assert set(t0.models) == {"yolox", "yolox_jpeg"}
    assert t0.models["yolox"] == ModelCounters(
        request_success=4, inference_count=20, exec_count=2, queue_us=1254045, compute_infer_us=1769014
    )
    assert t0.models["yolox_jpeg"] == ModelCounters()


def test_versions_are_summed_and_other_metrics_ignored() -> None:
    text = """\
# HELP nv_inference_queue_duration_us Cumulative inference queuing duration in microseconds
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="det",version="1"} 1000
nv_inference_queue_duration_us{model="det",version="2"} 500
# HELP nv_inference_request_failure Number of failed inference requests, all batch sizes
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="det",reason="BACKEND",version="1"} 7
# HELP nv_cpu_utilization CPU utilization rate [0.0 - 1.0]
# TYPE nv_cpu_utilization gauge
nv_cpu_utilization 0.5
"""
    snapshot = parse_metrics(text, 0.0)
    assert snapshot.models == {"det": ModelCounters(queue_us=1500)}


def test_text_that_is_not_the_exposition_format_is_refused() -> None:
    with pytest.raises(MetricsError):
        parse_metrics('nv_inference_count{model="x" 12\n', 0.0)


def test_load_figures_from_two_real_readings() -> None:
    figure = load_between(_reading("t0.txt", 0.0), _reading("t1.txt", 10.0))
    assert figure is not None
    # t1 - t0: 4 requests, 20 inferences, 673039 us queued, 2203698 us computing, in 10 s.
    assert figure.requests_per_s == pytest.approx(0.4)
    assert figure.inferences_per_s == pytest.approx(2.0)
    assert figure.queue_ms == pytest.approx(673039 / 4 / 1000)
    assert figure.compute_ms == pytest.approx(2203698 / 4 / 1000)
    assert figure.load == pytest.approx((673039 + 2203698) / 10e6)
    # Two model instances in a replica: the same work is half a replica's worth.
    halved = load_between(_reading("t0.txt", 0.0), _reading("t1.txt", 10.0), instances_per_replica=2)
    assert halved is not None
    assert halved.load == pytest.approx(figure.load / 2)


def test_a_saturated_replica_reads_above_one_through_its_queue() -> None:
    """One instance computing all the time reads 1; a queue behind it pushes the figure past 1."""
    t0 = MetricsSnapshot(0.0, {"m": ModelCounters()})
    busy = MetricsSnapshot(10.0, {"m": ModelCounters(request_success=100, compute_infer_us=10e6)})
    queued = MetricsSnapshot(
        10.0, {"m": ModelCounters(request_success=100, compute_infer_us=10e6, queue_us=15e6)}
    )
    assert load_between(t0, busy).load == pytest.approx(1.0)
    assert load_between(t0, queued).load == pytest.approx(2.5)


def test_no_figure_across_a_restart_or_without_elapsed_time() -> None:
    t0, t1 = _reading("t0.txt", 0.0), _reading("t1.txt", 10.0)
    assert load_between(t1, MetricsSnapshot(20.0, t0.models)) is None  # counters went down
    assert load_between(t0, MetricsSnapshot(0.0, t1.models)) is None
    idle = load_between(t0, MetricsSnapshot(5.0, t0.models))
    assert idle is not None
    assert (idle.load, idle.queue_ms, idle.compute_ms) == (0, None, None)


def test_only_named_models_count_when_asked() -> None:
    t0, t1 = _reading("t0.txt", 0.0), _reading("t1.txt", 10.0)
    assert load_between(t0, t1, only=frozenset({"yolox_jpeg"})).load == 0


def _client(body: bytes, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/metrics"
        return httpx.Response(200, content=body, headers=headers or {})

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def test_fetch_parses_and_stamps_the_reading() -> None:
    async def go() -> MetricsSnapshot:
        async with _client((GOLDEN / "t1.txt").read_bytes()) as http:
            return await fetch_metrics(http, metrics_url("10.0.0.7"))

    snapshot = asyncio.run(go())
    assert snapshot.models["yolox"].request_success == 8
    assert snapshot.at > 0


def test_fetch_refuses_a_body_over_the_limit() -> None:
    async def go(body: bytes) -> None:
        async with _client(body) as http:
            await fetch_metrics(http, metrics_url("10.0.0.7", 9102), limit=1000)

    with pytest.raises(MetricsError, match="1000-byte limit"):
        asyncio.run(go(b"# padding\n" * 200))
    with pytest.raises(MetricsError, match="not UTF-8"):
        asyncio.run(go(b"\xff\xfe"))

    async def compressed() -> None:
        async with _client(b"x", {"content-encoding": "gzip"}) as http:
            await fetch_metrics(http, metrics_url("10.0.0.7"))

    with pytest.raises(MetricsError, match="compressed"):
        asyncio.run(compressed())


def test_metrics_url_brackets_ipv6() -> None:
    assert metrics_url("10.0.0.7") == "http://10.0.0.7:8002/metrics"
    assert metrics_url("fd00::7", 9000) == "http://[fd00::7]:9000/metrics"
