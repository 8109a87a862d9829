"""Ports and health probes of the local stack."""

from __future__ import annotations

import socket

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_ok(url: str) -> bool:
    """Whether a component's health endpoint answers 200 (plain HTTP, or its self-signed HTTPS)."""
    try:
        return httpx.get(url, timeout=2, verify=False).status_code == 200  # noqa: S501 - local health only
    except httpx.HTTPError:
        return False
