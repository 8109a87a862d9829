"""Inference latency as a cumulative histogram with Prometheus semantics: each camera's worker observes
its frames' latencies into one, and /metrics serves them as `pantau_inference_latency_seconds`."""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass, field
from typing import Final

# Upper bounds, seconds: from 5 ms (a small model on a GPU) to 5 s (a saturated or distant Triton).
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass
class LatencyHistogram:
    """Observations since the worker started: how many fell in each bucket, their number and sum."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    count: int = 0
    sum_seconds: float = 0.0
    # Observations per bucket (not cumulative): one per bound, then the one above the last bound.
    _per_bucket: list[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.bounds or list(self.bounds) != sorted(set(self.bounds)) or math.inf in self.bounds:
            raise ValueError(f"bucket bounds must be finite, distinct and ascending: {self.bounds}")
        self._per_bucket = [0] * (len(self.bounds) + 1)

    def observe(self, seconds: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le means <=).
        self._per_bucket[bisect.bisect_left(self.bounds, seconds)] += 1
        self.count += 1
        self.sum_seconds += seconds

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it), ascending; the last is (inf, count)."""
        bounds = (*self.bounds, math.inf)
        return list(zip(bounds, itertools.accumulate(self._per_bucket), strict=True))
