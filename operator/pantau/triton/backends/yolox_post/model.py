"""Triton Python-backend model `yolox_post` (gpu target): the shared numpy post-processing,
second step of the `yolox` ensemble after `yolox_onnx`."""

import json
import os
import sys

sys.path.extend(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path)

import numpy as np
import triton_python_backend_utils as pb_utils
import yolox


class TritonPythonModel:
    def initialize(self, args):
        params = {k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()}
        self.size = int(params["input_size"])
        self.score = float(params["score_threshold"])
        self.iou = float(params["iou_threshold"])
        self.max_det = int(params["max_detections"])

    def execute(self, requests):
        responses = []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, "RAW").as_numpy()
            hw = pb_utils.get_input_tensor_by_name(request, "ORIG_HW").as_numpy()
            per_image = [
                yolox.pad_detections(
                    *yolox.postprocess(r, self.size, (int(h), int(w)), self.score, self.iou, self.max_det),
                    self.max_det,
                )
                for r, (h, w) in zip(raw, hw, strict=True)
            ]
            outputs = [np.stack(column) for column in zip(*per_image, strict=True)]
            names = ("NUM_DETECTIONS", "BOXES", "SCORES", "CLASSES")
            responses.append(
                pb_utils.InferenceResponse(
                    [pb_utils.Tensor(n, o) for n, o in zip(names, outputs, strict=True)]
                )
            )
        return responses
