"""What the planners read (the objects the handlers index, as plain data) and the Events they tell.

The handlers fill these from Kopf's indexes and never interpret them: which pods form a Site's pool,
which of them to poll, whether a write can wait, are all decided in pantau.reconcile."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pantau.contract import ANNOTATION_CREDENTIALS_SITES, LABEL_CREDENTIALS

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
class SecretFacts:
    """A Secret a Camera names, as its metadata shows it (the operator never reads its data)."""

    consent: bool = False  # labelled pantau.io/credentials=true
    sites: frozenset[str] | None = None  # the Sites its annotation allows; None: any Site

    @classmethod
    def of(cls, metadata: Mapping[str, Any]) -> SecretFacts:
        labels = metadata.get("labels") or {}
        listed = (metadata.get("annotations") or {}).get(ANNOTATION_CREDENTIALS_SITES)
        sites = None if listed is None else frozenset(s.strip() for s in listed.split(",") if s.strip())
        return cls(consent=labels.get(LABEL_CREDENTIALS) == "true", sites=sites)

    def refusal(self, name: str, site: str) -> str | None:
        """Why a Camera of `site` may not use this Secret, with the fix; None when it may."""
        if not self.consent:
            return f"Secret {name!r} is not permitted for Cameras: label it {LABEL_CREDENTIALS}=true"
        if self.sites is not None and site not in self.sites:
            allowed = ", ".join(sorted(self.sites)) or "none"
            return (
                f"Secret {name!r} is permitted for Sites {allowed} only: add {site!r} to its "
                f"{ANNOTATION_CREDENTIALS_SITES} annotation"
            )
        return None


@dataclass(frozen=True)
class PodFacts:
    """A pod as the watch shows it."""

    ready: bool
    ip: str = ""  # "" until the pod has one
    unschedulable: str | None = None  # the scheduler's message while no node fits the pod


@dataclass(frozen=True)
class SiteObservation:
    """Everything one pass over a Site reads: the Site, its Cameras, and what exists in its namespace."""

    site: ObjectFacts
    cameras: tuple[ObjectFacts, ...] = ()
    pods: Mapping[str, PodFacts] = field(default_factory=dict)  # Pantau's pods in the namespace, by name
    pools: Mapping[str, str] = field(default_factory=dict)  # Pantau's StatefulSets: name -> creationTimestamp
    secrets: Mapping[str, SecretFacts] = field(default_factory=dict)  # the named Secrets that exist


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
