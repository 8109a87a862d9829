"""`pantau model build`: a ready Triton model repository from a YOLOX ONNX file.

Targets (same models and tensors for clients, see contract.py):
- cpu: for the Python-backend-only Triton of the local stack (nvidia-pytriton's binary):
  `yolox` runs onnxruntime and the numpy post-processing in one Python-backend model.
- gpu: for the official Triton container: `yolox` is an ensemble of `yolox_onnx` (onnxruntime
  backend on the GPU; switch to TensorRT by editing its config, see docs/inference.md) and
  `yolox_post` (the numpy post-processing, Python backend).
Both add `yolox_jpeg`, a Python-backend model that decodes JPEGs and calls `yolox`.

The ONNX file is rewritten once here: a batch dimension instead of the export's fixed 1, and a
uint8 NHWC input (cast and transpose inside the graph), so clients never send float tensors.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import onnx
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import model_config_pb2 as mc

from pantau.triton import contract, yolox

Target = Literal["cpu", "gpu"]
# The Python-backend model sources ship inside the package (package data), so the product image can
# write a model repository without a source checkout.
BACKENDS = Path(__file__).resolve().parent / "backends"
_SHARED_CODE = Path(yolox.__file__)


class ModelBuildError(ValueError):
    """The ONNX file is not a YOLOX export this builder understands."""


@dataclass(frozen=True)
class BuildOptions:
    """Defaults for a small CPU node: on a CPU a batch of N costs N frames, so latency is lowest with
    one frame per execution and one single-threaded instance per core (no thread pool to wait on).
    The ingest client's in-flight limit (`ClientSettings.max_in_flight`) matches `instances`."""

    target: Target = "cpu"
    instances: int = 2  # of every Python-backend model (cpu: the detector itself)
    intra_op_threads: int = 1  # onnxruntime threads per instance (cpu target); 0 = one per core
    # The gpu target's network (`yolox_onnx`) only: there a batch costs little more than one frame,
    # so waiting briefly to fill one pays. Python-backend models run on the CPU and never wait.
    max_queue_delay_us: int = 2000
    preferred_batch_sizes: tuple[int, ...] = (4, 8)


