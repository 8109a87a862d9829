"""The demo, as code shared by `pantau demo` and the end-to-end tests.

On the local stack it loads the detector into Triton, installs the CRDs, starts four test
cameras (real footage, a synthetic pattern, a password-protected stream, and an address where
nothing listens, all on the node's address), installs Pantau with its Helm chart (CRDs and the
operator, which then runs under the chart's ServiceAccount), and applies the Sites and Cameras in
demo/ with kubectl. The operator and its ingest pods run from the product image on the stack's node.
"""

from __future__ import annotations

import json
import secrets
import string
import subprocess
from typing import Any

import httpx
from pydantic import SecretStr
from tritonclient import grpc as triton_grpc

from pantau.contract import ANNOTATION_CREDENTIALS_SITES, INGEST_PORT, LABEL_CREDENTIALS
from pantau.triton import builder, contract
from pantau_dev.cameras import RtspCameraServer, RtspMount
from pantau_dev.chart import Release, Tools, local_values
from pantau_dev.net import free_port
from pantau_dev.procs import wait_for
from pantau_dev.settings import REPO_ROOT
from pantau_dev.stack import DevStack, StackInfo

DEMO_DIR = REPO_ROOT / "demo"
NAMESPACE = "pantau-demo"
SECRET = "pasar-manna-credentials"  # noqa: S105 - a Secret's name
INGEST_SERVICE = "pantau-ingest"


def load_detector(stack: DevStack) -> None:
    """The detector in the stack's Triton: the repository built from the shared ONNX, then loaded."""
    model = stack.settings.shared_dir / "models" / "yolox_nano.onnx"
    builder.build(model, stack.model_repository, builder.BuildOptions(target="cpu"))
    grpc = stack.status().triton_grpc
    assert grpc, "the stack runs without Triton"
    client = triton_grpc.InferenceServerClient(grpc)
    for name in (contract.MODEL, contract.JPEG_MODEL):
        client.load_model(name)
    client.close()


def _new_password() -> str:
    """A fresh password, only ever in the camera's config file (0600) and a Secret."""
    return "demo-" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(16))


