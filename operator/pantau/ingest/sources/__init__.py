"""Camera sources: one session with one camera, sampled on the wall clock.

`open_source(cfg, convert)` connects (raising `SourceError` with a classified reason when it cannot)
and returns a `Source`, whose blocking `read()` returns the next `Sample` when it is due.

- RTSP/RTSPS and local files go through PyAV (`pyav`). A reader thread drains the stream continuously
  (a live stream that is not read backs up at the camera, then breaks) and decodes it; `read()` takes
  the newest decoded frame when a sample is due and only then runs `convert` on it. When the sample
  interval is longer than the keyframe interval, the decoder skips every non-key frame.
- HTTP MJPEG goes through httpx (`http`): a reader thread splits the multipart body and keeps the
  newest JPEG; `read()` decodes only the JPEGs it samples. HTTP snapshots are fetched by `read()`
  itself, one GET per sample.
- Samples are scheduled on `time.monotonic()`, never on stream timestamps (`base`), so cameras whose
  clocks jump or restart are sampled at the same rate.

Credentials live only in `SourceConfig` (hidden from its repr) and, for PyAV, in a URL built in
memory for `av.open`. Every message we produce goes through `scrub`, and exceptions from PyAV and
httpx (whose text can hold that URL) are never chained to ours.
"""

from __future__ import annotations

from pantau.ingest.sources.base import (
    URL_SCHEMES,
    Convert,
    Image,
    Protocol,
    Reason,
    Sample,
    Source,
    SourceConfig,
    SourceError,
    SourceStats,
    Transport,
    classify,
    describe,
)
from pantau.ingest.sources.http import (
    MAX_MJPEG_PART,
    SOI,
    MultipartParser,
    _MjpegSource,
    _SnapshotSource,
    multipart_boundary,
)
from pantau.ingest.sources.pyav import (
    ANALYZE_MICROSECONDS,
    FFMPEG_LOGGER,
    KEYFRAMES_ONLY_ABOVE,
    KEYFRAMES_ONLY_BELOW,
    MAX_GOP_SECONDS,
    _AvSource,
    gop_seconds,
)

__all__ = [
    "ANALYZE_MICROSECONDS",
    "FFMPEG_LOGGER",
    "KEYFRAMES_ONLY_ABOVE",
    "KEYFRAMES_ONLY_BELOW",
    "MAX_GOP_SECONDS",
    "MAX_MJPEG_PART",
    "SOI",
    "URL_SCHEMES",
    "Convert",
    "Image",
    "MultipartParser",
    "Protocol",
    "Reason",
    "Sample",
    "Source",
    "SourceConfig",
    "SourceError",
    "SourceStats",
    "Transport",
    "classify",
    "describe",
    "gop_seconds",
    "multipart_boundary",
    "open_source",
]


def open_source(cfg: SourceConfig, convert: Convert) -> Source:
    """Connect to the camera (or open the file) and return the session; SourceError if it fails.

    `convert` runs only on sampled frames, in the thread that calls `read()`.
    """
    if cfg.protocol == "http-mjpeg":
        return _MjpegSource(cfg, convert)
    if cfg.protocol == "http-snapshot":
        return _SnapshotSource(cfg, convert)
    return _AvSource(cfg, convert)
