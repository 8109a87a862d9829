"""Container processes: started through `ProcessTable.spawn` (so `pantau dev down` stops them by
PID), each in its own session and process group, optionally in a private mount namespace.

Exit codes come from the `Popen` that `ProcessTable.start` returns; a container adopted from an
earlier agent run has none, so its exit status is unknown.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pantau_dev.nodeagent.env import SA_MOUNT
from pantau_dev.procs import ProcessRecord, ProcessTable

_MOUNT = (
    f'mount --bind -o ro "$1" {SA_MOUNT} '
    '|| { echo "pantau-local: cannot mount $1" >&2; exit 126; }; shift; '
)


def record_name(namespace: str, pod: str, container: str) -> str:
    """PID-file name of a container: `pod-<ns>-<pod>-<container>`, at most 200 characters."""
    name = f"pod-{namespace}-{pod}-{container}"
    if len(name) > 200:
        name = f"{name[:187]}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"
    return name


def wrap(argv: Sequence[str], sa_dir: Path | None) -> list[str]:
    """`argv` with `sa_dir` bound at the standard path (if given).

    `unshare` and the shell `exec`, so the process's PID is that of the command itself.
    """
    script = (_MOUNT if sa_dir is not None else "") + 'exec "$@"'
    args = ["sh"] + ([str(sa_dir)] if sa_dir is not None else [])
    head = ["unshare", "--mount", "--propagation", "private", "--"] if sa_dir is not None else []
    return [*head, "sh", "-c", script, *args, *argv]


@dataclass(frozen=True)
class ExitStatus:
    code: int
    signal: int | None = None
    known: bool = True


@dataclass
class Process:
    record: ProcessRecord
    popen: subprocess.Popen[bytes] | None  # None: adopted from an earlier agent run

    @property
    def pid(self) -> int:
        return self.record.pid

    def poll(self) -> ExitStatus | None:
        """None while running; the exit status once it ended (unknown for adopted processes)."""
        if self.popen is None:
            return None if self.record.alive() else ExitStatus(code=137, known=False)
        code = self.popen.poll()
        if code is None:
            return None
        if code < 0:
            return ExitStatus(code=128 - code, signal=-code)
        return ExitStatus(code=code)

    def send(self, sig: signal.Signals) -> None:
        """Signal the whole process group (the container's children too) while it runs."""
        if self.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, sig)

    def kill_leftovers(self) -> None:
        """After the main process ended: what it left in its process group goes too."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)


def launch(table: ProcessTable, name: str, argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> Process:
    record, popen = table.start(name, argv, env=env, cwd=cwd)
    return Process(record, popen)


def adopt(table: ProcessTable, name: str) -> Process | None:
    """A container process left running by an earlier agent run."""
    record = table.running(name)
    return None if record is None else Process(record, None)


def forget(table: ProcessTable, name: str) -> None:
    """Drop the PID file of a container whose process is gone."""
    (table.pid_dir / f"{name}.json").unlink(missing_ok=True)