def prepare_onnx(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A batch-dynamic copy of a YOLOX export with a uint8 NHWC input; returns it and its size."""
    model = onnx.ModelProto.FromString(model.SerializeToString())  # never mutate the caller's
    graph = model.graph
    initializer_names = {i.name for i in graph.initializer}
    real_inputs = [i for i in graph.input if i.name not in initializer_names]
    if len(real_inputs) != 1 or len(graph.output) != 1:
        raise ModelBuildError("expected one image input and one output (a YOLOX export without NMS)")
    image, output = real_inputs[0], graph.output[0]
    dims = [d.dim_value for d in image.type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1] != 3 or dims[2] != dims[3] or dims[2] % 32:
        raise ModelBuildError(
            f"input {image.name} has shape {dims}; expected [N, 3, S, S] with S a multiple of 32"
        )
    size = dims[2]
    rows = sum((size // s) ** 2 for s in yolox.STRIDES)
    out_dims = [d.dim_value for d in output.type.tensor_type.shape.dim]
    if out_dims[1:] != [rows, 4 + 1 + len(contract.CLASS_NAMES)]:
        raise ModelBuildError(f"output {output.name} has shape {out_dims}; expected [N, {rows}, 85]")

    # Reshapes with a literal batch of 1 (the [1, 85, -1] heads) copy the batch dim instead.
    for tensor in _reshape_shapes(graph):
        shape = numpy_helper.to_array(tensor)
        if shape.ndim == 1 and shape.size and shape[0] == 1:
            shape = shape.copy()
            shape[0] = 0
            tensor.CopyFrom(numpy_helper.from_array(shape, tensor.name))

    # New front: IMAGES (uint8, NHWC) -> Cast -> Transpose -> the export's float NCHW input.
    images = contract.image_input(size).name
    cast, nchw = f"{images}_float", image.name
    graph.node.insert(0, helper.make_node("Transpose", [cast], [nchw], perm=[0, 3, 1, 2]))
    graph.node.insert(0, helper.make_node("Cast", [images], [cast], to=TensorProto.FLOAT))
    graph.input.remove(image)
    graph.input.insert(0, helper.make_tensor_value_info(images, TensorProto.UINT8, ["batch", size, size, 3]))

    # Rename the output to the contract's name and make its batch symbolic.
    for node in graph.node:
        node.output[:] = [contract.RAW if o == output.name else o for o in node.output]
    graph.output.remove(output)
    graph.output.append(helper.make_tensor_value_info(contract.RAW, TensorProto.FLOAT, ["batch", rows, 85]))
    del graph.value_info[:]  # stale shapes with batch 1; shape inference re-derives them
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    return model, size


def _reshape_shapes(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    """The constant shape tensors feeding Reshape nodes (initializers or Constant nodes)."""
    wanted = {n.input[1] for n in graph.node if n.op_type == "Reshape"}
    found = [i for i in graph.initializer if i.name in wanted]
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] in wanted:
            found += [a.t for a in node.attribute if a.name == "value"]
    return found


def _tensor(
    t: contract.Tensor, cls: type[mc.ModelInput] | type[mc.ModelOutput]
) -> mc.ModelInput | mc.ModelOutput:
    return cls(name=t.name, data_type=mc.DataType.Value(t.dtype), dims=list(t.dims))


def _python_model(
    name: str, inputs: tuple[contract.Tensor, ...], options: BuildOptions, params: dict[str, str]
) -> mc.ModelConfig:
    config = mc.ModelConfig(name=name, backend="python", max_batch_size=contract.MAX_BATCH)
    config.input.extend(_tensor(t, mc.ModelInput) for t in inputs)
    config.output.extend(_tensor(t, mc.ModelOutput) for t in contract.OUTPUTS)
    # No delay, no preferred sizes: an instance that frees up takes what is queued at once (requests of
    # several ingest pods still merge while every instance is busy).
    config.dynamic_batching.CopyFrom(mc.ModelDynamicBatching(max_queue_delay_microseconds=0))
    config.instance_group.append(
        mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=options.instances)
    )
    for key, value in params.items():
        config.parameters[key].string_value = value
    return config


def configs(size: int, options: BuildOptions) -> dict[str, mc.ModelConfig]:
    """The config of every model of the repository, by model name."""
    post = {
        "input_size": str(size),
        "score_threshold": str(contract.SCORE_THRESHOLD),
        "iou_threshold": str(contract.IOU_THRESHOLD),
        "max_detections": str(contract.MAX_DETECTIONS),
    }
    detector_inputs = contract.inputs(contract.MODEL, size)
    out: dict[str, mc.ModelConfig] = {
        contract.JPEG_MODEL: _python_model(
            contract.JPEG_MODEL,
            contract.inputs(contract.JPEG_MODEL, size),
            options,
            {"input_size": str(size)},
        )
    }
    if options.target == "cpu":
        params = {**post, "intra_op_threads": str(options.intra_op_threads)}
        out[contract.MODEL] = _python_model(contract.MODEL, detector_inputs, options, params)
        return out

    raw = contract.Tensor(contract.RAW, "TYPE_FP32", (sum((size // s) ** 2 for s in yolox.STRIDES), 85))
    out["yolox_onnx"] = _onnx_model(size, raw, options)
    post_model = _python_model("yolox_post", (raw, contract.ORIG_HW), options, post)
    post_model.ClearField("dynamic_batching")  # the ensemble's batches arrive already formed
    out["yolox_post"] = post_model
    out[contract.MODEL] = _ensemble(size, raw)
    return out


def _onnx_model(size: int, raw: contract.Tensor, options: BuildOptions) -> mc.ModelConfig:
    """gpu target: the network alone, on the onnxruntime backend, dynamically batched."""
    model = mc.ModelConfig(name="yolox_onnx", platform="onnxruntime_onnx", max_batch_size=contract.MAX_BATCH)
    model.input.append(_tensor(contract.image_input(size), mc.ModelInput))
    model.output.append(_tensor(raw, mc.ModelOutput))
    model.dynamic_batching.CopyFrom(
        mc.ModelDynamicBatching(
            preferred_batch_size=list(options.preferred_batch_sizes),
            max_queue_delay_microseconds=options.max_queue_delay_us,
        )
    )
    model.instance_group.append(mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_GPU, count=1))
    return model


def _ensemble(size: int, raw: contract.Tensor) -> mc.ModelConfig:
    """gpu target: `yolox` = yolox_onnx, then yolox_post, behind the same contract as the cpu model."""
    ensemble = mc.ModelConfig(name=contract.MODEL, platform="ensemble", max_batch_size=contract.MAX_BATCH)
    ensemble.input.extend(_tensor(t, mc.ModelInput) for t in contract.inputs(contract.MODEL, size))
    ensemble.output.extend(_tensor(t, mc.ModelOutput) for t in contract.OUTPUTS)
    images = contract.image_input(size).name
    steps = ensemble.ensemble_scheduling.step
    steps.append(
        mc.ModelEnsembling.Step(
            model_name="yolox_onnx",
            model_version=-1,
            input_map={images: images},
            output_map={raw.name: raw.name},
        )
    )
    steps.append(
        mc.ModelEnsembling.Step(
            model_name="yolox_post",
            model_version=-1,
            input_map={raw.name: raw.name, contract.ORIG_HW.name: contract.ORIG_HW.name},
            output_map={t.name: t.name for t in contract.OUTPUTS},
        )
    )
    return ensemble


# Model name -> the folder under backends/ holding its model.py (Python backend only).
_SOURCES = {contract.MODEL: "yolox", contract.JPEG_MODEL: "yolox_jpeg", "yolox_post": "yolox_post"}


def build(model_path: Path, out: Path, options: BuildOptions) -> dict[str, Path]:
    """Write the repository under `out` (created; existing model folders are replaced)."""
    try:
        source = onnx.load(str(model_path))
    except (OSError, onnx.onnx_cpp2py_export.checker.ValidationError, Exception) as exc:
        raise ModelBuildError(f"cannot read ONNX model {model_path}: {exc}") from exc
    prepared, size = prepare_onnx(source)
    written: dict[str, Path] = {}
    for name, config in configs(size, options).items():
        folder = out / name
        if folder.exists():
            shutil.rmtree(folder)
        version = folder / contract.VERSION
        version.mkdir(parents=True)
        (folder / "config.pbtxt").write_text(text_format.MessageToString(config))
        if config.backend == "python":
            shutil.copy2(BACKENDS / _SOURCES[name] / "model.py", version / "model.py")
            shutil.copy2(_SHARED_CODE, version / "yolox.py")
        if (name == contract.MODEL and options.target == "cpu") or name == "yolox_onnx":
            onnx.save(prepared, str(version / "model.onnx"))
        written[name] = folder
    return written
