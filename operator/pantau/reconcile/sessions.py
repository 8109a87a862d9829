"""A camera's session budget (spec.source.maxSessions), shared by the Cameras that read one source.

Two Camera objects with the same source URL are two sessions on one camera stream. When more Cameras
read a source than the smallest budget among them allows, the first ones by name keep their sessions
and the others get no pod (nothing connects for them) and say why, so Pantau never opens more sessions
than the camera owner allowed. Pure."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from pantau.models.limits import DEFAULT_PORTS
from pantau.reconcile.facts import ObjectFacts


def source_key(url: str) -> str:
    """The stream a URL names: scheme, host and port (explicit), path and query; case-folded where
    URLs are case-insensitive. Camera URLs carry no user info (the CRD refuses it)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        return url
    port = parts.port or DEFAULT_PORTS.get(scheme, 0)
    return f"{scheme}://{(parts.hostname or '').lower()}:{port}{parts.path or '/'}?{parts.query}"


def over_budget(cameras: Sequence[ObjectFacts]) -> Mapping[str, str]:
    """Camera name -> why it gets no session, for the active Cameras a source's budget leaves out."""
    readers: dict[str, list[ObjectFacts]] = defaultdict(list)
    for camera in sorted(cameras, key=lambda c: c.name):
        readers[source_key(camera.spec.source.url)].append(camera)
    refused: dict[str, str] = {}
    for group in readers.values():
        budget = min(c.spec.source.max_sessions for c in group)
        if len(group) <= budget:
            continue
        kept = ", ".join(c.name for c in group[:budget])
        for camera in group[budget:]:
            refused[camera.name] = (
                f"{len(group)} Cameras read this source and its session budget is {budget} "
                f"(spec.source.maxSessions; {kept} hold the sessions): delete the duplicate Camera "
                "or raise spec.source.maxSessions on all of them"
            )
    return refused
