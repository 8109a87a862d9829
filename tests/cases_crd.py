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
REMOTE_SITE: Final = "site-seluma.yaml"  # with spec.uplink and spec.inference.fallback
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


ZONE = {"name": "kiosk", "points": [[0.1, 0.1], [0.4, 0.1], [0.4, 0.4]]}
LINE = {"name": "gate", "start": [0.1, 0.5], "end": [0.9, 0.5]}

CASES: Final[tuple[BadCase, ...]] = (
    BadCase(
        "zone-two-points",
        MJPEG_CAMERA,
        {"spec.zones[0].points": [[0.1, 0.1], [0.9, 0.9]]},
        path="spec.zones[0].points",
        hint="needs at least 3 points",
    ),
    BadCase(
        "zone-point-outside-frame",
        MJPEG_CAMERA,
        {"spec.zones[0].points[1]": [1.5, 0.4]},
        path="spec.zones[0].points[1]",
        hint="divide pixel positions by the frame width and height",
    ),
    BadCase(
        "zone-point-negative",
        MJPEG_CAMERA,
        {"spec.zones[0].points[2]": [0.7, -0.1]},
        path="spec.zones[0].points[2]",
        hint="must be between 0 and 1",
    ),
    BadCase(
        "line-point-outside-frame",
        RTSP_CAMERA,
        {"spec.lines[0].end": [640, 480]},
        path="spec.lines[0].end",
        hint="divide pixel positions by the frame width and height",
    ),
    BadCase(
        "line-zero-length",
        RTSP_CAMERA,
        {"spec.lines[0].end": [0.05, 0.55]},
        path="spec.lines[0].end",
        hint="move spec.lines[].end away from start",
    ),
    BadCase(
        "duplicate-zone-names",
        MJPEG_CAMERA,
        {"spec.zones": [ZONE, {**ZONE, "points": [[0.5, 0.5], [0.9, 0.5], [0.9, 0.9]]}]},
        path="spec.zones",
        hint="rename or remove the duplicate entry in spec.zones",
    ),
    BadCase(
        "duplicate-line-names",
        RTSP_CAMERA,
        {"spec.lines": [LINE, {**LINE, "start": [0.5, 0.1]}]},
        path="spec.lines",
        hint="rename or remove the duplicate entry in spec.lines",
    ),
    BadCase(
        "zone-loiter-below-a-second",
        MJPEG_CAMERA,
        {"spec.zones[0].loiterSeconds": 0.5},
        path="spec.zones[0].loiterSeconds",
        hint="greater than or equal to 1",
    ),
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
    BadCase(
        "url-query-password",
        SNAPSHOT_CAMERA,
        {"spec.source.url": f"https://10.20.2.9/cgi-bin/snapshot.cgi?user=admin&pwd={LEAKED_PASSWORD}"},
        path="spec.source.url",
        hint="put the login in a Secret named by spec.source.credentialsSecretRef",
    ),
    BadCase(
        "webhook-url-query-token",
        SITE,
        {"spec.eventSinks[0].url": f"https://events.example/hook?Token={LEAKED_PASSWORD}"},
        path="spec.eventSinks[0].url",
        hint="spec.eventSinks[].headerSecretRef",
    ),
    BadCase(
        "header-secret-on-stdout-sink",
        SITE,
        {"spec.eventSinks[1].headerSecretRef": {"name": "dishub-token"}},
        path="spec.eventSinks[1].headerSecretRef",
        hint="remove spec.eventSinks[].headerSecretRef",
    ),
    BadCase(
        "cpu-request-negative",
        SITE,
        {"spec.ingest.resources.requests.cpu": "-500m"},
        path="spec.ingest.resources.requests.cpu",
        hint="must not be negative",
    ),
    BadCase(
        "memory-request-above-limit",
        SITE,
        {"spec.ingest.resources.requests.memory": "2Gi"},
        path="spec.ingest.resources.requests.memory",
        hint="lower spec.ingest.resources.requests.memory or raise spec.ingest.resources.limits.memory",
    ),
    BadCase(
        "allowed-network-not-cidr",
        SITE,
        {"spec.allowedCameraNetworks": ["127.0.0.1"]},
        path="spec.allowedCameraNetworks[0]",
        hint="e.g. 127.0.0.0/8",
    ),
    BadCase(
        "allowed-network-host-bits",
        SITE,
        {"spec.allowedCameraNetworks": ["127.0.0.1/8"]},
        path="spec.allowedCameraNetworks[0]",
        hint="no host bits set",
    ),
    BadCase(
        "uplink-without-bandwidth",
        SITE,
        {"spec.uplink": {"maxLatencyMilliseconds": 5000}},
        path="spec.uplink.bandwidth",
        hint="set it to the link's bits per second",
    ),
    BadCase(
        "uplink-bandwidth-not-a-quantity",
        REMOTE_SITE,
        {"spec.uplink.bandwidth": "2 Mbit/s"},
        path="spec.uplink.bandwidth",
        hint="set spec.uplink.bandwidth to e.g. 512k, 2M or 10M",
    ),
    BadCase(
        "uplink-bandwidth-milli",
        REMOTE_SITE,
        {"spec.uplink.bandwidth": "2m"},
        path="spec.uplink.bandwidth",
        hint="at least 64k and at most 10G bits per second",
    ),
    BadCase(
        "uplink-bandwidth-below-min",
        REMOTE_SITE,
        {"spec.uplink.bandwidth": "32k"},
        path="spec.uplink.bandwidth",
        hint="set spec.uplink.bandwidth in that range",
    ),
    BadCase(
        "uplink-bandwidth-above-max",
        REMOTE_SITE,
        {"spec.uplink.bandwidth": "20G"},
        path="spec.uplink.bandwidth",
        hint="at least 64k and at most 10G bits per second",
    ),
    BadCase(
        "uplink-bandwidth-negative",
        REMOTE_SITE,
        {"spec.uplink.bandwidth": "-2M"},
        path="spec.uplink.bandwidth",
        hint="at least 64k and at most 10G bits per second",
    ),
    BadCase(
        "uplink-latency-below-min",
        REMOTE_SITE,
        {"spec.uplink.maxLatencyMilliseconds": 50},
        path="spec.uplink.maxLatencyMilliseconds",
        hint="greater than or equal to 100",
    ),
    BadCase(
        "uplink-headroom-below-min",
        REMOTE_SITE,
        {"spec.uplink.headroomPercent": 40},
        path="spec.uplink.headroomPercent",
        hint="greater than or equal to 50",
    ),
    BadCase(
        "uplink-headroom-above-100",
        REMOTE_SITE,
        {"spec.uplink.headroomPercent": 120},
        path="spec.uplink.headroomPercent",
        hint="less than or equal to 100",
    ),
    BadCase(
        "uplink-quality-floor-above-max",
        REMOTE_SITE,
        {"spec.uplink.qualityFloor": 90},
        path="spec.uplink.qualityFloor",
        hint="less than or equal to 80",
    ),
    BadCase(
        "uplink-quality-floor-below-min",
        REMOTE_SITE,
        {"spec.uplink.qualityFloor": 5},
        path="spec.uplink.qualityFloor",
        hint="greater than or equal to 10",
    ),
    BadCase(
        "uplink-scale-floor-below-min",
        REMOTE_SITE,
        {"spec.uplink.scaleFloor": 0.1},
        path="spec.uplink.scaleFloor",
        hint="set spec.uplink.scaleFloor in that range",
    ),
    BadCase(
        "uplink-scale-floor-above-1",
        REMOTE_SITE,
        {"spec.uplink.scaleFloor": 1.5},
        path="spec.uplink.scaleFloor",
        hint="at least 0.125 and at most 1",
    ),
    BadCase(
        "uplink-min-fps-zero",
        REMOTE_SITE,
        {"spec.uplink.minFps": 0},
        path="spec.uplink.minFps",
        hint="set spec.uplink.minFps in that range",
    ),
    BadCase(
        "uplink-min-fps-above-max",
        REMOTE_SITE,
        {"spec.uplink.minFps": 60},
        path="spec.uplink.minFps",
        hint="at least 0.01 and at most 30",
    ),
    BadCase(
        "fallback-fps-above-max",
        REMOTE_SITE,
        {"spec.inference.fallback.fps": 10},
        path="spec.inference.fallback.fps",
        hint="at least 0.01 and at most 5",
    ),
    BadCase(
        "fallback-fps-zero",
        REMOTE_SITE,
        {"spec.inference.fallback.fps": 0},
        path="spec.inference.fallback.fps",
        hint="set spec.inference.fallback.fps in that range",
    ),
    BadCase(
        "fallback-threads-zero",
        REMOTE_SITE,
        {"spec.inference.fallback.threads": 0},
        path="spec.inference.fallback.threads",
        hint="greater than or equal to 1",
    ),
    BadCase(
        "fallback-threads-above-max",
        REMOTE_SITE,
        {"spec.inference.fallback.threads": 32},
        path="spec.inference.fallback.threads",
        hint="less than or equal to 16",
    ),
    BadCase(
        "camera-priority-above-max",
        RTSP_CAMERA,
        {"spec.priority": 101},
        path="spec.priority",
        hint="less than or equal to 100",
    ),
    BadCase(
        "camera-priority-negative",
        MJPEG_CAMERA,
        {"spec.priority": -1},
        path="spec.priority",
        hint="greater than or equal to 0",
    ),
)

