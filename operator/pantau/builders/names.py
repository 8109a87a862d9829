"""Deterministic names of a Site's children, and the label keys and values Pantau puts on them.

Every name here is a pure function of the parent's name, so the operator finds its children again after
a restart without storing anything. Names stay within Kubernetes' limits: when a parent's name does not
fit (Site names may be 253-character DNS subdomains) or is not a valid child name as it stands, the
child's name keeps a readable prefix and ends with a short hash of the full parent name, so two parents
never share a child name by truncation."""

from __future__ import annotations

import hashlib
import re
from typing import Final

# Kubernetes limits.
MAX_LABEL_VALUE: Final = 63
MAX_DNS_LABEL: Final = 63
# A StatefulSet's name is the prefix of its pods' names ("<name>-<ordinal>", used as hostname and in the
# statefulset.kubernetes.io/pod-name and pantau.io/shard labels) and of its ControllerRevisions (whose
# "<name>-<10-character hash>" is the controller-revision-hash label): 52 keeps all of them within 63.
MAX_POOL_NAME: Final = 52
MAX_POOL_ORDINAL: Final = 9999  # far above IngestPool.max_pods (64); keeps "<pool>-<ordinal>" <= 57

HASH_LENGTH: Final = 8
INGEST_SUFFIX: Final = "ingest"

# RFC 1035 label: what a Service name must be (a letter first), and so every name of the pool.
_DNS1035_LABEL: Final = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_LABEL_VALUE: Final = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def short_hash(value: str) -> str:
    """A short, stable digest of `value` (lower-case hex)."""
    return hashlib.sha256(value.encode()).hexdigest()[:HASH_LENGTH]


def pool_name(site: str) -> str:
    """The name of a Site's ingest pool: its StatefulSet, headless Service, ServiceAccount, Role,
    RoleBinding and PodDisruptionBudget (each kind has its own name space, so they share it).

    "<site>-ingest" when that is an RFC 1035 label of at most 52 characters; otherwise a prefix of the Site
    name (dots made dashes, "site-" in front if it does not start with a letter) followed by
    "-ingest-<hash of the full Site name>". A plain name always ends in "-ingest" and a hashed one in
    hex digits, so the two forms cannot collide."""
    plain = f"{site}-{INGEST_SUFFIX}"
    if len(plain) <= MAX_POOL_NAME and _DNS1035_LABEL.fullmatch(plain):
        return plain
    readable = re.sub(r"[^a-z0-9-]", "-", site.lower())
    if not readable[:1].isalpha():
        readable = f"site-{readable}"
    tail = f"-{INGEST_SUFFIX}-{short_hash(site)}"
    prefix = readable[: MAX_POOL_NAME - len(tail)].rstrip("-")
    return f"{prefix}{tail}"


def shard_name(pool: str, ordinal: int) -> str:
    """The name of the pool's pod `ordinal`, as the StatefulSet controller names it: a shard that
    Cameras are assigned to."""
    if not 0 <= ordinal <= MAX_POOL_ORDINAL:
        raise ValueError(f"a pool ordinal is between 0 and {MAX_POOL_ORDINAL}, not {ordinal}")
    return f"{pool}-{ordinal}"


def label_value(name: str) -> str:
    """An object name as a label value: unchanged when it fits (63 characters), otherwise a prefix and a
    hash of the full name. Select children by this value; the exact parent is in their ownerReferences."""
    if len(name) <= MAX_LABEL_VALUE and _LABEL_VALUE.fullmatch(name):
        return name
    digest = short_hash(name)
    prefix = re.sub(r"[^-A-Za-z0-9_.]", "-", name)[: MAX_LABEL_VALUE - len(digest) - 1].strip("-_.")
    return f"{prefix}-{digest}" if prefix else digest
