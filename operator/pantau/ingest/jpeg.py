"""Frames on an uplink: a letterboxed sample -> JPEG bytes at a quality and a scale, and the detections
that come back -> the camera's own pixels.

Only the picture is sent, not the letterbox's padding: the JPEG model (`<model>_jpeg`) letterboxes what it
decodes again, and answers in the JPEG's pixels, which `to_frame` maps back. Pillow (libjpeg-turbo) encodes,
so `quality` is libjpeg's 1..95 scale on which the planner's size tables (pantau.ingest.uplink) were
measured.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pantau.ingest import uplink
from pantau.triton import contract


@dataclass(frozen=True)
class Encoded:
    jpeg: bytes
    hw: tuple[int, int]  # the JPEG's (height, width)


def encode(letterboxed: np.ndarray, content_hw: tuple[int, int], quality: int, scale: float) -> Encoded:
    """The picture of a letterboxed BGR sample (its top-left `content_hw`), scaled by `scale` on both
    sides and encoded at `quality` (4:2:0, as the size tables were measured)."""
    if not 1 <= quality <= uplink.MAX_QUALITY:
        raise ValueError(f"JPEG quality must be within 1..{uplink.MAX_QUALITY}, got {quality}")
    if not uplink.MIN_SCALE <= scale <= 1.0:
        raise ValueError(f"scale must be within {uplink.MIN_SCALE}..1.0, got {scale}")
    h, w = content_hw
    picture = Image.fromarray(np.ascontiguousarray(letterboxed[:h, :w, ::-1]))  # BGR -> RGB
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        picture = picture.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=quality, subsampling="4:2:0")
    return Encoded(out.getvalue(), (picture.height, picture.width))


def to_frame(
    found: list[contract.Detection], sent_hw: tuple[int, int], orig_hw: tuple[int, int]
) -> list[contract.Detection]:
    """Detections in a sent JPEG's pixels -> in the camera frame's pixels."""
    sy, sx = orig_hw[0] / sent_hw[0], orig_hw[1] / sent_hw[1]
    return [
        contract.Detection(d.class_id, d.score, (d.box[0] * sx, d.box[1] * sy, d.box[2] * sx, d.box[3] * sy))
        for d in found
    ]
