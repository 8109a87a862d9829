"""The inference contract, the model builder and the shared numpy processing (no server needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from pantau.triton import builder, contract, yolox
from pantau.triton.builder import BuildOptions, ModelBuildError


@pytest.fixture(scope="module")
def model_path(shared_dir: Path) -> Path:
    return shared_dir / "models" / "yolox_nano.onnx"


@pytest.fixture(scope="module")
def frames(shared_dir: Path) -> list[np.ndarray]:
    import av

    with av.open(str(shared_dir / "footage" / "vtest.avi")) as c:
        return [f.to_ndarray(format="bgr24") for _, f in zip(range(8), c.decode(video=0), strict=False)]


def parse(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def tensors(items: object) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {t.name: (mc.DataType.Name(t.data_type), tuple(t.dims)) for t in items}  # type: ignore[attr-defined]


def expected(ts: tuple[contract.Tensor, ...]) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {t.name: (t.dtype, t.dims) for t in ts}


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_every_generated_config_matches_the_contract(model_path: Path, tmp_path: Path, target: str) -> None:
    options = BuildOptions(target="cpu" if target == "cpu" else "gpu")
    written = builder.build(model_path, tmp_path, options)
    configs = {name: parse(folder / "config.pbtxt") for name, folder in written.items()}
    for name, config in configs.items():
        assert config.name == name
        assert config.max_batch_size == contract.MAX_BATCH
        assert (written[name] / contract.VERSION).is_dir()

    for name in (contract.MODEL, contract.JPEG_MODEL):
        assert tensors(configs[name].input) == expected(contract.inputs(name, 416))
        assert tensors(configs[name].output) == expected(contract.OUTPUTS)
    jpeg = configs[contract.JPEG_MODEL]
    assert jpeg.backend == "python"
    assert jpeg.HasField("dynamic_batching")

    if target == "cpu":
        detector = configs[contract.MODEL]
        assert detector.backend == "python"
        # On a CPU a batch costs its frames apart: an instance takes what is queued, without waiting.
        assert list(detector.dynamic_batching.preferred_batch_size) == []
        assert detector.dynamic_batching.max_queue_delay_microseconds == 0
        assert [(g.kind, g.count) for g in detector.instance_group] == [
            (mc.ModelInstanceGroup.KIND_CPU, options.instances)
        ]
        assert detector.parameters["input_size"].string_value == "416"
        assert detector.parameters["intra_op_threads"].string_value == str(options.intra_op_threads)
        assert (written[contract.MODEL] / contract.VERSION / "model.onnx").is_file()
        assert set(configs) == {contract.MODEL, contract.JPEG_MODEL}
    else:
        ensemble = configs[contract.MODEL]
        assert ensemble.platform == "ensemble"
        steps = ensemble.ensemble_scheduling.step
        assert [s.model_name for s in steps] == ["yolox_onnx", "yolox_post"]
        assert set(steps[1].output_map) == {t.name for t in contract.OUTPUTS}
        onnx_cfg = configs["yolox_onnx"]
        assert onnx_cfg.platform == "onnxruntime_onnx"
        assert [g.kind for g in onnx_cfg.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
        assert list(onnx_cfg.dynamic_batching.preferred_batch_size) == list(options.preferred_batch_sizes)
        assert onnx_cfg.dynamic_batching.max_queue_delay_microseconds == options.max_queue_delay_us
        assert tensors(onnx_cfg.output) == {contract.RAW: ("TYPE_FP32", (3549, 85))}
        assert tensors(configs["yolox_post"].input)[contract.RAW] == ("TYPE_FP32", (3549, 85))
    # Python-backend models carry the shared processing code beside them, byte for byte.
    for name, config in configs.items():
        if config.backend == "python":
            copied = (written[name] / contract.VERSION / "yolox.py").read_bytes()
            assert copied == Path(yolox.__file__).read_bytes()


def test_prepared_onnx_is_batch_dynamic_and_equal_to_the_export(
    model_path: Path, frames: list[np.ndarray]
) -> None:
    original = onnx.load(str(model_path))
    before = original.SerializeToString()
    prepared, size = builder.prepare_onnx(original)
    assert original.SerializeToString() == before, "the builder must not mutate its input"
    assert size == 416

    images = np.stack([yolox.letterbox(f, size) for f in frames])
    export = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    reference = np.concatenate(
        [export.run(None, {"images": im.transpose(2, 0, 1)[None].astype(np.float32)})[0] for im in images]
    )
    batched = ort.InferenceSession(prepared.SerializeToString(), providers=["CPUExecutionProvider"])
    out = batched.run([contract.RAW], {"IMAGES": images})[0]
    assert out.shape == (8, 3549, 85)
    np.testing.assert_allclose(out, reference, rtol=0, atol=1e-5)


def test_builder_rejects_a_model_that_is_not_yolox(tmp_path: Path) -> None:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 10])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 10])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "relu.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    with pytest.raises(ModelBuildError, match=r"input x has shape \[1, 10\]"):
        builder.build(path, tmp_path / "repo", BuildOptions())
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelBuildError, match="cannot read ONNX model"):
        builder.build(tmp_path / "junk.onnx", tmp_path / "repo", BuildOptions())


def test_letterbox_geometry_and_padding() -> None:
    image = np.full((576, 768, 3), 200, dtype=np.uint8)
    out = yolox.letterbox(image, 416)
    assert out.shape == (416, 416, 3)
    assert yolox.resized_shape(576, 768, 416) == (312, 416)
    assert (out[:312] == 200).all()
    assert (out[312:] == yolox.PAD_VALUE).all()


def test_postprocess_decodes_one_box_back_to_original_pixels() -> None:
    raw = np.zeros((3549, 85), dtype=np.float32)
    raw[:, 4] = 0.0  # no objectness anywhere ...
    row = 2704 + 10 * 26 + 5  # ... except one stride-16 cell (x=5, y=10)
    raw[row, :4] = [0.5, 0.5, np.log(4.0), np.log(2.0)]  # centre (88, 168), size 64 x 32
    raw[row, 4], raw[row, 5 + 2] = 0.9, 0.8  # a car
    boxes, scores, classes = yolox.postprocess(raw, 416, (576, 768), 0.3, 0.45, 100)
    r = 416 / 768
    np.testing.assert_allclose(
        boxes, [[(88 - 32) / r, (168 - 16) / r, (88 + 32) / r, (168 + 16) / r]], rtol=1e-5
    )
    np.testing.assert_allclose(scores, [0.72], rtol=1e-6)
    assert classes.tolist() == [2]


def test_nms_is_class_aware() -> None:
    raw = np.zeros((3549, 85), dtype=np.float32)
    for row, cls, score in ((100, 0, 0.9), (101, 0, 0.8), (102, 2, 0.7)):
        raw[row, 4], raw[row, 5 + cls] = 1.0, score
    # Rows 100..102 are neighbouring stride-8 cells: their (unit-size) boxes overlap a lot.
    for row in (100, 101, 102):
        raw[row, :4] = [0.0, 0.0, np.log(8.0), np.log(8.0)]
    _, scores, classes = yolox.postprocess(raw, 416, (416, 416), 0.3, 0.45, 100)
    # The second person box overlaps the first and goes; the car box overlaps too but stays.
    assert classes.tolist() == [0, 2]
    assert scores.tolist() == pytest.approx([0.9, 0.7])


def test_pad_detections_is_fixed_size() -> None:
    count, boxes, scores, classes = yolox.pad_detections(
        np.ones((2, 4), np.float32), np.array([0.9, 0.5], np.float32), np.array([0, 2], np.int32), 5
    )
    assert count.tolist() == [2]
    assert boxes.shape == (5, 4)
    assert classes.tolist() == [0, 2, -1, -1, -1]
    assert scores[2:].tolist() == [0, 0, 0]


def test_batch_outputs_stack_each_images_padded_detections() -> None:
    params = yolox.PostParams.from_config(
        {"input_size": "416", "score_threshold": "0.3", "iou_threshold": "0.45", "max_detections": "4"}
    )
    raw = np.zeros((2, 3549, 85), dtype=np.float32)
    raw[1, 2704, :4] = [0.5, 0.5, np.log(4.0), np.log(2.0)]
    raw[1, 2704, 4], raw[1, 2704, 5] = 0.9, 0.8  # one person in the second image only
    count, boxes, scores, classes = yolox.batch_outputs(raw, np.array([[416, 416], [832, 832]]), params)
    assert count.tolist() == [[0], [1]]
    assert boxes.shape == (2, 4, 4)
    assert classes[:, 0].tolist() == [-1, 0]
    # Centre (8, 8), 64 x 32 at 416: clipped at the left and top, then the 0.5 letterbox scale undone.
    np.testing.assert_allclose(boxes[1, 0], [0, 0, 80, 48], rtol=1e-5)
    assert scores[1, 0] == pytest.approx(0.72)
