"""How much CPU each camera of an ingest pod costs, measured: the load the operator scales pools on.

A camera's own threads (the source's receiving and decoding thread, the pipeline's sampling and
letterboxing thread) are timed with per-thread CPU clocks. What no camera thread does alone (FFmpeg's
worker threads, the event loop sending frames to Triton and publishing events, the HTTP server) is
shared out in proportion to the cameras' own CPU: the camera that decodes more also sends more frames.
So the cameras' shares add up to the process's CPU, which is what the pod's CPU limit is measured
against. Rates are taken over a sliding window of samples so that one slow second does not scale a pool.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class _Sample:
    at: float  # monotonic seconds
    process: float  # the process's CPU seconds
    own: Mapping[str, float]  # camera -> CPU seconds of its own threads (cumulative)


class LoadMeter:
    """CPU seconds per second, per camera and for the pod, over the last `window` seconds."""

    def __init__(
        self,
        window: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        process_cpu: Callable[[], float] = time.process_time,
    ) -> None:
        if window <= 0:
            raise ValueError(f"window must be above 0 seconds, got {window}")
        self._window, self._clock, self._process_cpu = window, clock, process_cpu
        self._samples: deque[_Sample] = deque()
        self._attributed: dict[str, float] = {}  # camera -> CPU seconds attributed, cumulative

    def sample(self, own: Mapping[str, float]) -> None:
        """Record the cameras' own CPU totals now; cameras absent from `own` are forgotten."""
        now = _Sample(self._clock(), self._process_cpu(), dict(own))
        if self._samples:
            self._attribute(self._samples[-1], now)
        self._samples.append(now)
        while len(self._samples) > 2 and now.at - self._samples[1].at >= self._window:
            self._samples.popleft()
        self._attributed = {name: self._attributed.get(name, 0.0) for name in own}

    def _attribute(self, before: _Sample, after: _Sample) -> None:
        shares = _shares(before, after)
        for name, seconds in shares.items():
            self._attributed[name] = self._attributed.get(name, 0.0) + seconds

    def cores(self) -> dict[str, float]:
        """Camera -> CPU seconds per second over the window (its own threads and its share of the rest)."""
        if len(self._samples) < 2:
            return {}
        first, last = self._samples[0], self._samples[-1]
        elapsed = last.at - first.at
        if elapsed <= 0:
            return {}
        return {name: seconds / elapsed for name, seconds in _shares(first, last).items()}

    def pod_cores(self) -> float:
        """The whole process's CPU seconds per second over the window."""
        if len(self._samples) < 2:
            return 0.0
        first, last = self._samples[0], self._samples[-1]
        elapsed = last.at - first.at
        return max(last.process - first.process, 0.0) / elapsed if elapsed > 0 else 0.0

    def cpu_seconds(self, name: str) -> float:
        """CPU seconds attributed to a camera since it was first sampled (a counter for /metrics)."""
        return self._attributed.get(name, 0.0)


def _shares(before: _Sample, after: _Sample) -> dict[str, float]:
    """Each camera present at both samples: its own CPU between them plus its share of the rest of the
    process's. A camera new since `before` counts from zero; without any own CPU the rest is split evenly."""
    names = [name for name in after.own if name in before.own]
    if not names:
        return {}
    own = {name: max(after.own[name] - before.own[name], 0.0) for name in names}
    total_own = sum(own.values())
    rest = max(after.process - before.process - total_own, 0.0)
    if total_own > 0:
        return {name: seconds + rest * seconds / total_own for name, seconds in own.items()}
    return {name: rest / len(names) for name in names}
