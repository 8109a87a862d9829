"""Triton Python-backend model `yolox_jpeg`: decodes JPEG bytes, letterboxes them with the
shared numpy code and calls `yolox` (business-logic scripting), so both entry points share the
detector's dynamic batcher. Needs Pillow for JPEG decoding."""

import io
import os
import sys

sys.path.extend(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path)

import numpy as np
import triton_python_backend_utils as pb_utils
import yolox
from PIL import Image

OUTPUTS = yolox.OUTPUT_NAMES


def decode_letterboxed(data, size):
    """JPEG bytes -> (letterboxed BGR uint8 image, original (h, w)); PIL does decode and resize."""
    image = Image.open(io.BytesIO(data))
    w0, h0 = image.size
    image.draft("RGB", (size, size))  # let the JPEG decoder downscale by 1/2, 1/4 ... when it can
    rgb = image.convert("RGB")
    nh, nw = yolox.resized_shape(h0, w0, size)
    resized = np.asarray(rgb.resize((nw, nh), Image.BILINEAR))[:, :, ::-1]
    return yolox.pad(resized, size), (h0, w0)


class TritonPythonModel:
    def initialize(self, args):
        self.size = int(yolox.parameters(args["model_config"])["input_size"])

    def execute(self, requests):
        responses = []
        for request in requests:
            blobs = pb_utils.get_input_tensor_by_name(request, "JPEG").as_numpy().reshape(-1)
            try:
                decoded = [decode_letterboxed(bytes(b), self.size) for b in blobs]
            except Exception as exc:  # a corrupt JPEG fails its own request only
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"bad JPEG: {exc}")))
                continue
            images = np.stack([d[0] for d in decoded])
            hw = np.array([d[1] for d in decoded], dtype=np.int32)
            inner = pb_utils.InferenceRequest(
                model_name="yolox",
                requested_output_names=list(OUTPUTS),
                inputs=[pb_utils.Tensor("IMAGES", images), pb_utils.Tensor("ORIG_HW", hw)],
            ).exec()
            if inner.has_error():
                responses.append(pb_utils.InferenceResponse(error=inner.error()))
                continue
            responses.append(
                pb_utils.InferenceResponse([pb_utils.get_output_tensor_by_name(inner, n) for n in OUTPUTS])
            )
        return responses