class Demo:
    def __init__(self, stack: DevStack, namespace: str = NAMESPACE) -> None:
        self.stack = stack
        self.namespace = namespace
        self.info: StackInfo = stack.status()
        self.password = _new_password()
        self.old_passwords: list[str] = []  # rotated out (rotate_password): they must not leak either
        self.rtsp_port = free_port()
        self.release = Release(Tools(stack.settings, stack.kubeconfig))
        self.cameras = self._camera_server()

    def _camera_server(self) -> RtspCameraServer:
        return RtspCameraServer(
            self.stack.procs,
            "demo-cameras",
            self.rtsp_port,
            self._mounts(),
            self.stack.state / "demo",
            host=self.info.host_ip,
        )

    def rotate_password(self) -> None:
        """A new password for the protected camera, as its owner rotates it: first on the camera (its
        server restarts with it, dropping the sessions), then in the Secret."""
        self.old_passwords.append(self.password)
        self.password = _new_password()
        self.cameras.stop()
        self.cameras = self._camera_server()
        self.cameras.start()
        self.kubectl("apply", "-f", "-", stdin=json.dumps(self._secret()))

    def _mounts(self) -> list[RtspMount]:
        vtest = self.stack.settings.shared_dir / "footage" / "vtest.avi"
        return [
            RtspMount(
                path="/vtest", source="file", file=vtest, fps=10, width=768, height=576, keyframe_interval=20
            ),
            RtspMount(path="/pattern", source="pattern", fps=10, width=640, height=360, keyframe_interval=20),
            RtspMount(
                path="/secure",
                source="file",
                file=vtest,
                fps=10,
                width=768,
                height=576,
                keyframe_interval=20,
                username="viewer",
                password=SecretStr(self.password),
            ),
        ]

    # ----- start / stop -----

    def start(self) -> None:
        self.load_models()
        self.cameras.start()
        self.install()
        self.apply()

    def stop(self) -> None:
        """Stop what the demo started; the stack is the caller's. In the documented order: the
        Sites while the operator runs (it lets each go, the garbage collector takes the pools and
        their pods), then the release, then the cameras."""
        self.kubectl("delete", "sites", "--all", "--timeout=90s", check=False)
        self.release.uninstall()
        self.cameras.stop()

    def load_models(self) -> None:
        load_detector(self.stack)

    def install(self) -> None:
        """Pantau as an SRE installs it: `helm upgrade --install` of charts/pantau, with values that fit
        the local stack."""
        values = local_values(self.info, self.stack.settings, operator={"watchNamespaces": [self.namespace]})
        self.release.install(values)

    def apply(self) -> None:
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}}
        self.kubectl("apply", "-f", "-", stdin=json.dumps(namespace), namespaced=False)
        wait_for(
            lambda: self.kubectl("get", "serviceaccount", "default", check=False).returncode == 0,
            timeout=30,
            what="the namespace's default ServiceAccount",
        )
        self.kubectl("apply", "-f", "-", stdin=json.dumps(self._secret()))
        self.kubectl("apply", "-f", str(DEMO_DIR / "sites.yaml"))
        self.kubectl("apply", "-f", "-", stdin=self.render_cameras())

    def _secret(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            # Consent: Cameras of the market's Site may use this login, no others.
            "metadata": {
                "name": SECRET,
                "labels": {LABEL_CREDENTIALS: "true"},
                "annotations": {ANNOTATION_CREDENTIALS_SITES: "bengkulu-selatan"},
            },
            "stringData": {"username": "viewer", "password": self.password},
        }

    def render_cameras(self) -> str:
        text = (DEMO_DIR / "cameras.yaml").read_text()
        host = self.info.host_ip
        return text.replace("${RTSP}", f"{host}:{self.rtsp_port}").replace(
            "${BROKEN}", f"{host}:{free_port(host)}"
        )

    # ----- looking at it -----

    def kubectl(
        self, *args: str, stdin: str | None = None, namespaced: bool = True, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        ns = ["-n", self.namespace] if namespaced else []
        return self.release.tools.kubectl(*ns, *args, stdin=stdin, check=check)

    def objects(self, kind: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = json.loads(self.kubectl("get", kind, "-o", "json").stdout)["items"]
        return items

    def pod_log(self, pod: str) -> str:
        """What a pod of the demo's namespace wrote (all its containers), as `kubectl logs` shows it."""
        return self.kubectl("logs", pod, "--all-containers", check=False).stdout

    def pod_reports(self) -> dict[str, dict[str, Any]]:
        """The ingest pods' own /status, by camera name (live counters, unlike the Camera status)."""
        reports: dict[str, dict[str, Any]] = {}
        for pod in self.objects("pods"):
            ip = pod.get("status", {}).get("podIP")
            if not ip:
                continue
            try:
                resp = httpx.get(f"http://{ip}:{INGEST_PORT}/status", timeout=2)
                reports |= {c["name"]: c for c in resp.json().get("cameras", [])}
            except (httpx.HTTPError, ValueError):
                continue
        return reports

    def trace_ids(self, limit: int = 20) -> list[str]:
        if not self.info.jaeger_query:
            return []
        resp = httpx.get(
            f"{self.info.jaeger_query}/api/traces",
            params={"service": INGEST_SERVICE, "limit": str(limit), "lookback": "1h"},
            timeout=10,
        )
        return [t["traceID"] for t in (resp.json().get("data") or [])] if resp.status_code == 200 else []

    def summary(self) -> dict[str, Any]:
        reports = self.pod_reports()
        cameras = []
        for cam in self.objects("cameras"):
            status = cam.get("status", {})
            ready: dict[str, Any] = next(
                (c for c in status.get("conditions", []) if c["type"] == "Ready"), {}
            )
            report = reports.get(cam["metadata"]["name"], {})
            cameras.append(
                {
                    "namespace": cam["metadata"]["namespace"],
                    "name": cam["metadata"]["name"],
                    "site": cam["spec"]["siteRef"]["name"],
                    "ready": ready.get("status") == "True",
                    "streaming": bool(status.get("streaming")),
                    "reason": status.get("reason") or ready.get("reason"),
                    "frames_processed": int(
                        report.get("frames_processed") or status.get("framesProcessed") or 0
                    ),
                    "detections": dict(report.get("detections") or status.get("detectionCounts") or {}),
                }
            )
        return {"cameras": cameras, "trace_ids": self.trace_ids(), "jaeger": self.info.jaeger_query}
