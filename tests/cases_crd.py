"""Invalid Sites and Cameras, as data: the API server (CRD schema + CEL) and the pydantic models must both
reject every one. Each case is a valid sample from crds/samples/ with a few fields changed."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

SAMPLES: Final = Path(__file__).resolve().parents[1] / "crds" / "samples"

SITE: Final = "site-bengkulu-kota.yaml"
RTSP_CAMERA: Final = "camera-simpang-lima.yaml"
MJPEG_CAMERA: Final = "camera-pasar-minggu.yaml"
SNAPSHOT_CAMERA: Final = "camera-pantai-panjang.yaml"


# The password in the cases' URLs: no rejection message may repeat it.
LEAKED_PASSWORD: Final = "rahasia"


class _Delete:
    """Marks a field the case removes."""

    def __repr__(self) -> str:
        return "DELETE"


DELETE: Final = _Delete()


@dataclass(frozen=True)
class BadCase:
    id: str
    sample: str
    changes: dict[str, Any] = field(default_factory=dict)
    # The field the API server's message is about, as it prints it.
    path: str = ""
    # Part of the fix the message suggests.
    hint: str = ""

    @property
    def field_name(self) -> str:
        """The last named segment of `path` (what a pydantic error names too)."""
        names: list[str] = re.findall(r"[A-Za-z]+", self.path)
        return names[-1]


CASES: Final[tuple[BadCase, ...]] = (
    BadCase(
        "missing-site-ref",
        RTSP_CAMERA,
        {"spec.siteRef": DELETE},
        path="spec.siteRef",
        hint="set spec.siteRef.name",
    ),
    BadCase(
        "url-with-user-and-password",
        RTSP_CAMERA,
        {"spec.source.url": f"rtsp://admin:{LEAKED_PASSWORD}@10.20.0.5:554/Streaming/Channels/101"},
        path="spec.source.url",
        hint="spec.source.credentialsSecretRef",
    ),
    BadCase(
        "url-with-user",
        RTSP_CAMERA,
        {"spec.source.url": "rtsp://admin@10.20.0.5:554/Streaming/Channels/101"},
        path="spec.source.url",
        hint="spec.source.credentialsSecretRef",
    ),
    BadCase(
        "url-unsupported-scheme",
        RTSP_CAMERA,
        {"spec.source.url": "ftp://10.20.0.5/Streaming/Channels/101"},
        path="spec.source.url",
        hint="must start with rtsp://, rtsps://, http://, https:// or file://",
    ),
    BadCase(
        "url-scheme-not-protocol",
        MJPEG_CAMERA,
        {"spec.source.url": "rtsp://10.20.1.17:554/live"},
        path="spec.source.url",
        hint="set spec.source.protocol to match the URL",
    ),
    BadCase(
        "transport-without-rtsp",
        MJPEG_CAMERA,
        {"spec.source.transport": "udp"},
        path="spec.source.transport",
        hint="remove spec.source.transport",
    ),
    BadCase(
        "tls-without-tls-url",
        RTSP_CAMERA,
        {"spec.source.tls": {"insecureSkipVerify": True}},
        path="spec.source.tls",
        hint="remove spec.source.tls or use a TLS URL",
    ),
    BadCase(
        "fps-zero",
        SNAPSHOT_CAMERA,
        {"spec.sampling.fps": 0},
        path="spec.sampling.fps",
        hint="set spec.sampling.fps in that range",
    ),
    BadCase(
        "fps-negative",
        RTSP_CAMERA,
        {"spec.sampling.fps": -5},
        path="spec.sampling.fps",
        hint="set spec.sampling.fps in that range",
    ),
    BadCase(
        "fps-above-max",
        RTSP_CAMERA,
        {"spec.sampling.fps": 60},
        path="spec.sampling.fps",
        hint="at most 30",
    ),
    BadCase(
        "default-fps-above-max",
        SITE,
        {"spec.cameraDefaults.fps": 45},
        path="spec.cameraDefaults.fps",
        hint="set spec.cameraDefaults.fps in that range",
    ),
    BadCase(
        "min-pods-above-max-pods",
        SITE,
        {"spec.ingest.minPods": 8, "spec.ingest.maxPods": 2},
        path="spec.ingest.minPods",
        hint="lower spec.ingest.minPods or raise spec.ingest.maxPods",
    ),
    BadCase(
        "min-pods-above-default-max",
        SITE,
        {"spec.ingest": {"minPods": 5}},
        path="spec.ingest.minPods",
        hint="lower spec.ingest.minPods or raise spec.ingest.maxPods",
    ),
    BadCase(
        "secret-name-not-dns1123",
        RTSP_CAMERA,
        {"spec.source.credentialsSecretRef.name": "Simpang_Lima"},
        path="spec.source.credentialsSecretRef.name",
        hint="use lower-case letters, digits, '-' and '.'",
    ),
    BadCase(
        "secret-username-key-empty",
        RTSP_CAMERA,
        {"spec.source.credentialsSecretRef.usernameKey": ""},
        path="spec.source.credentialsSecretRef.usernameKey",
        hint="give a non-empty key",
    ),
    BadCase(
        "secret-password-key-bad",
        RTSP_CAMERA,
        {"spec.source.credentialsSecretRef.passwordKey": "pass word"},
        path="spec.source.credentialsSecretRef.passwordKey",
        hint="give a non-empty key",
    ),
    BadCase(
        "webhook-sink-without-url",
        SITE,
        {"spec.eventSinks[0].url": DELETE},
        path="spec.eventSinks[0].url",
        hint="set spec.eventSinks[].url",
    ),
    BadCase(
        "webhook-url-with-password",
        SITE,
        {"spec.eventSinks[0].url": f"https://pantau:{LEAKED_PASSWORD}@events.example/hook"},
        path="spec.eventSinks[0].url",
        hint="remove them from spec.eventSinks[].url",
    ),
    BadCase(
        "duplicate-sink-names",
        SITE,
        {"spec.eventSinks[1].name": "dishub"},
        path="spec.eventSinks",
        hint="rename or remove the duplicate entry in spec.eventSinks",
    ),
    BadCase(
        "toleration-exists-with-value",
        SITE,
        {"spec.placement.tolerations[0].value": "true"},
        path="spec.placement.tolerations[0].value",
        hint="remove value, or set operator to Equal",
    ),
)


def load_sample(name: str) -> dict[str, Any]:
    data = yaml.safe_load((SAMPLES / name).read_text())
    assert isinstance(data, dict)
    return data


def _segments(path: str) -> list[str | int]:
    return [int(index) if index else key for key, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path)]


def build(case: BadCase) -> dict[str, Any]:
    """The case's object: its sample with the changes applied, named after the case (a fresh copy)."""
    obj = copy.deepcopy(load_sample(case.sample))
    obj["metadata"]["name"] = f"bad-{case.id}"
    for path, value in case.changes.items():
        *parents, last = _segments(path)
        target: Any = obj
        for segment in parents:
            target = target[segment]
        if value is DELETE:
            del target[last]
        else:
            target[last] = copy.deepcopy(value)
    return obj
