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
MAX_EVENT_SINKS: Final = 8
MAX_URL: Final = 2048

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
