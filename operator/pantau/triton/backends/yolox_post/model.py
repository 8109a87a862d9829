"""Triton Python-backend model `yolox_post` (gpu target): the shared numpy post-processing,
second step of the `yolox` ensemble after `yolox_onnx`."""

import os
import sys

sys.path.extend(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path)

import triton_python_backend_utils as pb_utils
import yolox


class TritonPythonModel:
    def initialize(self, args):
        self.post = yolox.PostParams.from_model_config(args["model_config"])

    def execute(self, requests):
        responses = []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, "RAW").as_numpy()
            hw = pb_utils.get_input_tensor_by_name(request, "ORIG_HW").as_numpy()
            outputs = yolox.batch_outputs(raw, hw, self.post)
            responses.append(
                pb_utils.InferenceResponse(
                    [pb_utils.Tensor(n, o) for n, o in zip(yolox.OUTPUT_NAMES, outputs, strict=True)]
                )
            )
        return responses
