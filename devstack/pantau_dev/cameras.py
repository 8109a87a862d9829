"""Test cameras of the local stack: an RTSP server (GStreamer) and an HTTP MJPEG server.

Both run as background processes through `ProcessTable`. Their config files are written with mode
0600 because they hold camera passwords in clear text (the servers need them).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from pantau_dev.net import port_open
from pantau_dev.procs import ManagedProcess, ProcessRecord, ProcessTable, StackError, wait_for

# The default address of a test camera; pods reach the stack's node address instead
# (`StackInfo.host_ip`), which callers pass as `host`.
HOST = "127.0.0.1"
ASSETS = Path(__file__).resolve().parent / "assets"
RTSP_SERVER_SCRIPT = ASSETS / "rtsp_server.py"
# Only Debian's interpreter has the GStreamer introspection bindings (python3-gi).
SYSTEM_PYTHON = "/usr/bin/python3"


class _Feed(BaseModel):
    """Picture source and credentials shared by RTSP mounts and HTTP cameras."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: Literal["file", "pattern"] = "file"
    file: Path | None = None
    fps: int = Field(default=10, ge=1, le=60)
    # Even sizes: 4:2:0 chroma (H.264, JPEG) halves both dimensions.
    width: int = Field(default=768, ge=16, le=3840, multiple_of=2)
    height: int = Field(default=576, ge=16, le=2160, multiple_of=2)
    username: str | None = None
    password: SecretStr | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.source == "file" and self.file is None:
            raise ValueError("a file source needs `file`")
        if self.source == "pattern" and self.file is not None:
            raise ValueError("a pattern source takes no `file`")
        if (self.username is None) != (self.password is None):
            raise ValueError("give both username and password, or neither")
        if self.username is not None and ":" in self.username:
            raise ValueError("a Basic auth username cannot contain ':'")
        return self

    @property
    def secured(self) -> bool:
        return self.username is not None

    def credentials(self) -> tuple[str, str] | None:
        if self.username is None or self.password is None:
            return None
        return self.username, self.password.get_secret_value()

    def _server_fields(self) -> dict[str, Any]:
        """Fields for the server's config file, with the password revealed."""
        data = self.model_dump(mode="json", exclude={"password"})
        data["password"] = self.password.get_secret_value() if self.password is not None else None
        if self.file is not None:
            data["file"] = str(self.file.resolve())
        return data


class RtspMount(_Feed):
    """One stream of the RTSP server, e.g. `rtsp://127.0.0.1:PORT/vtest`."""

    path: str = Field(pattern=r"^/[A-Za-z0-9._~/-]*$")
    keyframe_interval: int = Field(default=20, ge=1, le=600)


class RtspServerConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    host: IPv4Address = IPv4Address(HOST)
    port: int = Field(ge=1, le=65535)
    mounts: tuple[RtspMount, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_paths(self) -> Self:
        paths = [m.path for m in self.mounts]
        if len(set(paths)) != len(paths):
            raise ValueError(f"mount paths must be unique: {paths}")
        return self

    def server_json(self) -> dict[str, Any]:
        return {
            "host": str(self.host),
            "port": self.port,
            "mounts": [m._server_fields() for m in self.mounts],
        }


class HttpCameraConfig(_Feed):
    """What `python -m pantau_dev.httpcamera --config` reads."""

    host: IPv4Address = IPv4Address(HOST)
    port: int = Field(ge=1, le=65535)
    fps: int = Field(default=5, ge=1, le=60)

    def server_json(self) -> dict[str, Any]:
        return self._server_fields()


def write_secret_json(path: Path, data: object) -> None:
    """Write JSON readable by the owner only, atomically (never briefly world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)  # the file may have existed with a wider mode
        json.dump(data, f, indent=2, sort_keys=True)
    tmp.replace(path)


def _log_size(record_log: Path) -> int:
    try:
        return record_log.stat().st_size
    except OSError:
        return 0


def _said_ready(log: Path, offset: int) -> bool:
    """Whether the process printed "ready" after `offset` (logs are appended across restarts)."""
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            return b"ready" in f.read().splitlines()
    except OSError:
        return False


class _ServerProcess(ManagedProcess):
    """Start/stop plumbing common to both camera servers."""

    def __init__(self, table: ProcessTable, name: str, host: str, port: int, startup_timeout: float) -> None:
        self.table = table
        self.name = name
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str] | None:
        return None

    def _write_config(self) -> None:
        raise NotImplementedError

    def start(self) -> ProcessRecord:
        """Start the server unless its process already runs; return once it accepts connections."""
        running = self.table.running(self.name)
        if running is not None:
            return running
        self._write_config()
        offset = _log_size(self.table.log_dir / f"{self.name}.log")
        record = self.table.spawn(self.name, self._argv(), env=self._env())
        wait_for(
            lambda: _said_ready(Path(record.log), offset) and port_open(self.host, self.port),
            timeout=self.startup_timeout,
            what=f"camera {self.name} on {self.host}:{self.port}",
            record=record,
        )
        return record


class RtspCameraServer(_ServerProcess):
    """The GStreamer RTSP server (`assets/rtsp_server.py`) serving `mounts` on `host`:`port`."""

    def __init__(
        self,
        table: ProcessTable,
        name: str,
        port: int,
        mounts: Sequence[RtspMount],
        work_dir: Path,
        *,
        host: str = HOST,
        python: str = SYSTEM_PYTHON,
        startup_timeout: float = 30.0,
    ) -> None:
        super().__init__(table, name, host, port, startup_timeout)
        self.config = RtspServerConfig(host=IPv4Address(host), port=port, mounts=tuple(mounts))
        self.config_path = work_dir / f"{name}.json"
        self.python = python

    def _argv(self) -> list[str]:
        return [self.python, str(RTSP_SERVER_SCRIPT), str(self.config_path)]

    def _env(self) -> dict[str, str]:
        # The system interpreter must not pick up the venv's packages.
        drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}
        return {k: v for k, v in os.environ.items() if k not in drop}

    def _write_config(self) -> None:
        for mount in self.config.mounts:
            if mount.file is not None and not mount.file.is_file():
                raise StackError(f"camera {self.name}: footage {mount.file} not found")
        write_secret_json(self.config_path, self.config.server_json())

    def mount(self, path: str) -> RtspMount:
        for m in self.config.mounts:
            if m.path == path:
                return m
        raise KeyError(f"camera {self.name} has no mount {path}")

    def url(self, path: str, with_credentials: bool = False) -> str:
        """`rtsp://HOST:PORT/path`; with the mount's user:password when asked (tests)."""
        mount = self.mount(path)
        creds = mount.credentials()
        userinfo = ""
        if with_credentials and creds is not None:
            userinfo = f"{quote(creds[0], safe='')}:{quote(creds[1], safe='')}@"
        return f"rtsp://{userinfo}{self.host}:{self.port}{mount.path}"


class HttpCameraServer(_ServerProcess):
    """`python -m pantau_dev.httpcamera`: MJPEG stream and snapshots over HTTP on `config.host`."""

    def __init__(
        self,
        table: ProcessTable,
        name: str,
        config: HttpCameraConfig,
        work_dir: Path,
        *,
        startup_timeout: float = 20.0,
    ) -> None:
        super().__init__(table, name, str(config.host), config.port, startup_timeout)
        self.config = config
        self.config_path = work_dir / f"{name}.json"

    def _argv(self) -> list[str]:
        return [sys.executable, "-m", "pantau_dev.httpcamera", "--config", str(self.config_path)]

    def _write_config(self) -> None:
        if self.config.file is not None and not self.config.file.is_file():
            raise StackError(f"camera {self.name}: footage {self.config.file} not found")
        write_secret_json(self.config_path, self.config.server_json())

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def mjpeg_url(self) -> str:
        return f"{self.base_url}/mjpeg"

    @property
    def snapshot_url(self) -> str:
        return f"{self.base_url}/snapshot.jpg"

    @property
    def healthz_url(self) -> str:
        return f"{self.base_url}/healthz"

    def credentials(self) -> tuple[str, str] | None:
        """(user, password) for HTTP Basic auth, or None when the camera is open."""
        return self.config.credentials()
