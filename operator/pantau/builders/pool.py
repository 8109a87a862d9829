"""The manifests of a Site's ingest pool: ServiceAccount, Role, RoleBinding, headless Service, StatefulSet
and PodDisruptionBudget.

Why a StatefulSet and not a Deployment: Cameras are assigned to shards, and a shard is a pod name
("<pool>-<ordinal>", in the Camera's pantau.io/shard label). A StatefulSet's pod names are stable, so a
pod that restarts, is rescheduled or is replaced in a rolling update comes back as the same shard and
keeps its cameras; scaling moves only the cameras of the ordinals added or removed. A Deployment's pods
get random names, which would reassign every camera of a pod on each restart (and briefly leave them
unserved). No volumes are claimed: the StatefulSet is used for its identities, not for storage, so
`podManagementPolicy: Parallel` (shards are independent; nothing needs an ordered start).

Ingest pods learn their cameras from the API (a watch on Cameras with pantau.io/shard=$(POD_NAME)) and
read the credential Secrets of the Site's cameras: the Role grants exactly that and nothing else, and
no credential ever goes into the pod spec.

Pure: no I/O, no clock, no Kubernetes client; the same arguments give the same (equal, identically
ordered) list, and the arguments are never modified. The objects are meant for server-side apply, so
they hold only the fields Pantau owns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pantau.builders.names import label_value, pool_name
from pantau.builders.network import ingest_network_policy
from pantau.contract import (
    HEALTHZ_PATH,
    INGEST_APP,
    INGEST_COMMAND,
    INGEST_COMPONENT,
    INGEST_PORT,
    LABEL_COMPONENT,
    LABEL_HOSTNAME,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_PART_OF,
    LABEL_SITE,
    LABEL_ZONE,
    MANAGED_BY,
    PART_OF,
    READYZ_PATH,
    env_name,
    pod_env,
)
from pantau.models import API_VERSION, CAMERAS, GROUP, SITES, Resources, SiteSpec

Manifest = dict[str, Any]

SITE_KIND: Final = "Site"

# The ingest container's command, port, probe paths and environment names are in pantau.contract.
CONTAINER_NAME: Final = "ingest"
PORT_NAME: Final = "http"
ENV_OTEL_SERVICE_NAME: Final = "OTEL_SERVICE_NAME"
ENV_OTEL_ENDPOINT: Final = "OTEL_EXPORTER_OTLP_ENDPOINT"
ENV_OTEL_RESOURCE_ATTRIBUTES: Final = "OTEL_RESOURCE_ATTRIBUTES"
OTEL_SERVICE_NAME: Final = "pantau-ingest"
# Resource attribute that carries the Site on every span and metric of the pod.
OTEL_SITE_ATTRIBUTE: Final = "pantau.site"

# The distroless "nonroot" user: any non-zero ID works, a fixed one keeps file ownership predictable.
NONROOT_ID: Final = 65532
TMP_VOLUME: Final = "tmp"
TMP_PATH: Final = "/tmp"  # noqa: S108 (a private emptyDir, the only writable path of the container)
TMP_SIZE_LIMIT: Final = "256Mi"
# Undelivered events of the webhook sinks, on the pod's volume: they outlive a container restart.
SPOOL_PATH: Final = f"{TMP_PATH}/spool"
TERMINATION_GRACE_SECONDS: Final = 30

DEFAULT_ANALYTICS_INTERVAL: Final = 300.0  # IngestSettings.analytics_interval's default

# Used when the Site names no resources. Memory is limited (a leak in a decoder must not take the node
# down); CPU is not (a throttled decoder drops frames, idle CPU on the node should be used).
DEFAULT_RESOURCES: Final[Manifest] = {
    "requests": {"cpu": "250m", "memory": "256Mi"},
    "limits": {"memory": "512Mi"},
}

# Readiness says "serving its cameras"; liveness only "the process loop runs", and is lenient (a minute)
# so a slow camera or a slow start never gets a pod killed.
READINESS_PROBE: Final[Manifest] = {"periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 3}
LIVENESS_PROBE: Final[Manifest] = {"periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 6}


@dataclass(frozen=True)
class PoolSettings:
    """The operator-wide defaults the pool needs (taken from the operator's settings)."""

    default_image: str
    triton_address: str  # used when the Site has no spec.inference.tritonAddress
    model: str  # used when the Site has no spec.inference.model
    otlp_endpoint: str | None  # OTEL_EXPORTER_OTLP_ENDPOINT for the pods; none: not set
    image_pull_policy: str = "IfNotPresent"
    service_name: str = OTEL_SERVICE_NAME  # OTEL_SERVICE_NAME of the pods
    otel_env: Mapping[str, str] = field(default_factory=dict)  # more OTEL_* (sampler, resource attributes)
    analytics_interval: float | None = None  # seconds of the Cameras' interval counts; None: the pods' own
    fallback_model_url: str | None = None  # the detector's ONNX file, for Sites with a fallback detector
    fallback_model_sha256: str | None = None


@dataclass(frozen=True)
class SiteRef:
    """The Site that owns the pool (metadata of the Site object)."""

    name: str
    namespace: str
    uid: str


def build_pool(
    site: SiteRef,
    spec: SiteSpec,
    replicas: int,
    secret_names: Sequence[str],
    settings: PoolSettings,
    camera_urls: Sequence[str] = (),
) -> list[Manifest]:
    """The pool's objects, in apply order: [ServiceAccount, Role, RoleBinding, Service, StatefulSet,
    PodDisruptionBudget, NetworkPolicy].

    `replicas` is the number of shards (the operator's scaling decision); `secret_names` are the Secrets
    the Site's cameras reference (credentials, CA bundles), in any order, duplicates allowed;
    `camera_urls` the URLs its pods read (for the NetworkPolicy's egress)."""
    if replicas < 0:
        raise ValueError(f"replicas must not be negative, got {replicas}")
    name = pool_name(site.name)
    return [
        _service_account(site, name),
        _role(site, name, secret_names),
        _role_binding(site, name),
        _service(site, name),
        _stateful_set(site, name, spec, replicas, settings),
        _pod_disruption_budget(site, name),
        _network_policy(site, name, spec, settings, camera_urls),
    ]


def selector_labels(pool: str) -> dict[str, str]:
    """The labels that select the pool's pods. Selectors are immutable: keep these two, forever."""
    return {LABEL_NAME: INGEST_APP, LABEL_INSTANCE: pool}


def pool_labels(site: str, pool: str) -> dict[str, str]:
    """The labels of every object of the pool, and of its pods."""
    return {
        **selector_labels(pool),
        LABEL_COMPONENT: INGEST_COMPONENT,
        LABEL_PART_OF: PART_OF,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_SITE: label_value(site),
    }


def owner_reference(site: SiteRef) -> Manifest:
    """Makes the Site the controller of a child, so deleting the Site deletes the child."""
    return {
        "apiVersion": API_VERSION,
        "kind": SITE_KIND,
        "name": site.name,
        "uid": site.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(site: SiteRef, name: str) -> Manifest:
    return {
        "name": name,
        "namespace": site.namespace,
        "labels": pool_labels(site.name, name),
        "ownerReferences": [owner_reference(site)],
    }


def _object(api_version: str, kind: str, site: SiteRef, name: str, **fields: Any) -> Manifest:
    """An object of the pool: its type, the pool's metadata, then its own fields."""
    return {"apiVersion": api_version, "kind": kind, "metadata": _metadata(site, name), **fields}


def _service_account(site: SiteRef, name: str) -> Manifest:
    return _object("v1", "ServiceAccount", site, name)


def _role(site: SiteRef, name: str, secret_names: Sequence[str]) -> Manifest:
    rules: list[Manifest] = [
        {"apiGroups": [GROUP], "resources": [CAMERAS], "verbs": ["get", "list", "watch"]},
        # Its own Site only: camera defaults and event sinks reach running pods without a rollout.
        {
            "apiGroups": [GROUP],
            "resources": [SITES],
            "resourceNames": [site.name],
            "verbs": ["get", "list", "watch"],
        },
    ]
    secrets = sorted(set(secret_names))
    # An empty resourceNames would grant every Secret of the namespace: no cameras with Secrets, no rule.
    if secrets:
        rules.append(
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": secrets, "verbs": ["get"]}
        )
    return _object("rbac.authorization.k8s.io/v1", "Role", site, name, rules=rules)


def _role_binding(site: SiteRef, name: str) -> Manifest:
    return _object(
        "rbac.authorization.k8s.io/v1",
        "RoleBinding",
        site,
        name,
        roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        subjects=[{"kind": "ServiceAccount", "name": name, "namespace": site.namespace}],
    )


def _service(site: SiteRef, name: str) -> Manifest:
    spec = {
        "clusterIP": "None",
        # The operator polls /status of pods that are not ready too: that is where it learns why.
        "publishNotReadyAddresses": True,
        "selector": selector_labels(name),
        "ports": [{"name": PORT_NAME, "port": INGEST_PORT, "targetPort": PORT_NAME, "protocol": "TCP"}],
    }
    return _object("v1", "Service", site, name, spec=spec)


def _stateful_set(
    site: SiteRef, name: str, spec: SiteSpec, replicas: int, settings: PoolSettings
) -> Manifest:
    template = {
        "metadata": {"labels": pool_labels(site.name, name)},
        "spec": _pod_spec(site, name, spec, settings),
    }
    body = {
        "replicas": replicas,
        "serviceName": name,
        "podManagementPolicy": "Parallel",
        "updateStrategy": {"type": "RollingUpdate"},
        "selector": {"matchLabels": selector_labels(name)},
        "template": template,
    }
    return _object("apps/v1", "StatefulSet", site, name, spec=body)


def _pod_disruption_budget(site: SiteRef, name: str) -> Manifest:
    spec = {
        "maxUnavailable": 1,
        "selector": {"matchLabels": selector_labels(name)},
        # A crash-looping shard serves nothing: let a node drain evict it rather than block on it.
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
    }
    return _object("policy/v1", "PodDisruptionBudget", site, name, spec=spec)


def _network_policy(
    site: SiteRef, name: str, spec: SiteSpec, settings: PoolSettings, camera_urls: Sequence[str]
) -> Manifest:
    inference = spec.inference
    triton = (inference.triton_address if inference else None) or settings.triton_address
    sinks = [s.url for s in spec.event_sinks if s.url]
    otlp = [settings.otlp_endpoint] if settings.otlp_endpoint else []
    destinations = [triton, *otlp, *sinks, *camera_urls]
    return ingest_network_policy(_metadata(site, name), selector_labels(name), INGEST_PORT, destinations)


def _pod_spec(site: SiteRef, name: str, spec: SiteSpec, settings: PoolSettings) -> Manifest:
    pod: Manifest = {
        "serviceAccountName": name,
        "automountServiceAccountToken": True,  # the pods watch Cameras and read Secrets
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": NONROOT_ID,
            "runAsGroup": NONROOT_ID,
            "fsGroup": NONROOT_ID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(site, spec, settings)],
        "volumes": [{"name": TMP_VOLUME, "emptyDir": {"sizeLimit": TMP_SIZE_LIMIT}}],
        "affinity": {
            # Soft: spread shards over nodes so one node failure takes few cameras, but never leave a
            # shard unscheduled on a site with fewer nodes than shards.
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "labelSelector": {"matchLabels": selector_labels(name)},
                            "topologyKey": LABEL_HOSTNAME,
                        },
                    }
                ]
            }
        },
    }
    node_selector = _node_selector(spec)
    if node_selector:
        pod["nodeSelector"] = node_selector
    tolerations = _tolerations(spec)
    if tolerations:
        pod["tolerations"] = tolerations
    return pod


