"""A container's command line and environment, resolved the way a kubelet does.

Images are not pulled: `command` + `args` run as-is from the project's Python environment
(`--python-bin-dir` leads PATH). With no `command`, an image named `pantau` or `<anything>/pantau`
(tag or digest ignored) has the entrypoint `pantau`; any other image needs an explicit command
(otherwise the container waits with reason CreateContainerConfigError).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from pathlib import Path

from pantau_dev.nodeagent.kube import JSON, ApiError, Kube

SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_REFERENCE = re.compile(r"\$\$|\$\(([^)]*)\)")


class ConfigError(Exception):
    """The container cannot be configured (kubelet: CreateContainerConfigError)."""


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubelet's `$(VAR)` expansion: defined names are replaced, `$$` escapes, the rest stays."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _REFERENCE.sub(sub, value)


def image_repository(image: str) -> str:
    """The image name without tag or digest (a ':' before the last '/' is a registry port)."""
    name = image.split("@", 1)[0]
    if name.rfind(":") > name.rfind("/"):
        name = name[: name.rfind(":")]
    return name


def entrypoint(image: str) -> list[str]:
    repo = image_repository(image)
    if repo == "pantau" or repo.endswith("/pantau"):
        return ["pantau"]
    raise ConfigError(
        f"image {image!r} has no entrypoint on the local node: set the container's command "
        "(pantau-local runs command+args from the project environment; only images named "
        "'pantau' or '*/pantau' default to the 'pantau' command)"
    )


def field_ref(pod: JSON, path: str) -> str:
    meta, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status", {})
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.*)'\]", path)
    if m:
        return str(meta.get(m.group(1), {}).get(m.group(2), ""))
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
    }
    if path in simple:
        return str(simple[path] or "")
    if path in ("status.podIPs", "status.hostIPs"):
        return ",".join(str(a.get("ip", "")) for a in status.get(path.split(".")[1], []))
    if path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(path.split(".")[1], {})
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    raise ConfigError(f"unsupported fieldRef {path!r}")


class EnvResolver:
    """Reads referenced Secrets and ConfigMaps with the agent's credentials, like a kubelet."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self._cache: dict[tuple[str, str], dict[str, str] | None] = {}

    def _data(self, kind: str, name: str) -> dict[str, str] | None:
        """Decoded data of a Secret or ConfigMap, None when it does not exist."""
        key = (kind, name)
        if key not in self._cache:
            plural = "secrets" if kind == "Secret" else "configmaps"
            try:
                obj = self.kube.get(f"/api/v1/namespaces/{self.namespace}/{plural}/{name}")
            except ApiError as exc:
                if exc.status != 404:
                    raise ConfigError(f"reading {kind} {self.namespace}/{name}: {exc}") from exc
                self._cache[key] = None
            else:
                data: dict[str, str] = {}
                if kind == "Secret":
                    for k, v in (obj.get("data") or {}).items():
                        data[k] = base64.b64decode(v).decode(errors="replace")
                else:
                    data.update(obj.get("data") or {})
                    for k, v in (obj.get("binaryData") or {}).items():
                        data[k] = base64.b64decode(v).decode(errors="replace")
                self._cache[key] = data
        return self._cache[key]

    def key_ref(self, kind: str, ref: JSON) -> str | None:
        name, key, optional = ref.get("name", ""), ref.get("key", ""), bool(ref.get("optional"))
        data = self._data(kind, name)
        if data is None:
            if optional:
                return None
            raise ConfigError(f'{kind.lower()} "{name}" not found')
        if key not in data:
            if optional:
                return None
            raise ConfigError(f"couldn't find key {key} in {kind} {self.namespace}/{name}")
        return data[key]

    def all_keys(self, kind: str, ref: JSON) -> dict[str, str]:
        data = self._data(kind, ref.get("name", ""))
        if data is None:
            if ref.get("optional"):
                return {}
            raise ConfigError(f'{kind.lower()} "{ref.get("name", "")}" not found')
        return data


def container_env(
    pod: JSON, container: JSON, base: Mapping[str, str], resolver: EnvResolver
) -> dict[str, str]:
    """`base` (PATH, service variables ...), then envFrom, then env, with `$(VAR)` expansion."""
    env = dict(base)
    for src in container.get("envFrom") or []:
        prefix = src.get("prefix", "")
        if "configMapRef" in src:
            values = resolver.all_keys("ConfigMap", src["configMapRef"])
        elif "secretRef" in src:
            values = resolver.all_keys("Secret", src["secretRef"])
        else:
            continue
        env.update({prefix + k: v for k, v in values.items()})
    for var in container.get("env") or []:
        name = var["name"]
        source = var.get("valueFrom")
        if source is None:
            env[name] = expand(var.get("value", ""), env)
        elif "fieldRef" in source:
            env[name] = field_ref(pod, source["fieldRef"]["fieldPath"])
        elif "secretKeyRef" in source or "configMapKeyRef" in source:
            kind, ref = (
                ("Secret", source["secretKeyRef"])
                if "secretKeyRef" in source
                else ("ConfigMap", source["configMapKeyRef"])
            )
            value = resolver.key_ref(kind, ref)
            if value is not None:
                env[name] = value
        else:
            raise ConfigError(f"env {name}: unsupported valueFrom {sorted(source)}")
    return env


def command_line(container: JSON, env: Mapping[str, str]) -> list[str]:
    command = list(container.get("command") or [])
    if not command:
        command = entrypoint(str(container.get("image", "")))
    return [expand(str(a), env) for a in command + list(container.get("args") or [])]


def base_env(
    pod: JSON, python_bin_dir: Path, api_host: str, api_port: int, sa_dir: Path | None
) -> dict[str, str]:
    """What every container starts from: no variables of the agent's own environment leak in."""
    env = {
        "PATH": f"{python_bin_dir}:{SYSTEM_PATH}",
        "HOME": str(Path.home()),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "HOSTNAME": str(pod["metadata"]["name"]),
        # In-cluster clients build the API URL from these (the `kubernetes` Service's variables).
        "KUBERNETES_SERVICE_HOST": api_host,
        "KUBERNETES_SERVICE_PORT": str(api_port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(api_port),
        "KUBERNETES_PORT": f"tcp://{api_host}:{api_port}",
    }
    if sa_dir is not None:
        env["PANTAU_SERVICEACCOUNT_DIR"] = str(sa_dir)
    return env
