"""Person recall of the detector on PETS09-S2L1 when samples cross a thin uplink as JPEGs, offline.

Each sampled frame takes the path an ingest pod and Triton's `yolox_jpeg` model give it under an
uplink budget, in process: PyAV decodes the camera frame and its scaler letterboxes it (as the pod's
`_letterboxer`), `pantau.ingest.jpeg.encode` sends the picture at a quality and a scale, `_decode`
(a copy of the backend's `decode_letterboxed`) letterboxes the JPEG again for the model, the in-process
`LocalDetector` (same network and post-processing as the Triton models) detects, and
`pantau.ingest.jpeg.to_frame` maps the boxes back to the camera frame. Persons scoring at least the
pipeline's default `minScore` are kept.

Recall = ground-truth person boxes matched / ground-truth person boxes, over the sampled frames, with a
one-to-one assignment per frame at IoU >= `min_iou` that matches as many boxes as possible (then the
best IoU). Ground-truth boxes marked conf 0 are ignore regions, as `pantau bench analytics` treats
them: they are not counted, and a detection that the best assignment pairs with one (IoU >= 0.5) is
dropped before matching, so it cannot take a counted box either. Quality 80 at full scale and full
rate (`REFERENCE`) is the figure the others are compared with.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import av
import numpy as np
from PIL import Image
from scipy.optimize import linear_sum_assignment  # type: ignore[import-untyped]

from pantau.analytics.tracking import iou_matrix
from pantau.ingest import jpeg
from pantau.models.site import CameraDefaults
from pantau.triton import contract, yolox
from pantau.triton.local import LocalDetector
from pantau_dev.bench import analytics
from pantau_dev.bench.analytics import FPS, IOU_MATCH

MIN_SCORE = CameraDefaults().min_score  # what a camera without its own `minScore` keeps


class Setting(NamedTuple):
    quality: int  # JPEG quality, 1..95
    scale: float  # resolution factor of both sides of the letterboxed picture, 0.125..1.0
    fps: float  # sampled rate; >= the video's 10 fps is every frame


REFERENCE = Setting(80, 1.0, FPS)


@dataclass(frozen=True)
class RecallResult:
    setting: Setting
    frames: int  # sampled frames processed
    gt_boxes: int  # counted ground-truth person boxes on them
    matched: int
    bytes_per_frame: float  # mean JPEG size of the sampled frames
    recall: float = field(init=False)  # matched / gt_boxes (0 when there are none)

    def __post_init__(self) -> None:
        object.__setattr__(self, "recall", self.matched / self.gt_boxes if self.gt_boxes else 0.0)


def match(truth: np.ndarray, found: np.ndarray, min_iou: float = IOU_MATCH) -> list[tuple[int, int]]:
    """One-to-one pairs (truth row, found row), xyxy boxes, each pair at IoU >= `min_iou`: as many pairs
    as possible, then the largest total IoU (MOTChallenge's assignment)."""
    similarity = iou_matrix(truth.reshape(-1, 4), found.reshape(-1, 4))
    valid = similarity >= min_iou
    if not valid.any():
        return []
    # A forbidden pair costs more than every allowed pair together: fewest forbidden pairs first.
    cost = np.where(valid, 1.0 - similarity, float(valid.size + 1))
    rows, cols = linear_sum_assignment(cost)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if valid[r, c]]