# Refused by the models, so by the operator's webhook that parses with them: geometry CEL cannot check.
MODEL_ONLY_CASES: Final[tuple[BadCase, ...]] = (
    BadCase(
        "zone-edges-cross",
        MJPEG_CAMERA,
        {"spec.zones[0].points": [[0.1, 0.1], [0.9, 0.9], [0.9, 0.1], [0.1, 0.9]]},
        path="spec.zones[0]",
        hint="list the points in order around the area",
    ),
    BadCase(
        "zone-sliver",
        MJPEG_CAMERA,
        {"spec.zones[0].points": [[0.1, 0.1], [0.9, 0.1], [0.5, 0.1001]]},
        path="spec.zones[0]",
        hint="spread its points",
    ),
    BadCase(
        "line-too-short",
        RTSP_CAMERA,
        {"spec.lines[0].end": [0.052, 0.552]},
        path="spec.lines[0]",
        hint="objects would flip sides on jitter",
    ),
)

# Refused by the operator's validating webhook (pantau.reconcile.admission): what the CRDs' rules
# cannot decide. The Cameras' Site is the SITE sample, which allows no extra network; the operator
# allows file:// sources under ALLOWED_FILE_DIR only.
ALLOWED_FILE_DIR: Final = "/footage"
ADMISSION_CASES: Final[tuple[BadCase, ...]] = (
    BadCase(
        "camera-loopback",
        RTSP_CAMERA,
        {"spec.source.url": "rtsp://127.0.0.1:8554/live"},
        path="spec.source.url",
        hint="spec.allowedCameraNetworks",
    ),
    BadCase(
        "camera-localhost",
        RTSP_CAMERA,
        {"spec.source.url": "rtsp://localhost/live"},
        path="spec.source.url",
        hint="is loopback",
    ),
    BadCase(
        "camera-loopback-decimal",
        RTSP_CAMERA,
        {"spec.source.url": "rtsp://2130706433/live"},
        path="spec.source.url",
        hint="is loopback",
    ),
    BadCase(
        "camera-loopback-ipv6",
        RTSP_CAMERA,
        {"spec.source.url": "rtsp://[::1]:554/live"},
        path="spec.source.url",
        hint="is loopback",
    ),
    BadCase(
        "camera-loopback-ipv4-mapped",
        RTSP_CAMERA,
        {"spec.source.url": "rtsp://[::ffff:127.0.0.1]/live"},
        path="spec.source.url",
        hint="is loopback",
    ),
    BadCase(
        "camera-metadata-address",
        SNAPSHOT_CAMERA,
        {"spec.source.url": "http://169.254.169.254/latest/meta-data/", "spec.source.tls": DELETE},
        path="spec.source.url",
        hint="link-local",
    ),
    BadCase(
        "camera-metadata-name",
        SNAPSHOT_CAMERA,
        {"spec.source.url": "http://metadata.google.internal/computeMetadata/v1/", "spec.source.tls": DELETE},
        path="spec.source.url",
        hint="link-local",
    ),
    BadCase(
        "camera-file-outside-allowed",
        RTSP_CAMERA,
        {"spec.source": {"url": "file:///etc/shadow", "protocol": "file"}},
        path="spec.source.url",
        hint="outside the directories file:// sources may read",
    ),
    BadCase(
        "camera-file-escapes-allowed",
        RTSP_CAMERA,
        {"spec.source": {"url": f"file://{ALLOWED_FILE_DIR}/../etc/passwd", "protocol": "file"}},
        path="spec.source.url",
        hint="outside the directories file:// sources may read",
    ),
    BadCase(
        "camera-unknown-class",
        RTSP_CAMERA,
        {"spec.detection.classes": ["person", "unicorn"]},
        path="spec.detection.classes",
        hint="does not know 'unicorn'",
    ),
    BadCase(
        "zone-unknown-class",
        MJPEG_CAMERA,
        {"spec.zones[0].classes": ["person", "becak"]},
        path="spec.zones[0].classes",
        hint="does not know 'becak'",
    ),
    BadCase(
        "line-unknown-class",
        RTSP_CAMERA,
        {"spec.lines[0].classes": ["bajaj"]},
        path="spec.lines[0].classes",
        hint="does not know 'bajaj'",
    ),
    BadCase(
        "site-unknown-default-class",
        SITE,
        {"spec.cameraDefaults.classes": ["person", "sepeda"]},
        path="spec.cameraDefaults.classes",
        hint="does not know 'sepeda'",
    ),
    BadCase(
        "site-sink-metadata-address",
        SITE,
        {"spec.eventSinks[0].url": "http://169.254.169.254/hook"},
        path="spec.eventSinks[0].url",
        hint="link-local",
    ),
)

# Refused by the API server itself, with no model counterpart: names and unknown fields.
SERVER_ONLY_CASES: Final[tuple[BadCase, ...]] = (
    BadCase(
        "camera-name-too-long",
        RTSP_CAMERA,
        {"metadata.name": "kamera-" + "x" * 60},
        path="metadata.name",
        hint="may have at most 63 characters",
    ),
    BadCase(
        "unknown-field",
        RTSP_CAMERA,
        {"spec.sampling.fsp": 5},
        path="spec.sampling.fsp",
        hint="unknown field",
    ),
    BadCase(
        "zone-unknown-field",
        MJPEG_CAMERA,
        {"spec.zones[0].polygon": [[0.1, 0.1], [0.5, 0.1], [0.5, 0.5]]},
        path="spec.zones[0].polygon",
        hint="unknown field",
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
    obj["metadata"]["name"] = f"bad-{case.id}"[:63]
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
