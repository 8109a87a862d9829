"""What every benchmark reports about the machine it ran on, and how it prints numbers."""

from __future__ import annotations

import contextlib
import math
import os
import platform
from pathlib import Path


def cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0))


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def fmt(value: float | None, digits: int = 1) -> str:
    """A table cell: thousands separated, "-" when there is no value."""
    return "-" if value is None or math.isnan(value) else f"{value:,.{digits}f}"
