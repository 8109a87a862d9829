"""The Helm chart on the local stack: helm and kubectl as a user runs them, and the chart's lint
(`pantau dev lint-chart`, part of `make lint`): `helm lint --strict`, then `helm template` applied
with `kubectl apply --dry-run=server` into a namespace that enforces the restricted Pod Security
Standard, on a throwaway control plane."""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pantau_dev.images import PRODUCT, built_image
from pantau_dev.procs import StackError
from pantau_dev.settings import REPO_ROOT, DevSettings
from pantau_dev.stack import DevStack, StackInfo

CHART = REPO_ROOT / "charts" / "pantau"
# Values a lint or a dry-run needs: a model source for Triton (the chart refuses to guess one).
LINT_VALUES = CHART / "ci" / "lint-values.yaml"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/warn": "restricted",
    "pod-security.kubernetes.io/audit": "restricted",
}


class Tools:
    """helm and kubectl of the stack, pointed at its API server."""

    def __init__(self, settings: DevSettings, kubeconfig: Path) -> None:
        self.helm_bin = settings.bin_dir("helm") / "helm"
        self.kubectl_bin = settings.bin_dir("k8s") / "kubectl"
        self.kubeconfig = kubeconfig
        self.kube_version = settings.versions["k8s"]

    def _run(
        self, argv: Sequence[str], stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, check=False, timeout=300
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv[:3])} ... failed ({result.returncode}): {result.stderr.strip()[-2000:]}"
            )
        return result

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run([str(self.helm_bin), "--kubeconfig", str(self.kubeconfig), *args], check=check)

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self._run([str(self.kubectl_bin), "--kubeconfig", str(self.kubeconfig), *args], stdin, check)

    def template(
        self,
        namespace: str,
        *values: Path,
        sets: Sequence[str] = (),
        release: str = "pantau",
        show_only: Sequence[str] = (),
    ) -> str:
        args = [
            "template",
            release,
            str(CHART),
            "--namespace",
            namespace,
            "--kube-version",
            self.kube_version,
        ]
        for path in values:
            args += ["--values", str(path)]
        for item in sets:
            args += ["--set", item]
        for template in show_only:
            args += ["--show-only", template]
        return self.helm(*args).stdout

    def restricted_namespace(self, name: str) -> None:
        manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": RESTRICTED}}
        self.kubectl("apply", "-f", "-", stdin=json.dumps(manifest))

    def install_crds(self) -> None:
        self.kubectl("apply", "--server-side", "-f", str(CHART / "crds"))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")


OPERATOR_NAMESPACE = "pantau-system"
RELEASE = "pantau"


def local_values(info: StackInfo, settings: DevSettings, **overrides: Any) -> dict[str, Any]:
    """Values that fit the local stack: the images `make images` built (imported into the node's
    containerd, so never pulled), the stack's Triton and Jaeger on the node's address, status pulled
    from the pod network, short passes."""
    if info.node is None or info.pod_subnet is None:
        raise StackError("the chart needs the stack's node (PANTAU_DEV_REAL_NODE=1)")
    image = built_image(settings, PRODUCT)
    values: dict[str, Any] = {
        "image": {"repository": image.repository, "tag": image.tag, "pullPolicy": "Never"},
        "triton": {"enabled": False, "address": info.triton_grpc or ""},
        "operator": {"statusNetworks": [info.pod_subnet], "resyncInterval": 2},
        "otel": {"endpoint": info.jaeger_otlp_grpc or ""},
        "tests": {"enabled": True},
    }
    for key, value in overrides.items():
        values[key] = {**values.get(key, {}), **value} if isinstance(value, dict) else value
    return values


OPERATOR_RBAC = [
    "templates/operator-serviceaccount.yaml",
    "templates/operator-clusterrole.yaml",
    "templates/operator-clusterrolebinding.yaml",
]


