"""Typed Site and Camera objects (pantau.io/v1alpha1), mirroring the CRDs in crds/.

Handlers parse an object's spec and status into these models; builders and reconcilers take them."""

from typing import Final

from pantau.models.camera import (
    CameraSpec,
    CameraStatus,
    CaSecretRef,
    CredentialsSecretRef,
    Detection,
    Sampling,
    SiteRef,
    Source,
    SourceTLS,
)
from pantau.models.conditions import ApiModel, Condition, find_condition, set_condition
from pantau.models.limits import MAX_FPS
from pantau.models.site import (
    CameraCounts,
    CameraDefaults,
    EventSink,
    Fallback,
    Inference,
    IngestPool,
    Placement,
    PodCapacity,
    PodCounts,
    ResourceList,
    Resources,
    SiteSpec,
    SiteStatus,
    Toleration,
    Uplink,
)

GROUP: Final = "pantau.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
SITES: Final = "sites"
CAMERAS: Final = "cameras"

__all__ = [
    "API_VERSION",
    "CAMERAS",
    "GROUP",
    "MAX_FPS",
    "SITES",
    "VERSION",
    "ApiModel",
    "CaSecretRef",
    "CameraCounts",
    "CameraDefaults",
    "CameraSpec",
    "CameraStatus",
    "Condition",
    "CredentialsSecretRef",
    "Detection",
    "EventSink",
    "Fallback",
    "Inference",
    "IngestPool",
    "Placement",
    "PodCapacity",
    "PodCounts",
    "ResourceList",
    "Resources",
    "Sampling",
    "SiteRef",
    "SiteSpec",
    "SiteStatus",
    "Source",
    "SourceTLS",
    "Toleration",
    "Uplink",
    "find_condition",
    "set_condition",
]
