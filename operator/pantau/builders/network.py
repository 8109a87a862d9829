"""The NetworkPolicy of a Site's ingest pool: what its pods may reach and what may reach them. Pure.

Ingress: their HTTP port (/status for the operator, /metrics for Prometheus, the kubelet's probes).
Egress: DNS, the API server (they watch their Cameras and read their Secrets), Triton, the OTLP
collector, the Site's event sinks and its cameras. A camera or sink named by IP address is allowed
at that address and port only; one named by host name at its port on any address (a NetworkPolicy
cannot name hosts). Policies need a CNI that enforces them; the local stack's bridge does not."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from pantau.models.limits import DEFAULT_PORTS

Manifest = dict[str, Any]

API_SERVER_PORTS = (443, 6443)  # managed clusters serve on 443, kubeadm ones on 6443
DNS_PORT = 53


def endpoint(url: str) -> tuple[str, int] | None:
    """(host, port) a URL connects to; None for files and URLs without a host."""
    parts = urlsplit(url if "://" in url else f"tcp://{url}")
    if parts.scheme == "file" or not parts.hostname:
        return None
    port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
    return (parts.hostname, port) if port else None


def _peer(host: str, port: int) -> Manifest:
    rule: Manifest = {"ports": [{"port": port, "protocol": "TCP"}]}
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return rule  # a host name: the port on any address
    rule["to"] = [{"ipBlock": {"cidr": f"{address}/{address.max_prefixlen}"}}]
    return rule


def egress_rules(urls: Iterable[str]) -> list[Manifest]:
    """One rule per distinct (host, port) the URLs connect to, in a stable order."""
    peers = sorted({found for url in urls if (found := endpoint(url)) is not None})
    return [_peer(host, port) for host, port in peers]


def ingest_network_policy(
    metadata: Manifest, selector: dict[str, str], port: int, destinations: Sequence[str]
) -> Manifest:
    """The pool's policy. `destinations` are the URLs and host:port addresses its pods connect to
    (Triton, OTLP, sinks, cameras)."""
    dns = {"ports": [{"port": DNS_PORT, "protocol": "UDP"}, {"port": DNS_PORT, "protocol": "TCP"}]}
    api = {"ports": [{"port": p, "protocol": "TCP"} for p in API_SERVER_PORTS]}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata,
        "spec": {
            "podSelector": {"matchLabels": selector},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"ports": [{"port": port, "protocol": "TCP"}]}],
            "egress": [dns, api, *egress_rules(destinations)],
        },
    }