def _decode(data: bytes, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Mirrors `decode_letterboxed` in operator/pantau/triton/backends/yolox_jpeg/model.py (which cannot
    be imported outside Triton); tests/test_link_recall.py checks both give the same arrays."""
    image = Image.open(io.BytesIO(data))
    w0, h0 = image.size
    image.draft("RGB", (size, size))
    rgb = image.convert("RGB")
    nh, nw = yolox.resized_shape(h0, w0, size)
    resized = np.asarray(rgb.resize((nw, nh), Image.Resampling.BILINEAR))[:, :, ::-1]
    return yolox.pad(resized, size), (h0, w0)


@dataclass
class _Tally:
    frames: int = 0
    gt_boxes: int = 0
    matched: int = 0
    jpeg_bytes: int = 0


def _letterbox(frame: av.VideoFrame, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """As the pod's `pantau.ingest.pipeline._letterboxer`: FFmpeg's scaler straight to the size that fits
    the model's square, then padding; also the picture's (height, width) in it."""
    nh, nw = yolox.resized_shape(frame.height, frame.width, size)
    resized = frame.reformat(width=nw, height=nh, format="bgr24", interpolation="BILINEAR").to_ndarray()
    return yolox.pad(resized, size), (nh, nw)


def _over_the_link(
    detector: LocalDetector, frame: av.VideoFrame, chosen: Sequence[Setting]
) -> list[tuple[jpeg.Encoded, list[contract.Detection]]]:
    """One camera frame sent at each setting: the JPEG and what came back, in the frame's pixels."""
    size = detector.input_size
    letterboxed, content_hw = _letterbox(frame, size)
    sent = [jpeg.encode(letterboxed, content_hw, s.quality, s.scale) for s in chosen]
    decoded = [_decode(e.jpeg, size) for e in sent]
    found = detector.detect_letterboxed(np.stack([image for image, _ in decoded]), [hw for _, hw in decoded])
    orig_hw = (frame.height, frame.width)
    return [(e, jpeg.to_frame(f, e.hw, orig_hw)) for e, f in zip(sent, found, strict=True)]


def _matched(
    found: list[contract.Detection],
    gt: list[analytics.Box],
    ignore: list[tuple[float, float, float, float]],
    min_iou: float,
    min_score: float,
) -> int:
    """Counted ground-truth boxes of a frame that a kept person detection matches."""
    people = [
        analytics.Box(j, d.box)
        for j, d in enumerate(found)
        if d.class_id == analytics.PERSON and d.score >= min_score
    ]
    kept = analytics._without_ignored(people, gt, ignore)
    truth = np.array([b.xyxy for b in gt], dtype=np.float64)
    return len(match(truth, np.array([b.xyxy for b in kept], dtype=np.float64), min_iou))


def recall_table(
    video: Path,
    truth: Path,
    model: Path,
    settings: Sequence[tuple[int, float, float]],
    *,
    max_frames: int | None = None,
    min_iou: float = IOU_MATCH,
    min_score: float = MIN_SCORE,
    threads: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> list[RecallResult]:
    """Recall of each (quality, scale, fps) setting, in their order, from one decode of `video` (its first
    `max_frames` frames) and one detector session (`threads`: onnxruntime's intra-op threads, 0 = its
    default). Frames stream through: memory does not grow with the clip. `progress(done, total)` is
    called after each decoded frame."""
    wanted = [Setting(int(q), float(s), float(f)) for q, s, f in settings]
    for setting in wanted:
        if not setting.fps > 0:
            raise ValueError(f"fps must be positive, got {setting.fps}")
    ground = analytics.GroundTruth.load(truth)
    detector = LocalDetector(model, threads=threads)
    tallies = [_Tally() for _ in wanted]
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate
        if rate is None or abs(float(rate) - FPS) > 1e-6:
            # sampled_frames() schedules samples on the clock of a 10 fps video.
            raise ValueError(f"{video} runs at {rate} fps; the sampling assumes {FPS:g} fps")
        # The container's frame count; where it has none, the ground truth's last frame.
        total = stream.frames or max(ground.boxes.keys() | ground.ignore.keys())
        if max_frames is not None:
            total = min(total, max_frames)
        schedules = [set(analytics.sampled_frames(total, s.fps)) for s in wanted]
        # Every frame is decoded (the codec needs them); only the sampled ones are sent.
        for number, frame in enumerate(container.decode(stream), start=1):
            if number > total:
                break
            due = [i for i, schedule in enumerate(schedules) if number in schedule]
            if due:
                gt, ignore = ground.boxes.get(number, []), ground.ignore.get(number, [])
                sent = _over_the_link(detector, frame, [wanted[i] for i in due])
                for i, (encoded, found) in zip(due, sent, strict=True):
                    tally = tallies[i]
                    tally.frames += 1
                    tally.gt_boxes += len(gt)
                    tally.matched += _matched(found, gt, ignore, min_iou, min_score)
                    tally.jpeg_bytes += len(encoded.jpeg)
            if progress is not None:
                progress(number, total)
    return [
        RecallResult(
            setting=s,
            frames=t.frames,
            gt_boxes=t.gt_boxes,
            matched=t.matched,
            bytes_per_frame=t.jpeg_bytes / t.frames if t.frames else 0.0,
        )
        for s, t in zip(wanted, tallies, strict=True)
    ]


def recall_at(
    video: Path,
    truth: Path,
    model: Path,
    quality: int,
    scale: float,
    fps: float,
    *,
    max_frames: int | None = None,
    min_iou: float = IOU_MATCH,
    min_score: float = MIN_SCORE,
    threads: int = 0,
) -> RecallResult:
    """Recall of one setting; `recall_table` evaluates several in one pass."""
    return recall_table(
        video,
        truth,
        model,
        [(quality, scale, fps)],
        max_frames=max_frames,
        min_iou=min_iou,
        min_score=min_score,
        threads=threads,
    )[0]