def _node_selector(spec: SiteSpec) -> dict[str, str]:
    placement = spec.placement
    if placement is None:
        return {}
    selector = dict(placement.node_selector or {})
    if placement.zone is not None:
        selector[LABEL_ZONE] = placement.zone  # the explicit zone wins over a zone in nodeSelector
    return dict(sorted(selector.items()))


def _tolerations(spec: SiteSpec) -> list[Manifest]:
    if spec.placement is None:
        return []
    return [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in spec.placement.tolerations]


def _container(site: SiteRef, spec: SiteSpec, settings: PoolSettings) -> Manifest:
    return {
        "name": CONTAINER_NAME,
        "image": spec.ingest.image or settings.default_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": list(INGEST_COMMAND),
        "env": _env(site, spec, settings),
        "ports": [{"name": PORT_NAME, "containerPort": INGEST_PORT, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": READYZ_PATH, "port": PORT_NAME}, **READINESS_PROBE},
        "livenessProbe": {"httpGet": {"path": HEALTHZ_PATH, "port": PORT_NAME}, **LIVENESS_PROBE},
        "resources": _resources(spec.ingest.resources),
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": TMP_VOLUME, "mountPath": TMP_PATH}],
    }


def _env(site: SiteRef, spec: SiteSpec, settings: PoolSettings) -> list[Manifest]:
    """Configuration only: the pods read credentials from the API, never from their environment."""
    inference = spec.inference
    # Rendered only when it is not the pods' own default: the pod template of a default install stays
    # as it was (no rollout on an operator upgrade).
    interval = settings.analytics_interval
    extra: dict[str, object] = {}
    if interval and interval != DEFAULT_ANALYTICS_INTERVAL:
        extra["analytics_interval"] = interval
    fallback = inference.fallback if inference else None
    if fallback is not None and fallback.enabled and settings.fallback_model_url:
        extra |= {
            "fallback_model_url": settings.fallback_model_url,
            "fallback_model_sha256": settings.fallback_model_sha256,
        }
    env = pod_env(
        site=site.name,
        triton_address=(inference.triton_address if inference else None) or settings.triton_address,
        model=(inference.model if inference else None) or settings.model,
        port=INGEST_PORT,
        spool_dir=SPOOL_PATH,
        **extra,
    )
    # Camera defaults and event sinks are not in the environment: the pods watch their Site for them,
    # so changing them does not change the pod template (no rollout, no stream interrupted).
    env.append({"name": ENV_OTEL_SERVICE_NAME, "value": settings.service_name})
    if settings.otlp_endpoint:
        env.append({"name": ENV_OTEL_ENDPOINT, "value": settings.otlp_endpoint})
    passed = {
        k: v
        for k, v in settings.otel_env.items()
        if k not in (ENV_OTEL_RESOURCE_ATTRIBUTES, ENV_OTEL_ENDPOINT)
    }
    env += [{"name": k, "value": v} for k, v in sorted(passed.items())]
    # $(VAR) refers to variables defined earlier in the list; the kubelet expands it. The chart's
    # resource attributes come first; the pod's own (site, namespace, pod) follow and win.
    attributes = (
        f"{OTEL_SITE_ATTRIBUTE}={site.name},"
        f"k8s.namespace.name=$({env_name('namespace')}),k8s.pod.name=$({env_name('pod_name')})"
    )
    chart_attributes = settings.otel_env.get(ENV_OTEL_RESOURCE_ATTRIBUTES)
    if chart_attributes:
        attributes = f"{chart_attributes},{attributes}"
    env.append({"name": ENV_OTEL_RESOURCE_ATTRIBUTES, "value": attributes})
    return env


def _resources(resources: Resources | None) -> Manifest:
    """The Site's resources as given (they replace the defaults as a whole: merging a Site's memory
    request with a default limit could yield a limit below the request), or the defaults."""
    if resources is None:
        return {
            section: dict(quantities)  # copies: callers may modify the result
            for section, quantities in DEFAULT_RESOURCES.items()
        }
    out: Manifest = {}
    for section, quantities in (("requests", resources.requests), ("limits", resources.limits)):
        if quantities is not None:
            values = quantities.model_dump(mode="json", exclude_none=True)
            if values:
                out[section] = values
    return out
