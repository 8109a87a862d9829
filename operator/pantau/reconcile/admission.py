"""What the CRDs' CEL rules cannot decide, decided for the validating webhook: it needs the operator's
configuration (the model's classes, the directories file:// sources may read) or another object (the
Camera's Site, which may allow otherwise refused networks). Pure: specs and policy in, problems out.

Every problem names the field and the fix, and never quotes a URL (a refused one may hold a secret);
a host name or address is not a secret and is named.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote, urlsplit

from pantau.models.camera import CameraSpec
from pantau.models.site import SiteSpec

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Addresses no camera or sink is: the node itself, link-local (where cloud metadata services live),
# the unspecified address, and metadata services outside link-local. A Site may list exceptions.
REFUSED_NETWORKS: Final[tuple[tuple[str, str], ...]] = (
    ("127.0.0.0/8", "loopback"),
    ("::1/128", "loopback"),
    ("169.254.0.0/16", "link-local (cloud metadata services live here)"),
    ("fe80::/10", "link-local"),
    ("0.0.0.0/8", "unspecified"),
    ("::/128", "unspecified"),
    ("fd00:ec2::254/128", "a cloud metadata service"),
    ("100.100.100.200/32", "a cloud metadata service"),
)
# Names that resolve to the above wherever they are used.
REFUSED_NAMES: Final[dict[str, str]] = {
    "localhost": "127.0.0.1",
    "metadata.google.internal": "169.254.169.254",
    "metadata": "169.254.169.254",
    "instance-data": "169.254.169.254",
}
_LEGACY_IPV4: Final = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}$", re.IGNORECASE)


@dataclass(frozen=True)
class AdmissionPolicy:
    """The operator's configuration the checks need."""

    model_classes: frozenset[str]  # what the detector can report
    file_dirs: tuple[str, ...] = ()  # absolute directories file:// sources may read; none: file:// refused


def _address(host: str) -> Address | None:
    """`host` as an address: literal IPv4/IPv6, the legacy IPv4 forms resolvers accept (127.1,
    0x7f000001, 2130706433), or one of REFUSED_NAMES; None for any other name."""
    name = host.lower().rstrip(".")
    if name in REFUSED_NAMES or name.endswith(".localhost"):
        return ipaddress.ip_address(REFUSED_NAMES.get(name, "127.0.0.1"))
    try:
        found = ipaddress.ip_address(name)
    except ValueError:
        if not _LEGACY_IPV4.match(name):
            return None
        try:
            return ipaddress.IPv4Address(socket.inet_aton(name))
        except OSError:
            return None
    if isinstance(found, ipaddress.IPv6Address) and found.ipv4_mapped is not None:
        return found.ipv4_mapped
    return found


def address_problem(url: str, allowed: Iterable[str], where: str) -> str | None:
    """Why the host of `url` may not be used (loopback, link-local, metadata) unless a network in
    `allowed` (the Site's allowedCameraNetworks) holds it; None when it may."""
    host = urlsplit(url).hostname
    if not host:
        return None
    address = _address(host)
    if address is None:
        return None
    nets: list[Network] = [ipaddress.ip_network(n) for n in allowed]
    if any(address.version == n.version and address in n for n in nets):
        return None
    for network, what in REFUSED_NETWORKS:
        refused = ipaddress.ip_network(network)
        if address.version == refused.version and address in refused:
            return (
                f"{where}: the host {host} is {what} ({address}), which no camera or sink may be: use the "
                f"device's own address, or list {refused} in the Site's spec.allowedCameraNetworks if this "
                "is intended"
            )
    return None


def file_problem(url: str, dirs: Sequence[str]) -> str | None:
    """Why a file:// source may not be read: the operator allows no files, or the path (after
    resolving '..') is outside every allowed directory."""
    if not url.startswith("file://"):
        return None
    if not dirs:
        return (
            "spec.source.url: file:// sources are not allowed by this operator: stream the file from a "
            "camera or server, or ask the operator's administrator to allow a directory "
            "(chart value operator.fileSourceDirs)"
        )
    path = posixpath.normpath(unquote(urlsplit(url).path))
    for allowed in dirs:
        root = posixpath.normpath(allowed)
        if path == root or path.startswith(root.rstrip("/") + "/"):
            return None
    return (
        f"spec.source.url: the file {path} is outside the directories file:// sources may read "
        f"({', '.join(dirs)}): move it into one of them"
    )


def classes_problem(classes: Iterable[str] | None, known: frozenset[str], where: str) -> str | None:
    unknown = sorted(set(classes or ()) - known)
    if not unknown:
        return None
    some = ", ".join(sorted(known)[:6])
    return (
        f"{where}: the detector does not know {', '.join(repr(c) for c in unknown)}: use its class names "
        f"(e.g. {some}; all {len(known)} in docs/operator.md)"
    )


def camera_problems(spec: CameraSpec, site: SiteSpec | None, policy: AdmissionPolicy) -> list[str]:
    """What is wrong with a Camera that its schema could not tell. `site` is its Site (None: absent,
    so no network is allowed beyond the default)."""
    allowed = site.allowed_camera_networks if site is not None else ()
    found = [
        address_problem(spec.source.url, allowed, "spec.source.url"),
        file_problem(spec.source.url, policy.file_dirs),
        classes_problem(spec.detection.classes if spec.detection else None, policy.model_classes,
                        "spec.detection.classes"),
    ]  # fmt: skip
    found += [
        classes_problem(zone.classes, policy.model_classes, f"spec.zones[{i}].classes")
        for i, zone in enumerate(spec.zones)
    ]
    found += [
        classes_problem(line.classes, policy.model_classes, f"spec.lines[{i}].classes")
        for i, line in enumerate(spec.lines)
    ]
    return [p for p in found if p is not None]


def site_problems(spec: SiteSpec, policy: AdmissionPolicy) -> list[str]:
    """What is wrong with a Site that its schema could not tell."""
    found = [
        classes_problem(spec.camera_defaults.classes, policy.model_classes, "spec.cameraDefaults.classes")
    ]
    for i, sink in enumerate(spec.event_sinks):
        if sink.url is not None:
            found.append(address_problem(sink.url, spec.allowed_camera_networks, f"spec.eventSinks[{i}].url"))
    return [p for p in found if p is not None]
