"""In-cluster credentials of a pod: a bound ServiceAccount token from the TokenRequest API, the
cluster CA and the namespace, in `<work-dir>/<pod-uid>/serviceaccount/`.

The directory is bind-mounted read-only at the standard path inside each container's private
mount namespace (see `runtime.wrap`), so `load_incluster_config()` finds it unchanged; files are
replaced by rename, which the bind mount of the directory shows at once.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from pantau_dev.nodeagent.env import SA_MOUNT
from pantau_dev.nodeagent.kube import JSON, Kube

log = logging.getLogger(__name__)

TOKEN_SECONDS = 3600
REFRESH_AT = 0.8  # of the token's lifetime, like the kubelet


def _write(path: Path, data: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(data)
    tmp.chmod(0o644)
    tmp.replace(path)


class TokenFiles:
    def __init__(self, kube: Kube, pod: JSON, directory: Path, ca_file: Path) -> None:
        self.kube = kube
        self.namespace = str(pod["metadata"]["namespace"])
        self.pod_name = str(pod["metadata"]["name"])
        self.pod_uid = str(pod["metadata"]["uid"])
        self.account = str(pod.get("spec", {}).get("serviceAccountName") or "default")
        self.directory = directory
        self.ca_file = ca_file
        self._refresh_at = 0.0

    def due(self) -> bool:
        return time.monotonic() >= self._refresh_at

    def refresh(self) -> None:
        """Request a fresh token and (re)write the files; raises ApiError when refused."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": TOKEN_SECONDS,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": self.pod_name,
                    "uid": self.pod_uid,
                },
            },
        }
        resp = self.kube.post(
            f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{self.account}/token", body
        )
        lifetime = float(resp.get("spec", {}).get("expirationSeconds") or TOKEN_SECONDS)
        self.directory.mkdir(parents=True, exist_ok=True)
        _write(self.directory / "ca.crt", self.ca_file.read_text())
        _write(self.directory / "namespace", self.namespace)
        _write(self.directory / "token", str(resp["status"]["token"]))
        self._refresh_at = time.monotonic() + REFRESH_AT * lifetime
        log.info(
            "pod %s/%s: token for ServiceAccount %s written (valid %.0f s)",
            self.namespace,
            self.pod_name,
            self.account,
            lifetime,
        )


def wants_token(kube: Kube, pod: JSON) -> bool:
    """automountServiceAccountToken of the pod, else of its ServiceAccount (default true)."""
    spec = pod.get("spec", {})
    if spec.get("automountServiceAccountToken") is not None:
        return bool(spec["automountServiceAccountToken"])
    name = spec.get("serviceAccountName") or "default"
    sa = kube.get(f"/api/v1/namespaces/{pod['metadata']['namespace']}/serviceaccounts/{name}")
    return sa.get("automountServiceAccountToken") is not False


def mount_namespaces_work() -> bool:
    """Whether containers can get the token at the standard path (needs root for `unshare`)."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        log.warning("unshare/mount not found")
        return False
    try:
        os.makedirs(SA_MOUNT, exist_ok=True)
    except OSError as exc:
        log.warning("cannot create %s: %s", SA_MOUNT, exc)
        return False
    with tempfile.TemporaryDirectory(prefix="pantau-sa-check-") as tmp:
        (Path(tmp) / "token").write_text("check")
        script = f'mount --bind -o ro "$0" {SA_MOUNT} && test "$(cat {SA_MOUNT}/token)" = check'
        try:
            done = subprocess.run(
                ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, tmp],
                capture_output=True,
                timeout=20,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("mount namespace check failed: %s", exc)
            return False
    if done.returncode != 0:
        log.warning("mount namespace check failed: %s", done.stderr.decode(errors="replace").strip())
        return False
    return True
