"""Background processes of the local stack, tracked by PID files so `down` can stop them all.

Every process the stack starts (control plane, node, Triton, cameras) is
spawned through `spawn()`: it gets its own session (so its children die with it), a log file,
and a record in `<state>/pids/<name>.json` holding the PID and the process start time. The start
time guards against PID reuse: a record whose PID now belongs to another process is treated as
dead and never signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

import psutil
from pydantic import BaseModel, ConfigDict

T = TypeVar("T")


class StackError(RuntimeError):
    """A component of the local stack failed to start or to become ready."""


class ProcessRecord(BaseModel):
    """What is needed to find (and safely signal) a background process again."""

    model_config = ConfigDict(frozen=True)

    name: str
    pid: int
    create_time: float
    argv: list[str]
    log: str

    def process(self) -> psutil.Process | None:
        """The live process, or None when it exited or its PID was reused."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > 0.05 or proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except psutil.Error:
            return None

    def alive(self) -> bool:
        return self.process() is not None

    def tail(self, lines: int = 30) -> str:
        """Last lines of the log, for error messages."""
        try:
            return "\n".join(Path(self.log).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class ProcessTable:
    """The PID files of one stack (or of a test's cameras) in one directory."""

    def __init__(self, pid_dir: Path, log_dir: Path) -> None:
        self.pid_dir = pid_dir
        self.log_dir = log_dir

    def _path(self, name: str) -> Path:
        return self.pid_dir / f"{name}.json"

    def get(self, name: str) -> ProcessRecord | None:
        try:
            return ProcessRecord.model_validate_json(self._path(name).read_text())
        except (OSError, ValueError):
            return None

    def records(self) -> list[ProcessRecord]:
        if not self.pid_dir.is_dir():
            return []
        found = (self.get(p.stem) for p in sorted(self.pid_dir.glob("*.json")))
        return [r for r in found if r is not None]

    def running(self, name: str) -> ProcessRecord | None:
        rec = self.get(name)
        return rec if rec is not None and rec.alive() else None

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        log_name: str | None = None,
        netns: str | None = None,
    ) -> ProcessRecord:
        """Start `argv` in its own session with output appended to `<log_dir>/<name>.log`."""
        return self.start(name, argv, env=env, cwd=cwd, log_name=log_name, netns=netns)[0]

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        log_name: str | None = None,
        netns: str | None = None,
    ) -> tuple[ProcessRecord, subprocess.Popen[bytes]]:
        """Like `spawn`, also returning the Popen: the only holder of the child's exit status.

        `netns`: run it inside that named network namespace (`ip netns exec`, which execs the command
        after entering it: the PID and the record stay the process's own)."""
        if netns is not None:
            argv = ["ip", "netns", "exec", netns, *argv]
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{log_name or name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        record = ProcessRecord(
            name=name,
            pid=proc.pid,
            create_time=psutil.Process(proc.pid).create_time(),
            argv=list(argv),
            log=str(log_path),
        )
        tmp = self._path(name).with_suffix(".tmp")
        tmp.write_text(record.model_dump_json())
        tmp.replace(self._path(name))
        _reap_later(proc)
        return record, proc

    def stop(self, name: str, grace: float = 10.0) -> None:
        rec = self.get(name)
        if rec is not None:
            terminate(rec, grace)
        self._path(name).unlink(missing_ok=True)

    def stop_all(self, grace: float = 10.0, order: Sequence[str] = ()) -> None:
        """Stop named records first (in `order`), then all others, then forget them."""
        names = [n for n in order if self.get(n) is not None]
        names += [r.name for r in self.records() if r.name not in names]
        for name in names:
            self.stop(name, grace)


# The processes outlive this Python process, so their Popen objects are not waited on by
# anyone in particular; polling them now and then reaps those that exit while we still run,
# so they don't linger as zombies (the exit status stays in the Popen object).
class ManagedProcess:
    """A helper process of tests (camera, proxy): started on demand, stopped at the end of a `with`."""

    table: ProcessTable
    name: str

    def start(self) -> ProcessRecord:
        raise NotImplementedError

    def stop(self, grace: float = 5.0) -> None:
        self.table.stop(self.name, grace)

    def running(self) -> bool:
        return self.table.running(self.name) is not None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def stop_processes(procs: list[psutil.Process], grace: float) -> None:
    """SIGTERM each process, then SIGKILL whatever is left after `grace` seconds (gone ones are fine)."""
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGTERM)
    _gone, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)


_children: list[subprocess.Popen[bytes]] = []
_children_lock = threading.Lock()


def _reap_later(proc: subprocess.Popen[bytes]) -> None:
    with _children_lock:
        _children.append(proc)
        _children[:] = [p for p in _children if p.poll() is None]


def terminate(rec: ProcessRecord, grace: float) -> None:
    """SIGTERM the process group of `rec`, then SIGKILL whatever is left after `grace` seconds."""
    proc = rec.process()
    if proc is None:
        return
    members = _group_members(proc)
    _signal_group(rec.pid, members, signal.SIGTERM)
    _gone, alive = psutil.wait_procs(members, timeout=grace)
    if alive:
        _signal_group(rec.pid, alive, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=5)
    with _children_lock:
        for p in _children:
            p.poll()


def _group_members(proc: psutil.Process) -> list[psutil.Process]:
    """The process, its descendants, and anything else left in its process group."""
    members = {proc.pid: proc}
    try:
        for child in proc.children(recursive=True):
            members[child.pid] = child
    except psutil.Error:
        pass
    for other in psutil.process_iter():
        try:
            if other.pid not in members and os.getpgid(other.pid) == proc.pid:
                members[other.pid] = other
        except (psutil.Error, ProcessLookupError):
            continue
    return list(members.values())


def _signal_group(pgid: int, members: list[psutil.Process], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
    for p in members:  # children that started sessions of their own are not in the group
        with contextlib.suppress(psutil.Error):
            p.send_signal(sig)


def wait_for(
    check: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    record: ProcessRecord | None = None,
) -> T:
    """Poll `check` until it returns something truthy; fail early when `record`'s process died."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:
            last_error = exc
        if record is not None and not record.alive():
            raise StackError(f"{what}: process {record.name} exited; log {record.log}:\n{record.tail()}")
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            tail = f"\nlog {record.log}:\n{record.tail()}" if record else ""
            raise StackError(f"{what}: not ready after {timeout:.0f} s{detail}{tail}")
        time.sleep(interval)


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)