def operator_kubeconfig(tools: Tools, info: StackInfo, namespace: str, path: Path) -> Path:
    """A kubeconfig for an operator run outside the cluster (a test that stops and starts it) with
    exactly the chart's rights: the chart's ServiceAccount, ClusterRole and binding applied into
    `namespace`, and a token of that ServiceAccount."""
    tools.kubectl("create", "namespace", namespace, check=False)
    rendered = tools.template(
        namespace,
        LINT_VALUES,
        release="host",
        sets=["triton.enabled=false", "triton.address=unused:8001"],
        show_only=OPERATOR_RBAC,
    )
    tools.kubectl("apply", "-n", namespace, "-f", "-", stdin=rendered)
    account = "host-pantau-operator"
    token = tools.kubectl("create", "token", account, "-n", namespace, "--duration=4h").stdout.strip()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "stack", "cluster": {"server": info.api_server, "certificate-authority": info.ca_file}}
        ],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {"cluster": "stack", "user": account}}],
        "current-context": account,
    }
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


@dataclass
class Release:
    """One Helm release of the chart, driven with helm as an SRE would."""

    tools: Tools
    name: str = RELEASE
    namespace: str = OPERATOR_NAMESPACE

    def install(self, values: Mapping[str, Any], timeout: str = "180s") -> None:
        """`helm upgrade --install ... --wait`: install, or upgrade to these values."""
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="pantau-values-") as f:
            f.write(json.dumps(values))
            f.flush()
            self.tools.helm(
                "upgrade", "--install", self.name, str(CHART), "--namespace", self.namespace,
                "--create-namespace", "--values", f.name, "--wait", "--timeout", timeout,
            )  # fmt: skip

    def rollback(self, revision: int, timeout: str = "180s") -> None:
        self.tools.helm(
            "rollback",
            self.name,
            str(revision),
            "--namespace",
            self.namespace,
            "--wait",
            "--timeout",
            timeout,
        )

    def uninstall(self, timeout: str = "180s") -> None:
        self.tools.helm("uninstall", self.name, "--namespace", self.namespace, "--wait", "--timeout", timeout)

    def installed(self) -> bool:
        return (
            self.tools.helm("status", self.name, "--namespace", self.namespace, check=False).returncode == 0
        )

    def revision(self) -> int:
        history = json.loads(
            self.tools.helm("history", self.name, "--namespace", self.namespace, "-o", "json").stdout
        )
        return int(history[-1]["revision"])

    def operator_pods(self) -> list[dict[str, Any]]:
        selector = f"app.kubernetes.io/instance={self.name},app.kubernetes.io/component=operator"
        listing = self.tools.kubectl("get", "pods", "-n", self.namespace, "-l", selector, "-o", "json").stdout
        pods: list[dict[str, Any]] = json.loads(listing)["items"]
        return pods


def lint(tools: Tools, namespace: str = "pantau-lint") -> list[str]:
    """Problems of the chart: lint findings, objects the API server refuses, Pod Security warnings."""
    problems: list[str] = []
    result = tools.helm("lint", "--strict", str(CHART), "--values", str(LINT_VALUES), check=False)
    if result.returncode != 0:
        problems.append(f"helm lint: {result.stdout.strip()[-2000:]} {result.stderr.strip()[-2000:]}")
    tools.install_crds()
    tools.restricted_namespace(namespace)
    rendered = tools.template(namespace, LINT_VALUES)
    applied = tools.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", "-", stdin=rendered, check=False
    )
    if applied.returncode != 0:
        problems.append(f"kubectl apply --dry-run=server: {applied.stderr.strip()[-2000:]}")
    problems += [f"Pod Security: {line}" for line in applied.stderr.splitlines() if "PodSecurity" in line]
    return problems


def lint_on_throwaway_stack(settings: DevSettings) -> list[str]:
    """`lint` on a control plane of its own (no node, no Triton, no Jaeger), stopped afterwards."""
    with tempfile.TemporaryDirectory(prefix="pantau-lint-") as state:
        stack = DevStack(
            settings.model_copy(
                update={
                    "state_dir": Path(state),
                    "with_triton": False,
                    "with_jaeger": False,
                    "kwok_nodes": 0,
                    "real_node": False,
                }
            )
        )
        try:
            stack.up()
            return lint(Tools(stack.settings, stack.kubeconfig))
        finally:
            stack.down(purge=True)
