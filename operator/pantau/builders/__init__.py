"""Pure builders: typed specs (and settings) in, Kubernetes manifest dicts out.

No Kubernetes client, no I/O, no clock: the same input always gives the same output, and inputs are
never modified. The k8s layer applies what these return (server-side apply)."""

from pantau.builders.names import label_value, pool_name, shard_name
from pantau.builders.pool import (
    Manifest,
    PoolSettings,
    SiteRef,
    build_pool,
    owner_reference,
    pool_labels,
    selector_labels,
)

__all__ = [
    "Manifest",
    "PoolSettings",
    "SiteRef",
    "build_pool",
    "label_value",
    "owner_reference",
    "pool_labels",
    "pool_name",
    "selector_labels",
    "shard_name",
]
