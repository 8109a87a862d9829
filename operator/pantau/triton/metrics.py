"""Triton's own Prometheus metrics, read for scaling: fetch (bounded), parse, and turn two readings
into load figures.

Triton counts per model and version, cumulatively since it started (docs: user_guide/metrics.md):
requests that succeeded, inferences (a request of batch size n counts n), model executions, and the
microseconds requests spent waiting in the scheduler's queue and in the model's compute. A single
reading says little; the difference of two readings over the time between them is the rate.

Why the load figure holds queue time and not compute time alone: compute time per second is capped
by the model instances (one instance cannot compute more than one second per second), so a saturated
replica and a replica working at exactly its limit would read the same. Once requests arrive faster
than a replica computes them they wait, and the waiting grows with the backlog. By Little's law the
sum (queue + compute) per second of wall time is the mean number of requests resident in Triton;
divided by the instances of one replica it reads as replicas' worth of work: below 1 when instances
sit idle part of the time, above 1 as soon as a queue builds, and the further above, the longer it is.
Under dynamic batching every request of a batch is charged the batch's compute time, so a replica
that batches well reads higher than its instance use; set the policy's target with that in mind.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields

import httpx
from prometheus_client.parser import text_string_to_metric_families

METRICS_PORT = 8002
METRICS_PATH = "/metrics"
# A Triton with a few dozen models answers in tens of kilobytes; anything far beyond is not Triton.
MAX_METRICS_BYTES = 1 << 20

# Triton's metric name -> our field name.
_COUNTERS = {
    "nv_inference_request_success": "request_success",
    "nv_inference_count": "inference_count",
    "nv_inference_exec_count": "exec_count",
    "nv_inference_queue_duration_us": "queue_us",
    "nv_inference_compute_infer_duration_us": "compute_infer_us",
}


class MetricsError(RuntimeError):
    """Triton's metrics could not be read or made no sense (too large, not the exposition format)."""


@dataclass(frozen=True)
class ModelCounters:
    """One model's cumulative counters, summed over its versions (and instances)."""

    request_success: float = 0.0
    inference_count: float = 0.0
    exec_count: float = 0.0
    queue_us: float = 0.0
    compute_infer_us: float = 0.0

    def __add__(self, other: ModelCounters) -> ModelCounters:
        return ModelCounters(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __sub__(self, other: ModelCounters) -> ModelCounters:
        return ModelCounters(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))


@dataclass(frozen=True)
class MetricsSnapshot:
    """One reading of one Triton server: `at` is a monotonic clock in seconds, `models` the counters
    by model name."""

    at: float
    models: Mapping[str, ModelCounters]

    def total(self, only: frozenset[str] | None = None) -> ModelCounters:
        picked = (c for name, c in self.models.items() if only is None or name in only)
        return sum(picked, ModelCounters())


@dataclass(frozen=True)
class TritonLoad:
    """What one server did between two readings. The per-request means are None when it served no
    request; `load` is in replicas' worth of work (see the module's docstring)."""

    elapsed_s: float
    requests_per_s: float
    inferences_per_s: float
    queue_ms: float | None
    compute_ms: float | None
    load: float


def parse_metrics(text: str, at: float) -> MetricsSnapshot:
    """The counters Triton exposes per model, summed over versions; other metrics are ignored."""
    per_model: dict[str, dict[str, float]] = {}
    try:
        for family in text_string_to_metric_families(text):
            field = _COUNTERS.get(family.name)
            if field is None:
                continue
            # The parser names a counter's samples NAME_total (and may add NAME_created).
            for sample in family.samples:
                model = sample.labels.get("model")
                if sample.name not in (family.name, f"{family.name}_total") or model is None:
                    continue
                if not math.isfinite(sample.value):
                    continue
                counters = per_model.setdefault(model, {})
                counters[field] = counters.get(field, 0.0) + sample.value
    except ValueError as exc:
        raise MetricsError(f"not Prometheus text: {exc}") from exc
    return MetricsSnapshot(at, {name: ModelCounters(**c) for name, c in sorted(per_model.items())})


def load_between(
    t0: MetricsSnapshot,
    t1: MetricsSnapshot,
    instances_per_replica: int = 1,
    only: frozenset[str] | None = None,
) -> TritonLoad | None:
    """Load figures from two readings of the same server, t0 before t1. None when no time passed
    or a counter went down (the server restarted in between: its counters began again at zero)."""
    elapsed = t1.at - t0.at
    delta = t1.total(only) - t0.total(only)
    if elapsed <= 0 or any(getattr(delta, f.name) < 0 for f in fields(delta)):
        return None
    requests = delta.request_success
    return TritonLoad(
        elapsed_s=elapsed,
        requests_per_s=requests / elapsed,
        inferences_per_s=delta.inference_count / elapsed,
        queue_ms=delta.queue_us / requests / 1000 if requests else None,
        compute_ms=delta.compute_infer_us / requests / 1000 if requests else None,
        load=(delta.queue_us + delta.compute_infer_us) / (elapsed * 1e6 * max(1, instances_per_replica)),
    )


async def fetch_metrics(http: httpx.AsyncClient, url: str, limit: int = MAX_METRICS_BYTES) -> MetricsSnapshot:
    """GET Triton's metrics at `url` and parse them, stamped with the monotonic clock when the body
    was in; MetricsError past `limit` bytes or on a body that is not the exposition format. The
    caller bounds the time (the client's timeout)."""
    async with http.stream("GET", url, headers={"Accept-Encoding": "identity"}) as response:
        response.raise_for_status()
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise MetricsError(f"metrics of {declared} bytes are over the {limit}-byte limit")
        if response.headers.get("content-encoding", "identity").lower() not in ("identity", ""):
            # It was asked for uncompressed: inflating could take any memory before the count.
            raise MetricsError("metrics are compressed; they were asked for uncompressed")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > limit:
                raise MetricsError(f"metrics are over the {limit}-byte limit")
    try:
        text = body.decode()
    except UnicodeDecodeError as exc:
        raise MetricsError("metrics are not UTF-8 text") from exc
    return parse_metrics(text, time.monotonic())


def metrics_url(address: str, port: int = METRICS_PORT) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}{METRICS_PATH}"
