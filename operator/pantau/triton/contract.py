"""The inference contract: what Pantau sends to Triton and what it gets back.

One place names every model, tensor, dtype and shape. The model builder writes config.pbtxt
from it, the clients build requests from it, and a test parses each generated config with
Triton's own protobufs and compares it with this module.

Two entry points share one detector:
- `yolox`: a batch of letterboxed uint8 BGR images (size x size x 3) and each image's original
  (height, width); the cheapest for a client that decodes video anyway (the decoder's scaler does
  the resize).
- `yolox_jpeg`: one JPEG per batch item; the server decodes and letterboxes it, then calls
  `yolox` (so both share its dynamic batcher). ~20x fewer bytes on the wire than uint8.
Outputs are fixed-size (padded to MAX_DETECTIONS) so a batch is one rectangular tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pantau.models.limits import MODEL_CLASSES

MODEL = "yolox"
JPEG_MODEL = "yolox_jpeg"
VERSION = "1"
MAX_BATCH = 32
MAX_DETECTIONS = 100
SCORE_THRESHOLD = 0.3
IOU_THRESHOLD = 0.45

TritonType = Literal["TYPE_UINT8", "TYPE_INT32", "TYPE_FP32", "TYPE_STRING"]
# Client-side datatype names (tritonclient's InferInput) of the config types above.
WIRE_TYPE: dict[str, str] = {
    "TYPE_UINT8": "UINT8",
    "TYPE_INT32": "INT32",
    "TYPE_FP32": "FP32",
    "TYPE_STRING": "BYTES",
}


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: TritonType
    dims: tuple[int, ...]  # per batch item; -1 = variable; "S" sizes are filled in per model

    @property
    def wire_type(self) -> str:
        return WIRE_TYPE[self.dtype]


def image_input(size: int) -> Tensor:
    return Tensor("IMAGES", "TYPE_UINT8", (size, size, 3))


ORIG_HW = Tensor("ORIG_HW", "TYPE_INT32", (2,))
JPEG = Tensor("JPEG", "TYPE_STRING", (1,))
NUM_DETECTIONS = Tensor("NUM_DETECTIONS", "TYPE_INT32", (1,))
BOXES = Tensor("BOXES", "TYPE_FP32", (MAX_DETECTIONS, 4))
SCORES = Tensor("SCORES", "TYPE_FP32", (MAX_DETECTIONS,))
CLASSES = Tensor("CLASSES", "TYPE_INT32", (MAX_DETECTIONS,))
OUTPUTS = (NUM_DETECTIONS, BOXES, SCORES, CLASSES)
# The raw network output between the ONNX step and post-processing (GPU ensemble only).
RAW = "RAW"


def inputs(model: str, size: int) -> tuple[Tensor, ...]:
    if model == MODEL:
        return (image_input(size), ORIG_HW)
    if model == JPEG_MODEL:
        return (JPEG,)
    raise KeyError(model)


# The detector's class names in its output order (COCO 2017, 80 classes): the operator knows them too.
CLASS_NAMES: tuple[str, ...] = MODEL_CLASSES
VEHICLES = frozenset({"bicycle", "car", "motorcycle", "bus", "truck"})


@dataclass(frozen=True)
class Detection:
    """One detected object, box in the original frame's pixels."""

    class_id: int
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2

    @property
    def class_name(self) -> str:
        return CLASS_NAMES[self.class_id]

    @classmethod
    def of(cls, class_id: object, score: object, box: Sequence[object]) -> Detection:
        """From numpy scalars and a box row."""
        x1, y1, x2, y2 = (float(v) for v in box)  # type: ignore[arg-type]
        return cls(int(class_id), float(score), (x1, y1, x2, y2))  # type: ignore[call-overload, arg-type]
