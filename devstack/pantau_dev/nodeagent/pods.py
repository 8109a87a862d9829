"""One pod on the local node: its containers as processes, their probes and restarts, and the
status a kubelet would report for it. Each pod has a worker thread; a failure in one pod is
logged and retried, never propagated."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pantau_dev.nodeagent.context import HOST_IP, Context
from pantau_dev.nodeagent.env import ConfigError, EnvResolver, base_env, command_line, container_env
from pantau_dev.nodeagent.kube import JSON, STRATEGIC_PATCH, ApiError, rfc3339
from pantau_dev.nodeagent.probes import Prober, Target, probers
from pantau_dev.nodeagent.runtime import ExitStatus, Process, adopt, forget, launch, record_name, wrap
from pantau_dev.nodeagent.serviceaccount import TokenFiles, wants_token

log = logging.getLogger(__name__)

PENDING, RUNNING, SUCCEEDED, FAILED = "Pending", "Running", "Succeeded", "Failed"
TICK = 0.25  # how often a live pod is looked at (process exits, probes, deadlines)
CONFIG_RETRY = 5.0  # CreateContainerConfigError: try again after
BACKOFF_RESET = 600.0  # a container that ran this long starts its back-off afresh
DEFAULT_GRACE = 30
STATE_KEYS = ("waiting", "running", "terminated")


# Statuses are written as strategic merge patches, which merge maps key by key: every optional
# key is always present (None deletes it), so nothing of an earlier state survives a transition.
def _state(kind: str | None = None, value: JSON | None = None) -> JSON:
    return {k: (value if k == kind else None) for k in STATE_KEYS}


def waiting(reason: str, message: str | None = None) -> JSON:
    return _state("waiting", {"reason": reason, "message": message})


def running(started_at: str) -> JSON:
    return _state("running", {"startedAt": started_at})


def terminated(
    code: int,
    reason: str,
    started_at: str | None,
    finished_at: str,
    container_id: str | None,
    message: str | None = None,
    sig: int | None = None,
) -> JSON:
    return _state(
        "terminated",
        {
            "exitCode": code,
            "signal": sig,
            "reason": reason,
            "message": message,
            "startedAt": started_at,
            "finishedAt": finished_at,
            "containerID": container_id or None,
        },
    )


def _normalize(state: JSON | None) -> JSON:
    """A state read back from the API, in the shape above."""
    state = state or {}
    for kind in STATE_KEYS:
        value = state.get(kind)
        if value:
            if kind == "terminated":
                return terminated(
                    int(value.get("exitCode", 0)),
                    str(value.get("reason", "")),
                    value.get("startedAt"),
                    str(value.get("finishedAt") or rfc3339()),
                    value.get("containerID"),
                    value.get("message"),
                    value.get("signal"),
                )
            if kind == "running":
                return running(str(value.get("startedAt") or rfc3339()))
            return waiting(str(value.get("reason", "")), value.get("message"))
    return _state()


@dataclass
class Container:
    spec: JSON
    init: bool
    restart_count: int = 0
    proc: Process | None = None
    state: JSON = field(default_factory=lambda: waiting("ContainerCreating"))
    last_state: JSON = field(default_factory=_state)
    container_id: str = ""
    started_at: str | None = None
    run_started: float = 0.0  # monotonic
    ever_started: bool = False  # so the next start counts as a restart
    done: bool = False  # will not run again
    succeeded: bool = False  # init containers: ran to completion
    next_start: float = 0.0  # monotonic; back-off
    backoff: float = 0.0  # delay before the next restart
    kill_deadline: float | None = None  # SIGKILL after this, once SIGTERM was sent
    ready: bool = False
    started: bool = False
    probes: dict[str, Prober] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = Path("/")

    @property
    def name(self) -> str:
        return str(self.spec["name"])


class PodWorker:
    def __init__(self, ctx: Context, pod: JSON) -> None:
        self.ctx = ctx
        self.pod = pod
        meta, spec = pod["metadata"], pod.get("spec", {})
        self.uid, self.namespace, self.name = str(meta["uid"]), str(meta["namespace"]), str(meta["name"])
        self.key = f"{self.namespace}/{self.name}"
        self.policy = str(spec.get("restartPolicy") or "Always")
        self.init_containers = [Container(c, init=True) for c in spec.get("initContainers") or []]
        self.containers = [Container(c, init=False) for c in spec.get("containers") or []]
        self.dir = ctx.config.work_dir / self.uid
        self.ip: str | None = None
        self.tokens: TokenFiles | None = None
        self.sandbox_ready = False
        self.sandbox_error = ""
        self.start_time: str | None = pod.get("status", {}).get("startTime")
        self.terminal: str | None = None
        self.deleting_since: float | None = None
        self._frozen = False  # terminal before this agent run: its status is not ours to rewrite
        self._transitions = {
            c["type"]: (c["status"], c.get("lastTransitionTime"))
            for c in pod.get("status", {}).get("conditions") or []
        }
        self._published: JSON | None = None
        self._sandbox_retry = self._token_retry = self._publish_retry = 0.0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._gone = False
        self._thread = threading.Thread(target=self._run, name=f"pod {self.key}", daemon=True)

    # ----- called from the agent's watch thread -----

    def start(self) -> None:
        self._thread.start()

    def update(self, pod: JSON) -> None:
        with self._lock:
            self.pod = pod
        self._wake.set()

    def gone(self) -> None:
        """The pod object was removed (force deletion): kill everything now."""
        self._gone = True
        self._wake.set()

    # ----- the worker thread -----

    def _snapshot(self) -> JSON:
        with self._lock:
            return self.pod

    @property
    def all_containers(self) -> list[Container]:
        return self.init_containers + self.containers

    def _run(self) -> None:
        try:
            self._restore()
        except Exception:
            log.exception("pod %s: restoring state failed", self.key)
        failures = 0
        while True:
            if self._gone:
                self._kill_now()
                self._cleanup()
                break
            if self.ctx.stopping.is_set():
                return  # the agent exits; pods keep running (`pantau dev down` stops them)
            try:
                finished = self._step()
                if finished:
                    self._cleanup()
                    break
                self._publish()
                failures = 0
            except Exception:
                failures += 1
                log.exception("pod %s: sync failed (%d in a row)", self.key, failures)
                self._wake.wait(min(30.0, 2.0**failures))
                continue
            self._wake.wait(5.0 if self.terminal else TICK)
            self._wake.clear()
        self.ctx.on_worker_exit(self.uid)

    def _restore(self) -> None:
        """Pick up where an earlier agent run left off: adopt live processes, keep counters."""
        status = self.pod.get("status", {})
        if status.get("phase") in (SUCCEEDED, FAILED):
            self.terminal = str(status["phase"])
            self._frozen = True
            return
        previous = {
            s["name"]: s
            for s in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
        }
        for c in self.all_containers:
            prev = previous.get(c.name)
            if prev is not None:
                c.restart_count = int(prev.get("restartCount") or 0)
                c.container_id = str(prev.get("containerID") or "")
                c.ever_started = bool(c.container_id)
                c.last_state = _normalize(prev.get("lastState"))
            proc = adopt(self.ctx.table, self._record(c))
            prev_state = (prev or {}).get("state") or {}
            if proc is not None:
                c.proc, c.ever_started = proc, True
                c.run_started = time.monotonic() - max(0.0, time.time() - proc.record.create_time)
                c.started_at = (prev_state.get("running") or {}).get("startedAt") or rfc3339(
                    proc.record.create_time
                )
                c.container_id = f"pantau-local://{proc.pid}"
                c.state = running(c.started_at)
                c.probes = {} if c.init else probers(c.spec, c.run_started)
                c.started = "startup" not in c.probes or bool((prev or {}).get("started"))
                c.ready = bool((prev or {}).get("ready"))
                if "readiness" in c.probes:
                    c.probes["readiness"].result = c.ready
                log.info("pod %s: adopted container %s (pid %d)", self.key, c.name, proc.pid)
            elif prev_state.get("running"):
                # It ran under an earlier agent and is gone: as a kubelet that lost a container.
                c.started_at = prev_state["running"].get("startedAt")
                c.proc = None
                self._exited(c, ExitStatus(code=137, known=False))
            elif prev_state.get("terminated"):
                t = prev_state["terminated"]
                code = int(t.get("exitCode", 0))
                if (c.init and code == 0) or (not c.init and not self._restarts(c, code)):
                    c.state, c.done = _normalize(prev_state), True
                    c.succeeded = c.init and code == 0
                    c.ready = c.succeeded
                else:
                    c.last_state = _normalize(prev_state)
        # Once a regular container has run, the init containers are done, as for the kubelet.
        if any(c.ever_started for c in self.containers):
            for c in self.init_containers:
                if c.proc is None:
                    c.done = c.succeeded = c.ready = True
                    if not c.state.get("terminated"):
                        c.state = terminated(0, "Completed", None, rfc3339(), c.container_id)

    def _step(self) -> bool:
        """One look at the pod; True when the worker is finished with it."""
        now = time.monotonic()
        pod = self._snapshot()
        deleting = bool(pod["metadata"].get("deletionTimestamp"))
        if self.terminal is not None:
            if deleting:
                self._delete_object()
                return True
            return False
        if deleting:
            return self._terminate(now, pod)
        if not self.sandbox_ready:
            if now < self._sandbox_retry:
                return False
            try:
                self._prepare_sandbox(pod)
            except Exception as exc:
                self.sandbox_error = str(exc)
                self._sandbox_retry = now + 5.0
                log.warning("pod %s: cannot prepare the pod (retrying): %s", self.key, exc)
                return False
        if self.tokens is not None and self.tokens.due() and now >= self._token_retry:
            try:
                self.tokens.refresh()
            except Exception as exc:
                self._token_retry = now + 10.0
                log.warning("pod %s: token refresh failed (retrying): %s", self.key, exc)
        if self._run_init(now):
            for c in self.containers:
                self._sync(c, now)
        phase = self._phase()
        if phase in (SUCCEEDED, FAILED):
            self._become_terminal(phase)
        return False

    def _prepare_sandbox(self, pod: JSON) -> None:
        """Address, directory and ServiceAccount token: what a kubelet's sandbox and volumes give."""
        status = pod.get("status", {})
        self.dir.mkdir(parents=True, exist_ok=True)
        if pod.get("spec", {}).get("hostNetwork"):
            self.ip = HOST_IP
        else:
            self.ip = self.ctx.ips.allocate(self.uid, status.get("podIP"))
        if wants_token(self.ctx.kube, pod):
            tokens = TokenFiles(self.ctx.kube, pod, self.dir / "serviceaccount", self.ctx.config.ca_file)
            tokens.refresh()
            self.tokens = tokens
        self.start_time = self.start_time or rfc3339()
        self.sandbox_ready, self.sandbox_error = True, ""
        for c in self.all_containers:
            if c.proc is None and not c.ever_started and self.init_containers:
                c.state = waiting("PodInitializing")
        log.info("pod %s: sandbox ready, ip %s", self.key, self.ip)

    def _run_init(self, now: float) -> bool:
        """Init containers one after the other; True once all have completed."""
        for c in self.init_containers:
            if not c.succeeded:
                self._sync(c, now)
            if not c.succeeded:
                return False
        return True

    def _sync(self, c: Container, now: float) -> None:
        if c.proc is not None:
            status = c.proc.poll()
            if status is None:
                if c.kill_deadline is not None:
                    if now >= c.kill_deadline:
                        c.proc.send(signal.SIGKILL)
                elif not c.init:
                    self._probe(c)
                return
            self._exited(c, status)
        if not c.done and now >= c.next_start:
            self._start(c, now)

    def _start(self, c: Container, now: float) -> None:
        pod = self._pod_view()
        try:
            env = container_env(pod, c.spec, self._base_env(), EnvResolver(self.ctx.kube, self.namespace))
            argv = command_line(c.spec, env)
        except ConfigError as exc:
            if (c.state.get("waiting") or {}).get("message") != str(exc):
                log.warning("pod %s: container %s: %s", self.key, c.name, exc)
            c.state = waiting("CreateContainerConfigError", str(exc))
            c.next_start = now + CONFIG_RETRY
            return
        workdir = c.spec.get("workingDir")
        cwd = Path(workdir) if workdir and Path(workdir).is_dir() else self.dir
        if c.ever_started:
            c.restart_count += 1
        c.ever_started, c.run_started = True, now
        exe = argv[0] if argv else ""
        found = (
            (
                os.access(cwd / exe, os.X_OK)
                if "/" in exe
                else shutil.which(exe, path=env.get("PATH", "")) is not None
            )
            if exe
            else False
        )
        if not found:
            message = f'exec: "{exe}": executable file not found in $PATH'
            self._start_failed(c, now, message)
            return
        sa_dir = self.tokens.directory if self.tokens is not None and self.ctx.mount_ok else None
        try:
            proc = launch(self.ctx.table, self._record(c), wrap(argv, sa_dir), env, cwd)
        except OSError as exc:
            self._start_failed(c, now, str(exc))
            return
        c.proc, c.env, c.cwd = proc, env, cwd
        c.started_at = rfc3339()
        c.container_id = f"pantau-local://{proc.pid}"
        c.state = running(c.started_at)
        c.probes = {} if c.init else probers(c.spec, now)
        c.started = "startup" not in c.probes
        c.ready = not c.init and c.started and "readiness" not in c.probes
        c.kill_deadline = None
        command = shlex.join(argv)
        log.info(
            "pod %s: started container %s (pid %d, restarts %d): %s",
            self.key,
            c.name,
            proc.pid,
            c.restart_count,
            command if len(command) < 300 else command[:300] + "...",
        )

    def _start_failed(self, c: Container, now: float, message: str) -> None:
        log.warning("pod %s: container %s failed to start: %s", self.key, c.name, message)
        term = terminated(128, "StartError", "1970-01-01T00:00:00Z", rfc3339(), None, message)
        self._after_exit(c, term, 128, now)

    def _exited(self, c: Container, status: ExitStatus) -> None:
        if c.proc is not None:
            c.proc.kill_leftovers()
        if status.known:
            reason, message = ("Completed" if status.code == 0 else "Error"), None
        else:
            reason, message = "ContainerStatusUnknown", "The container could not be located"
        term = terminated(
            status.code, reason, c.started_at, rfc3339(), c.container_id, message, status.signal
        )
        log.info("pod %s: container %s exited: %s %d", self.key, c.name, reason, status.code)
        c.proc, c.ready, c.started, c.kill_deadline, c.probes = None, False, False, None, {}
        self._after_exit(c, term, status.code, time.monotonic())

    def _after_exit(self, c: Container, term: JSON, code: int, now: float) -> None:
        if c.init and code == 0:
            c.state, c.done, c.succeeded, c.ready = term, True, True, True
            return
        if self.deleting_since is None and self._restarts(c, code):
            cfg = self.ctx.config
            if now - c.run_started > BACKOFF_RESET:
                c.backoff = 0.0
            delay = c.backoff  # the first restart is immediate, then base, doubling, capped
            c.backoff = min(cfg.backoff_cap, cfg.backoff_base if delay == 0 else delay * 2)
            c.next_start = now + delay
            c.last_state = term
            c.state = (
                term
                if delay == 0
                else waiting(
                    "CrashLoopBackOff",
                    f"back-off {delay:.0f}s restarting failed container={c.name} "
                    f"pod={self.name}_{self.namespace}({self.uid})",
                )
            )
        else:
            c.done, c.state = True, term

    def _restarts(self, c: Container, code: int) -> bool:
        if c.init:
            return code != 0 and self.policy != "Never"
        return self.policy == "Always" or (self.policy == "OnFailure" and code != 0)

    def _probe(self, c: Container) -> None:
        if not c.probes:
            c.ready = c.started
            return
        sa_dir = self.tokens.directory if self.tokens is not None and self.ctx.mount_ok else None
        target = Target(self.ip or HOST_IP, c.spec, c.env, c.cwd, lambda argv: wrap(argv, sa_dir))
        startup = c.probes.get("startup")
        if startup is not None and not c.started:
            if startup.due(time.monotonic()):
                result = startup.run(target)
                if result is True:
                    c.started = True
                elif result is False:
                    self._kill(c, f"startup probe failed: {startup.message}", startup.grace)
            return
        liveness = c.probes.get("liveness")
        if liveness is not None and liveness.due(time.monotonic()) and liveness.run(target) is False:
            self._kill(c, f"failed liveness probe, will be restarted: {liveness.message}", liveness.grace)
            return
        readiness = c.probes.get("readiness")
        if readiness is not None:
            if readiness.due(time.monotonic()):
                readiness.run(target)
            c.ready = c.started and readiness.result is True
        else:
            c.ready = c.started

    def _kill(self, c: Container, why: str, grace: float | None = None) -> None:
        """SIGTERM now, SIGKILL once the grace period is over (checked every tick)."""
        if c.proc is None:
            return
        seconds = self._grace() if grace is None else grace
        deadline = time.monotonic() + max(0.0, seconds)
        if c.kill_deadline is None:
            log.info("pod %s: stopping container %s (grace %.0f s): %s", self.key, c.name, seconds, why)
            c.proc.send(signal.SIGTERM)
        c.kill_deadline = deadline if c.kill_deadline is None else min(c.kill_deadline, deadline)
        c.ready = False

    def _grace(self) -> int:
        value = self._snapshot().get("spec", {}).get("terminationGracePeriodSeconds")
        return DEFAULT_GRACE if value is None else int(value)

    def _terminate(self, now: float, pod: JSON) -> bool:
        """Graceful deletion: SIGTERM, SIGKILL after the grace period, then remove the object."""
        grace = pod["metadata"].get("deletionGracePeriodSeconds")
        grace = self._grace() if grace is None else int(grace)
        if self.deleting_since is None:
            self.deleting_since = now
            log.info("pod %s: deletion requested (grace %d s)", self.key, grace)
        alive = False
        for c in self.all_containers:
            if c.proc is None:
                continue
            status = c.proc.poll()
            if status is not None:
                self._exited(c, status)
                continue
            alive = True
            # A second delete may shorten the grace period; the shorter one wins.
            self._kill(c, "pod deleted", self.deleting_since + grace - now)
            if c.kill_deadline is not None and now >= c.kill_deadline:
                c.proc.send(signal.SIGKILL)
        if alive:
            self._publish()
            return False
        self._publish()
        self._delete_object()
        return True

    def _delete_object(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": self.uid},
        }
        try:
            self.ctx.kube.delete(f"/api/v1/namespaces/{self.namespace}/pods/{self.name}", body)
        except ApiError as exc:
            if exc.status not in (404, 409):
                raise
        log.info("pod %s: containers stopped; pod object deleted", self.key)

    def _kill_now(self) -> None:
        procs = [c.proc for c in self.all_containers if c.proc is not None]
        if procs:
            log.info("pod %s: removed from the API; killing its processes", self.key)
        for proc in procs:
            proc.send(signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        for c in self.all_containers:
            if c.proc is not None and c.proc.poll() is not None:
                c.proc.kill_leftovers()
                c.proc = None

    def _become_terminal(self, phase: str) -> None:
        self.terminal = phase
        self.ctx.ips.release(self.uid)
        for c in self.all_containers:
            forget(self.ctx.table, self._record(c))  # all exited; nothing left for `dev down`
        log.info("pod %s: %s", self.key, phase)

    def _cleanup(self) -> None:
        for c in self.all_containers:
            if c.proc is None or c.proc.poll() is not None:
                forget(self.ctx.table, self._record(c))
        self.ctx.ips.release(self.uid)
        shutil.rmtree(self.dir, ignore_errors=True)

    # ----- status -----

    def _phase(self) -> str:
        if any(c.done and not c.succeeded for c in self.init_containers) and self.policy == "Never":
            return FAILED
        if not all(c.succeeded for c in self.init_containers):
            return PENDING
        running_ = waiting_ = stopped = succeeded = 0
        for c in self.containers:
            if c.proc is not None:
                running_ += 1
            elif c.state.get("terminated"):
                stopped += 1
                succeeded += c.state["terminated"]["exitCode"] == 0
            elif c.last_state.get("terminated"):
                stopped += 1  # waiting to restart
            else:
                waiting_ += 1
        if waiting_:
            return PENDING
        if running_:
            return RUNNING
        if not stopped:
            return PENDING
        if self.deleting_since is not None:
            return SUCCEEDED if stopped == succeeded else FAILED
        if self.policy == "Always":
            return RUNNING
        if stopped == succeeded:
            return SUCCEEDED
        return FAILED if self.policy == "Never" else RUNNING

    def _condition(self, ctype: str, ok: bool, reason: str | None = None, message: str | None = None) -> JSON:
        status = "True" if ok else "False"
        prev = self._transitions.get(ctype)
        since = prev[1] if prev is not None and prev[0] == status and prev[1] else rfc3339()
        self._transitions[ctype] = (status, since)
        return {
            "type": ctype,
            "status": status,
            "reason": None if ok else reason,
            "message": None if ok else message,
            "lastProbeTime": None,
            "lastTransitionTime": since,
        }

    def _conditions(self, phase: str) -> list[JSON]:
        done = phase in (SUCCEEDED, FAILED)
        incomplete = [c.name for c in self.init_containers if not c.succeeded]
        unready = [c.name for c in self.containers if not c.ready]
        if done:
            containers_ready = self._condition("ContainersReady", False, "PodCompleted")
            ready = self._condition("Ready", False, "PodCompleted")
        else:
            message = f"containers with unready status: [{' '.join(unready)}]"
            containers_ready = self._condition("ContainersReady", not unready, "ContainersNotReady", message)
            gates = self._unmet_readiness_gates()
            if unready:
                ready = self._condition("Ready", False, "ContainersNotReady", message)
            else:
                ready = self._condition(
                    "Ready",
                    not gates,
                    "ReadinessGatesNotReady",
                    f"corresponding condition of pod readiness gate {gates[:1]} is not True",
                )
        return [
            self._condition("PodReadyToStartContainers", self.sandbox_ready and not done),
            self._condition(
                "Initialized",
                not incomplete,
                "ContainersNotInitialized",
                f"containers with incomplete status: [{' '.join(incomplete)}]",
            ),
            containers_ready,
            ready,
        ]

    def _unmet_readiness_gates(self) -> list[str]:
        pod = self._snapshot()
        conditions = {c.get("type"): c.get("status") for c in pod.get("status", {}).get("conditions") or []}
        gates = [g.get("conditionType") for g in pod.get("spec", {}).get("readinessGates") or []]
        return [str(g) for g in gates if conditions.get(g) != "True"]

    def _container_status(self, c: Container) -> JSON:
        image = str(c.spec.get("image", ""))
        return {
            "name": c.name,
            "image": image,
            "imageID": f"pantau-local://{image}",
            "containerID": c.container_id or None,
            "ready": c.ready,
            "started": c.started if not c.init else c.proc is not None,
            "restartCount": c.restart_count,
            "state": c.state,
            "lastState": c.last_state,
        }

    def _status(self) -> JSON:
        phase = self.terminal or self._phase()
        status: JSON = {
            "phase": phase,
            "conditions": self._conditions(phase),
            "hostIP": HOST_IP,
            "hostIPs": [{"ip": HOST_IP}],
            "startTime": self.start_time,
            "containerStatuses": [self._container_status(c) for c in self.containers],
        }
        if self.ip:
            status["podIP"] = self.ip
            status["podIPs"] = [{"ip": self.ip}]
        if self.init_containers:
            status["initContainerStatuses"] = [self._container_status(c) for c in self.init_containers]
        if not self.sandbox_ready and self.sandbox_error:
            for cs in status["containerStatuses"]:
                if cs["state"].get("waiting"):
                    cs["state"] = waiting("ContainerCreating", self.sandbox_error[:500])
        return status

    def _publish(self) -> None:
        if self._frozen or time.monotonic() < self._publish_retry:
            return
        status = self._status()
        if status == self._published:
            return
        try:
            self.ctx.kube.patch(
                f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status",
                {"status": status},
                STRATEGIC_PATCH,
            )
        except ApiError as exc:
            if exc.status == 404:
                return  # deleted: the watch will tell us
            self._publish_retry = time.monotonic() + 2.0
            log.warning("pod %s: status update failed (retrying): %s", self.key, exc)
            return
        self._published = status

    # ----- helpers -----

    def _record(self, c: Container) -> str:
        return record_name(self.namespace, self.name, c.name)

    def _pod_view(self) -> JSON:
        """The pod as the downward API sees it: with the addresses this agent gave it."""
        pod = self._snapshot()
        status: dict[str, Any] = dict(pod.get("status", {}))
        status.update(hostIP=HOST_IP, hostIPs=[{"ip": HOST_IP}])
        if self.ip:
            status.update(podIP=self.ip, podIPs=[{"ip": self.ip}])
        return {**pod, "status": status}

    def _base_env(self) -> dict[str, str]:
        cfg = self.ctx.config
        sa_dir = self.tokens.directory if self.tokens is not None else None
        return base_env(self._snapshot(), cfg.python_bin_dir, cfg.api_host, cfg.api_port, sa_dir)
