"""A sampling profile of a running process by py-spy (`pip install py-spy`), for `--profile`.

py-spy attaches to the process by its PID, so it is no child of it and its own memory and CPU are
not counted as the profiled process's. The profile is kept as collapsed stacks (py-spy's `raw`
format, one `frame;frame;... count` line per stack) and summarised here: the functions with the
most samples on top of the stack (self) and anywhere in it (cumulative)."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Final

RATE: Final = 50  # samples per second
# "function (path/to/file.py:123)": the line number is dropped so a function counts as one entry.
_LINE: Final = re.compile(r":\d+\)$")
# Frames that hold (nearly) every sample: the interpreter's and the event loop's, the command line's.
# Left out of the cumulative list, which would otherwise start with a dozen entries at ~100%.
_RUNNER: Final = re.compile(
    r"\((asyncio/|typer/|click/|concurrent/|threading\.py|selectors\.py|contextlib\.py|pantau\)|"
    r"kopf/_core/reactor/running\.py|kopf/_cogs/aiokits/|pantau/handlers/cli\.py)"
)


class Profiler:
    """py-spy recording one process until `stop`."""

    def __init__(self, pid: int, path: Path) -> None:
        binary = shutil.which("py-spy")
        if binary is None:
            raise RuntimeError("--profile needs py-spy on PATH: pip install py-spy")
        self.path = path
        argv = [binary, "record", "--pid", str(pid), "--rate", str(RATE), "--nonblocking"]
        argv += ["--format", "raw", "--output", str(path)]
        self._proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self, timeout: float = 60.0) -> None:
        """Stop recording (py-spy writes its file on SIGINT)."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def top(path: Path, n: int = 10) -> dict[str, list[tuple[str, float]]]:
    """The `n` functions with the largest share (%) of samples, on top of the stack ("self") and
    anywhere in it ("cumulative", without the frames that run everything: event loop, threads,
    command line). Empty when there is no profile."""
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    total = 0
    text = path.read_text() if path.exists() else ""
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_LINE.sub(")", f) for f in stack.split(";")]
        samples = int(count)
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames):  # once per stack, however deep the recursion
            if not _RUNNER.search(frame):
                anywhere[frame] += samples
    if not total:
        return {"self": [], "cumulative": []}
    share = 100.0 / total
    return {
        "self": [(f, round(k * share, 1)) for f, k in own.most_common(n)],
        "cumulative": [(f, round(k * share, 1)) for f, k in anywhere.most_common(n)],
    }
