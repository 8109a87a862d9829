"""Numbers and patterns that the CRDs (crds/*.yaml: schema bounds and CEL rules) also state. The models
take them from here; tests/test_models.py checks that every bound and rule of the CRDs matches."""

from __future__ import annotations

from typing import Final

# CCTV encoders run at 25 (PAL) or 30 frames per second: sampling faster only repeats frames, and the
# detector's cost grows linearly with fps. Counting and line crossing need 5-10.
MAX_FPS: Final = 30.0
MAX_PODS: Final = 64  # ingest pods of one Site
MAX_CAMERAS_PER_POD: Final = 64
MAX_FPS_PER_POD: Final = 1000
MAX_SESSIONS: Final = 16  # connections one camera accepts at once
MIN_RESOLUTION: Final = 16
MAX_RESOLUTION: Final = 8192
MAX_CLASSES: Final = 80  # the detector's label set (COCO)
MAX_ZONES: Final = 16
MAX_LINES: Final = 16
MAX_ZONE_POINTS: Final = 32
MAX_LOITER_SECONDS: Final = 86400
# Smallest zone area (a share of the picture) and line length (normalised) that analytics can use: a
# sliver or a dot would never hold a box's reference point, or flip sides on every pixel of jitter.
MIN_ZONE_AREA: Final = 0.0001
MIN_LINE_LENGTH: Final = 0.01
MAX_EVENT_SINKS: Final = 8
MAX_URL: Final = 2048
MAX_ALLOWED_NETWORKS: Final = 16

# A Site's uplink (spec.uplink), in bits per second like the kubernetes.io/egress-bandwidth annotation.
# From one ISDN channel to a data-centre link; quantity strings, as the CRD's CEL rules compare them.
MIN_UPLINK_BANDWIDTH: Final = "64k"
MAX_UPLINK_BANDWIDTH: Final = "10G"
MIN_UPLINK_LATENCY_MS: Final = 100
MAX_UPLINK_LATENCY_MS: Final = 600_000  # 10 minutes
MIN_HEADROOM_PERCENT: Final = 50
# JPEG quality (libjpeg's 1..95 scale). 80 is the quality frames are sent at before any cut
# (pantau.ingest.uplink.REF_QUALITY): a higher floor would never be reached.
MIN_QUALITY_FLOOR: Final = 10
MAX_QUALITY_FLOOR: Final = 80
MIN_SCALE_FLOOR: Final = 0.125  # the smallest resolution factor the uplink's size model was measured at
MIN_UPLINK_FPS: Final = 0.01  # one frame every 100 s
# The local detector (spec.inference.fallback) runs on the ingest pod's CPU, beside the cameras' decoding.
MIN_FALLBACK_FPS: Final = 0.01
MAX_FALLBACK_FPS: Final = 5.0
MAX_FALLBACK_THREADS: Final = 16
MAX_PRIORITY: Final = 100  # a Camera's spec.priority, 0..MAX_PRIORITY

DNS_LABEL_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DATA_KEY_PATTERN: Final = r"^[-._a-zA-Z0-9]+$"
CLASS_NAME_PATTERN: Final = r"^[a-z][a-z ]*[a-z]$"
# A user (and maybe a password) before the host: scheme://user[:password]@host...
CREDENTIALS_IN_URL_PATTERN: Final = r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#@]*@"
SCHEMES: Final = ("rtsp", "rtsps", "http", "https", "file")
# The port a camera or sink URL connects to when it names none.
DEFAULT_PORTS: Final = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}
WEBHOOK_URL_PATTERN: Final = r"^https?://[^/?#]+([/?#].*)?$"
HEADER_NAME_PATTERN: Final = r"^[A-Za-z0-9][-A-Za-z0-9]*$"


# COCO 2017 class names in the detector's output order (80 classes).
MODEL_CLASSES: Final[tuple[str, ...]] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
