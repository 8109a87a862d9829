"""YOLOX pre- and post-processing as plain numpy functions.

This file is shared verbatim by the ingest side (imported as `pantau.triton.yolox`) and by the
Triton Python backend (the model builder copies it beside `model.py`), so it imports nothing
but numpy and the standard library and must keep working with numpy 1.x (the backend's) as well as 2.x.

Facts of the YOLOX ONNX exports this follows (see the model's README in the shared data):
BGR input, letterboxed at the top-left on a canvas of 114, pixel values 0..255 (no
normalisation); output rows are anchor points of strides 8, 16, 32, each row-major over
(y, x), columns tx, ty, tw, th, objectness, 80 class scores (already sigmoid-ed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol

import numpy as np

STRIDES = (8, 16, 32)
PAD_VALUE = 114


def letterbox_scale(height: int, width: int, size: int) -> float:
    """The resize ratio that fits a (height, width) image into a size x size square."""
    return min(size / height, size / width)


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) of the image once scaled to fit the square, before padding."""
    r = letterbox_scale(height, width, size)
    return int(height * r), int(width * r)


def pad(resized: np.ndarray, size: int) -> np.ndarray:
    """Put an already-resized HxWx3 uint8 image on the top-left of a size x size canvas of 114."""
    h, w = resized.shape[:2]
    canvas = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
    canvas[:h, :w] = resized
    return canvas


def letterbox(image: np.ndarray, size: int) -> np.ndarray:
    """Resize an HxWx3 uint8 image (keeping its aspect ratio) onto the top-left of a square canvas.

    The resize is bilinear, in numpy. Video sources can instead let the decoder's scaler produce
    `resized_shape(...)` directly and call `pad`: same geometry, less work.
    """
    nh, nw = resized_shape(image.shape[0], image.shape[1], size)
    return pad(_resize_bilinear(image, nh, nw), size)


def _resize_bilinear(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    h, w = image.shape[:2]
    if (h, w) == (out_h, out_w):
        return image
    # Pixel centres mapped like OpenCV's INTER_LINEAR (half-pixel offsets).
    ys = np.clip((np.arange(out_h) + 0.5) * (h / out_h) - 0.5, 0, h - 1)
    xs = np.clip((np.arange(out_w) + 0.5) * (w / out_w) - 0.5, 0, w - 1)
    y0 = np.floor(ys).astype(np.int32)
    x0 = np.floor(xs).astype(np.int32)
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    wy = (ys - y0).astype(np.float32)[:, None, None]
    wx = (xs - x0).astype(np.float32)[None, :, None]
    # Separable: blend rows first (out_h x w), then columns.
    rows = image[y0].astype(np.float32) * (1 - wy) + image[y1].astype(np.float32) * wy
    out = rows[:, x0] * (1 - wx) + rows[:, x1] * wx
    resized: np.ndarray = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    return resized


def grids(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Anchor-point centres (cells, 2) and strides (cells, 1) of a model with input `size`."""
    cells, strides = [], []
    for s in STRIDES:
        n = size // s
        ys, xs = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        cells.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
        strides.append(np.full((n * n, 1), s))
    return np.concatenate(cells).astype(np.float32), np.concatenate(strides).astype(np.float32)


def decode(raw: np.ndarray, size: int) -> np.ndarray:
    """Raw output (rows, 85) of one image -> (rows, 85) with xyxy boxes in letterboxed pixels."""
    centres, strides = grids(size)
    if raw.shape[0] != centres.shape[0]:
        raise ValueError(
            f"model output has {raw.shape[0]} rows; input size {size} implies {centres.shape[0]}"
        )
    out = raw.astype(np.float32, copy=True)
    xy = (out[:, :2] + centres) * strides
    half_wh = np.exp(out[:, 2:4]) * strides / 2
    out[:, 0:2] = xy - half_wh
    out[:, 2:4] = xy + half_wh
    return out


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best score first."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        xx1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        iou = inter / (areas[i] + areas[rest] - inter + 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def postprocess(
    raw: np.ndarray,
    size: int,
    orig_hw: tuple[int, int],
    score_threshold: float,
    iou_threshold: float,
    max_detections: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's raw output -> (boxes xyxy in original pixels, scores, class ids), best first.

    Class-aware NMS: boxes of different classes never suppress each other (done by offsetting
    each class's boxes far apart, then one NMS pass).
    """
    det = decode(raw, size)
    class_scores = det[:, 5:] * det[:, 4:5]
    classes = class_scores.argmax(axis=1)
    scores = class_scores[np.arange(len(classes)), classes]
    mask = scores > score_threshold
    boxes, scores, classes = det[mask, :4], scores[mask], classes[mask]
    if scores.size:
        offset = classes[:, None].astype(np.float32) * (4.0 * size)
        keep = nms(boxes + offset, scores, iou_threshold)[:max_detections]
        boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
    h, w = orig_hw
    r = letterbox_scale(h, w, size)
    boxes = boxes / r
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, w)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, h)
    return boxes.astype(np.float32), scores.astype(np.float32), classes.astype(np.int32)


