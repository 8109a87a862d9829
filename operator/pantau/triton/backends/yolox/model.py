"""Triton Python-backend model `yolox` (cpu target): onnxruntime + the shared numpy post-processing.

Input: a batch of letterboxed uint8 BGR images and each one's original (height, width).
Output: fixed-size detections per image (see operator/pantau/triton/contract.py).
The builder copies this file and `yolox.py` (the shared pre/post-processing) into the version
folder, beside `model.onnx` (already batch-dynamic, uint8 NHWC input).
"""

import os
import sys
from pathlib import Path

# The backend's embedded interpreter ignores PYTHONPATH; honour it so the Triton directory's
# numpy<2 and onnxruntime are found (a no-op where they are installed system-wide).
sys.path.extend(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path)

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils
import yolox


class TritonPythonModel:
    def initialize(self, args):
        params = yolox.parameters(args["model_config"])
        self.post = yolox.PostParams.from_config(params)
        options = ort.SessionOptions()
        yolox.tune_session(options, int(params.get("intra_op_threads", "1")))
        onnx_path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        # Run the whole dynamic batch through the network at once, then split per request.
        images = [pb_utils.get_input_tensor_by_name(r, "IMAGES").as_numpy() for r in requests]
        sizes = [pb_utils.get_input_tensor_by_name(r, "ORIG_HW").as_numpy() for r in requests]
        raw = self.session.run(["RAW"], {"IMAGES": np.concatenate(images)})[0]
        responses, start = [], 0
        for batch, hw in zip(images, sizes, strict=True):
            outputs = yolox.batch_outputs(raw[start : start + len(batch)], hw, self.post)
            start += len(batch)
            responses.append(
                pb_utils.InferenceResponse(
                    [pb_utils.Tensor(n, o) for n, o in zip(yolox.OUTPUT_NAMES, outputs, strict=True)]
                )
            )
        return responses
