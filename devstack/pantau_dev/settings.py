"""Settings of the local development stack, read once from PANTAU_DEV_* variables."""

from __future__ import annotations

import re
import sys
from ipaddress import IPv4Network
from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
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
        description="bin/ of the Python environment that pods' commands run from (the 'image').",
    )
    kwok_nodes: int = Field(default=2, ge=0, description="Fake nodes managed by kwok.")
    pod_ip_prefix: str = Field(
        default="127.0.0.", pattern=r"^127\.\d{1,3}\.\d{1,3}\.$", description="Pods get PREFIX10..PREFIX250."
    )
    start_timeout: float = Field(
        default=90.0, gt=0, description="Seconds each component may take to be ready."
    )
    with_triton: bool = True
    with_jaeger: bool = True
    real_node: bool = Field(
        default=False,
        description="Also run a real node (containerd + kubelet, docs/local-node.md); needs root.",
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

    @field_validator("real_node_subnet")
    @classmethod
    def _private_subnet(cls, v: IPv4Network) -> IPv4Network:
        if not v.is_private or not 16 <= v.prefixlen <= 28:
            raise ValueError("real_node_subnet must be a private IPv4 network, /16 to /28")
        return v

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
