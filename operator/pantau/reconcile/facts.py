"""What the planners read (the objects the handlers index, as plain data) and the Events they tell.

The handlers fill these from Kopf's indexes and never interpret them: which pods form a Site's pool,
which of them to poll, whether a write can wait, are all decided in pantau.reconcile."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]


@dataclass(frozen=True)
class ObjectFacts:
    """What the handlers index of a Site or Camera: identity, spec (None if invalid), status."""

    namespace: str
    name: str
    uid: str
    generation: int
    spec: Any  # SiteSpec | CameraSpec | None
    error: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    status: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PodFacts:
    """A pod as the watch shows it."""

    ready: bool
    ip: str = ""  # "" until the pod has one


@dataclass(frozen=True)
class SiteObservation:
    """Everything one pass over a Site reads: the Site, its Cameras, and what exists in its namespace."""

    site: ObjectFacts
    cameras: tuple[ObjectFacts, ...] = ()
    pods: Mapping[str, PodFacts] = field(default_factory=dict)  # Pantau's pods in the namespace, by name
    pools: Mapping[str, str] = field(default_factory=dict)  # Pantau's StatefulSets: name -> creationTimestamp
    secrets: frozenset[str] = frozenset()  # names of the namespace's Secrets


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post about a Site or Camera."""

    kind: str  # "Site" or "Camera"
    namespace: str
    name: str
    uid: str
    type: str  # Normal / Warning
    reason: str
    message: str


def event(kind: str, about: ObjectFacts, type_: str, reason: str, message: str) -> Event:
    return Event(kind, about.namespace, about.name, about.uid, type_, reason, message)
