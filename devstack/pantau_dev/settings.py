"""Settings of the local development stack, read once from PANTAU_DEV_* variables."""

from __future__ import annotations

import re
import sys
from ipaddress import IPv4Network
from pathlib import Path

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The source checkout this package lives in (devstack/pantau_dev/settings.py -> repo root).
REPO_ROOT = Path(__file__).resolve().parents[2]


def _default_state_dir() -> Path:
    return Path.home() / ".local" / "state" / "pantau" / "dev"


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "pantau"


class StackVersions(dict[str, str]):
    """Pinned versions from tools/versions.env (the single source, shared with tools/build.sh)."""

    @classmethod
    def load(cls, path: Path) -> StackVersions:
        versions = cls()
        for line in path.read_text().splitlines():
            m = re.fullmatch(r"\s*([A-Z0-9_]+)_VERSION=(\S+)\s*", line)
            if m:
                versions[m.group(1).lower()] = m.group(2)
        return versions


class DevSettings(BaseSettings):
    """Where the stack keeps its state and finds its binaries, and how big it is."""

    model_config = SettingsConfigDict(env_prefix="PANTAU_DEV_", frozen=True)

    state_dir: Path = Field(
        default_factory=_default_state_dir, description="PKI, etcd data, PID files, logs."
    )
    # PANTAU_CACHE is the variable the Makefile, tools/build.sh and tools/images.sh read: the stack
    # must look where they built.
    cache_dir: Path = Field(
        default_factory=_default_cache_dir,
        validation_alias=AliasChoices("PANTAU_DEV_CACHE_DIR", "PANTAU_CACHE", "cache_dir"),
        description="Where tools/build.sh put the Go binaries and .ci/run put Triton (PANTAU_CACHE).",
    )
    shared_dir: Path = Field(
        default=REPO_ROOT.parent / "shared",
        description="Read-only data: footage/ and models/ (see README, 'Shared data').",
    )
    tools_dir: Path = Field(default=REPO_ROOT / "tools", description="Holds versions.env.")
    python_bin_dir: Path = Field(
        default=Path(sys.executable).parent,
        description="bin/ of the Python environment the stack's tools (pantau, cameras) run from.",
    )
    kwok_nodes: int = Field(default=2, ge=0, description="Fake nodes managed by kwok, tainted.")
    start_timeout: float = Field(
        default=90.0, gt=0, description="Seconds each component may take to be ready."
    )
    with_triton: bool = True
    with_jaeger: bool = True
    real_node: bool = Field(
        default=True,
        description="Run the node that runs pods (containerd + kubelet + kube-proxy + CoreDNS, "
        "docs/local-node.md); needs root. Off: a control plane and kwok only (the chart's lint).",
    )
    real_node_name: str = Field(
        default="pantau-kubelet", pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", description="Its Node."
    )
    real_node_bridge: str = Field(
        default="pantau0", pattern=r"^[a-z][a-z0-9]{1,14}$", description="The pod network's bridge."
    )
    real_node_subnet: IPv4Network = Field(
        default=IPv4Network("10.244.0.0/24"),
        description="The pod network: only on the bridge, never routed elsewhere; .1 is the node's IP.",
    )
    service_subnet: IPv4Network = Field(
        default=IPv4Network("10.96.0.0/16"),
        description="Service ClusterIPs: .1 the API server, .10 cluster DNS; only in kube-proxy's rules.",
    )

    @field_validator("real_node_subnet", "service_subnet")
    @classmethod
    def _private_subnet(cls, v: IPv4Network) -> IPv4Network:
        if not v.is_private or not 12 <= v.prefixlen <= 28:
            raise ValueError("must be a private IPv4 network, /12 to /28")
        return v

    @model_validator(mode="after")
    def _apart(self) -> DevSettings:
        if self.real_node_subnet.overlaps(self.service_subnet):
            raise ValueError("real_node_subnet and service_subnet overlap: choose ranges apart")
        return self

    @property
    def versions(self) -> StackVersions:
        return StackVersions.load(self.tools_dir / "versions.env")

    def bin_dir(self, component: str) -> Path:
        return self.cache_dir / "bin" / f"{component}-{self.versions[component]}"

    @property
    def triton_dir(self) -> Path:
        """Target directory of the nvidia-pytriton wheel (its own: the wheel pins numpy<2)."""
        v = self.versions
        return self.cache_dir / f"pytriton-{v['pytriton']}-ort-{v['onnxruntime']}-pillow-{v['pillow']}"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def pid_dir(self) -> Path:
        return self.state_dir / "pids"