def pad_detections(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, max_detections: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fixed-size outputs for a batched response: count, then boxes/scores/classes padded with
    zeros (class -1) up to `max_detections`."""
    n = min(len(scores), max_detections)
    out_boxes = np.zeros((max_detections, 4), dtype=np.float32)
    out_scores = np.zeros((max_detections,), dtype=np.float32)
    out_classes = np.full((max_detections,), -1, dtype=np.int32)
    out_boxes[:n], out_scores[:n], out_classes[:n] = boxes[:n], scores[:n], classes[:n]
    return np.array([n], dtype=np.int32), out_boxes, out_scores, out_classes


# The outputs of the detector models, in the order batch_outputs returns them.
OUTPUT_NAMES = ("NUM_DETECTIONS", "BOXES", "SCORES", "CLASSES")


def parameters(model_config: str) -> dict[str, str]:
    """The `parameters` of a model's JSON configuration, as name -> string value."""
    return {k: v["string_value"] for k, v in json.loads(model_config)["parameters"].items()}


class SessionOptions(Protocol):
    """What `tune_session` sets of an `onnxruntime.SessionOptions` (not imported here: see above)."""

    intra_op_num_threads: int
    inter_op_num_threads: int

    def add_session_config_entry(self, key: str, value: str) -> None: ...


def tune_session(options: SessionOptions, intra_op_threads: int) -> None:
    """onnxruntime settings for a detector that shares its CPU cores (with other instances, the
    decoders, Triton itself): `intra_op_threads` per session (0 = one per core), no inter-op
    parallelism, and pool threads that sleep when idle instead of spin-waiting, which otherwise burns
    a core per thread between operators and between requests."""
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")


@dataclass(frozen=True)
class PostParams:
    """The post-processing parameters a Triton model's config carries (see contract.py)."""

    size: int
    score_threshold: float
    iou_threshold: float
    max_detections: int

    @classmethod
    def from_model_config(cls, model_config: str) -> PostParams:
        """From the JSON model configuration Triton hands a Python-backend model."""
        return cls.from_config(parameters(model_config))

    @classmethod
    def from_config(cls, parameters: dict[str, str]) -> PostParams:
        return cls(
            size=int(parameters["input_size"]),
            score_threshold=float(parameters["score_threshold"]),
            iou_threshold=float(parameters["iou_threshold"]),
            max_detections=int(parameters["max_detections"]),
        )


def batch_outputs(raw: np.ndarray, orig_hw: np.ndarray, params: PostParams) -> list[np.ndarray]:
    """A batch's raw rows -> the four batched outputs (count, boxes, scores, classes) of a response."""
    per_image = [
        pad_detections(
            *postprocess(
                row,
                params.size,
                (int(h), int(w)),
                params.score_threshold,
                params.iou_threshold,
                params.max_detections,
            ),
            params.max_detections,
        )
        for row, (h, w) in zip(raw, orig_hw, strict=True)
    ]
    return [np.stack(column) for column in zip(*per_image, strict=True)]
