"""In-process detection with onnxruntime: the reference that Triton results are compared with,
and the upper bound that the inference benchmark measures the Triton path against."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from pantau.triton import contract, yolox
from pantau.triton.builder import prepare_onnx


class LocalDetector:
    """The same prepared network and the same numpy post-processing as the Triton models."""

    def __init__(self, model_path: Path, threads: int = 0) -> None:
        prepared, self.input_size = prepare_onnx(onnx.load(str(model_path)))
        options = ort.SessionOptions()
        yolox.tune_session(options, threads)  # as the Triton model's session
        self.session = ort.InferenceSession(
            prepared.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )

    def detect_letterboxed(
        self, images: np.ndarray, orig_hw: list[tuple[int, int]]
    ) -> list[list[contract.Detection]]:
        """A batch of letterboxed images -> detections per image, in original pixels."""
        raw = self.session.run([contract.RAW], {contract.image_input(self.input_size).name: images})[0]
        out = []
        for r, hw in zip(raw, orig_hw, strict=True):
            boxes, scores, classes = yolox.postprocess(
                r,
                self.input_size,
                hw,
                contract.SCORE_THRESHOLD,
                contract.IOU_THRESHOLD,
                contract.MAX_DETECTIONS,
            )
            out.append(
                [contract.Detection.of(c, s, b) for b, s, c in zip(boxes, scores, classes, strict=True)]
            )
        return out

    def detect(self, frames: list[np.ndarray]) -> list[list[contract.Detection]]:
        images = np.stack([yolox.letterbox(f, self.input_size) for f in frames])
        return self.detect_letterboxed(images, [(f.shape[0], f.shape[1]) for f in frames])
