"""The agent: registers the node, watches the pods bound to it and gives each a worker."""

from __future__ import annotations

import logging
import shutil
import signal
import threading
from types import FrameType

from pantau_dev.nodeagent.context import HOST_IP, AgentConfig, Context, IpPool
from pantau_dev.nodeagent.kube import JSON, ApiError, Kube
from pantau_dev.nodeagent.node import NodeKeeper
from pantau_dev.nodeagent.pods import PodWorker
from pantau_dev.nodeagent.runtime import record_name
from pantau_dev.nodeagent.serviceaccount import mount_namespaces_work
from pantau_dev.procs import ProcessTable

log = logging.getLogger(__name__)

WATCH_SECONDS = 240


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.kube = Kube(config.kubeconfig)
        self.ctx = Context(
            config=config,
            kube=self.kube,
            table=ProcessTable(config.pid_dir, config.log_dir),
            ips=IpPool(config.pod_ip_prefix),
            mount_ok=False,
            on_worker_exit=self._worker_exited,
        )
        self.workers: dict[str, PodWorker] = {}
        self._finished: set[str] = set()  # uids whose worker is done; late events are ignored
        self._lock = threading.Lock()

    # ----- lifecycle -----

    def run(self) -> int:
        stopping = self.ctx.stopping

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("signal %d: stopping the agent (pods keep running)", signum)
            stopping.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        cfg = self.config
        for path in (cfg.pid_dir, cfg.log_dir, cfg.work_dir):
            path.mkdir(parents=True, exist_ok=True)
        self.ctx.mount_ok = mount_namespaces_work()
        if not self.ctx.mount_ok:
            log.warning(
                "no private mount namespaces: pods find their token through PANTAU_SERVICEACCOUNT_DIR only"
            )
        node = NodeKeeper(self.kube, cfg.node_name, HOST_IP, stopping)
        while not stopping.is_set():
            try:
                node.register()
                break
            except Exception as exc:
                log.warning("registering node %s failed (retrying): %s", cfg.node_name, exc)
                stopping.wait(2.0)
        if stopping.is_set():
            return 0
        node.start()
        threading.Thread(target=self._watch_loop, name="pod-watch", daemon=True).start()
        log.info("node agent for %s running (pod addresses %s10-250)", cfg.node_name, cfg.pod_ip_prefix)
        stopping.wait()
        return 0

    # ----- pods -----

    def _watch_loop(self) -> None:
        query = {"fieldSelector": f"spec.nodeName={self.config.node_name}"}
        first, pause = True, 1.0
        while not self.ctx.stopping.is_set():
            try:
                listed = self.kube.get("/api/v1/pods", query)
                self._sync_all(listed.get("items") or [], cleanup=first)
                first, pause = False, 1.0
                version = str(listed["metadata"]["resourceVersion"])
                while not self.ctx.stopping.is_set():
                    version = self._watch(query, version)
            except _Relist:
                log.info("pod watch expired; listing again")
            except Exception:
                log.exception("pod watch failed; listing again in %.0f s", pause)
                self.ctx.stopping.wait(pause)
                pause = min(30.0, pause * 2)

    def _watch(self, query: dict[str, str], version: str) -> str:
        """One watch request; returns the resourceVersion to continue from."""
        params = {**query, "resourceVersion": version, "allowWatchBookmarks": "true"}
        for event in self.kube.watch("/api/v1/pods", params, WATCH_SECONDS):
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise _Relist
                raise ApiError(int(obj.get("code") or 500), str(obj.get("message")))
            version = str(obj.get("metadata", {}).get("resourceVersion") or version)
            if kind == "DELETED":
                self._pod_gone(str(obj["metadata"]["uid"]))
            elif kind in ("ADDED", "MODIFIED"):
                self._pod_seen(obj)
            if self.ctx.stopping.is_set():
                break
        return version

    def _sync_all(self, pods: list[JSON], cleanup: bool) -> None:
        if cleanup:
            self._clean_leftovers(pods)
        uids = {str(pod["metadata"]["uid"]) for pod in pods}
        # Addresses in use first, so a new pod can never take the address of a running one.
        for pod in pods:
            status = pod.get("status", {})
            with self._lock:
                finished = str(pod["metadata"]["uid"]) in self._finished
            if status.get("podIP") and status.get("phase") not in ("Succeeded", "Failed") and not finished:
                try:
                    self.ctx.ips.allocate(str(pod["metadata"]["uid"]), str(status["podIP"]))
                except RuntimeError:
                    log.warning("no address left for pod %s", pod["metadata"].get("name"))
        for pod in pods:
            self._pod_seen(pod)
        with self._lock:
            missing = [w for uid, w in self.workers.items() if uid not in uids]
        for worker in missing:
            worker.gone()

    def _pod_seen(self, pod: JSON) -> None:
        uid = str(pod["metadata"]["uid"])
        with self._lock:
            if uid in self._finished:
                return
            worker = self.workers.get(uid)
            if worker is None:
                worker = PodWorker(self.ctx, pod)
                self.workers[uid] = worker
                worker.start()
                return
        worker.update(pod)

    def _pod_gone(self, uid: str) -> None:
        with self._lock:
            worker = self.workers.get(uid)
        if worker is not None:
            worker.gone()

    def _worker_exited(self, uid: str) -> None:
        with self._lock:
            self.workers.pop(uid, None)
            self._finished.add(uid)

    def _clean_leftovers(self, pods: list[JSON]) -> None:
        """At start: stop processes of pods that are gone, drop their files."""
        expected = set()
        for pod in pods:
            meta, spec = pod["metadata"], pod.get("spec", {})
            for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
                expected.add(record_name(meta["namespace"], meta["name"], c["name"]))
        for rec in self.ctx.table.records():
            if rec.name.startswith("pod-") and rec.name not in expected:
                if rec.alive():
                    log.info("stopping leftover process %s (pid %d): its pod is gone", rec.name, rec.pid)
                self.ctx.table.stop(rec.name, grace=2.0)
        uids = {str(p["metadata"]["uid"]) for p in pods}
        work = self.config.work_dir
        for path in work.iterdir() if work.is_dir() else []:
            if path.is_dir() and path.name not in uids:
                shutil.rmtree(path, ignore_errors=True)


class _Relist(Exception):
    """The watch's resourceVersion is too old (410 Gone)."""
