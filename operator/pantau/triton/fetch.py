"""Download a model file and check it against its published SHA-256 (the Triton Deployment's init
container does this when the chart names a URL): a wrong or truncated download never reaches Triton."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import httpx

SHA256 = re.compile(r"[0-9a-f]{64}")


class FetchError(ValueError):
    """The download failed or is not the file its checksum names."""


def fetch(url: str, sha256: str, out: Path, *, timeout: float = 60.0) -> Path:
    """Stream `url` into `out` (atomically: a temporary file renamed once checked); raise FetchError
    on an HTTP error or a checksum mismatch, leaving nothing at `out`."""
    expected = sha256.strip().lower()
    if not SHA256.fullmatch(expected):
        raise FetchError("--sha256 must be 64 hexadecimal characters")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    digest = hashlib.sha256()
    try:
        with httpx.stream("GET", url, timeout=timeout, follow_redirects=True) as response:
            if response.status_code != 200:
                raise FetchError(f"download failed: HTTP {response.status_code}")
            with partial.open("wb") as f:
                for chunk in response.iter_bytes():
                    digest.update(chunk)
                    f.write(chunk)
    except httpx.HTTPError as exc:
        partial.unlink(missing_ok=True)
        raise FetchError(f"download failed: {type(exc).__name__}") from exc
    except FetchError:
        partial.unlink(missing_ok=True)
        raise
    if digest.hexdigest() != expected:
        partial.unlink(missing_ok=True)
        raise FetchError(f"checksum mismatch: got sha256 {digest.hexdigest()}, expected {expected}")
    os.replace(partial, out)
    return out
