"""Person recall over a thin uplink (bench/link_recall.py): the one-to-one matching, the offline copy of
the JPEG model's decoding, and the recall on the first seconds of the shared footage."""

from __future__ import annotations

import ast
import io
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from pantau.ingest import jpeg
from pantau.triton import builder, yolox
from pantau_dev.bench import link_recall
from pantau_dev.bench.link_recall import REFERENCE, RecallResult, Setting, match, recall_at, recall_table

FRAMES = 40  # 4 s of the 10 fps clip: ~180 counted person boxes
SIZE = 416  # yolox_nano's input
LOW = Setting(10, 0.25, 10.0)  # the smallest picture: people are ~13 px tall
SETTINGS = [REFERENCE, Setting(40, 1.0, 10.0), Setting(80, 0.5, 10.0), LOW, Setting(80, 1.0, 5.0)]

Decode = Callable[[bytes, int], tuple[np.ndarray, tuple[int, int]]]


@pytest.fixture(scope="module")
def model_path(shared_dir: Path) -> Path:
    return shared_dir / "models" / "yolox_nano.onnx"


@pytest.fixture(scope="module")
def ground_truth(shared_dir: Path) -> Path:
    return shared_dir / "footage" / "PETS09-S2L1-gt.txt"


@pytest.fixture(scope="module")
def first_frame(vtest: Path) -> av.VideoFrame:
    with av.open(str(vtest)) as container:
        return next(container.decode(video=0))


@pytest.fixture(scope="module")
def results(vtest: Path, ground_truth: Path, model_path: Path) -> dict[Setting, RecallResult]:
    rows = recall_table(vtest, ground_truth, model_path, SETTINGS, max_frames=FRAMES)
    return {r.setting: r for r in rows}


def backend_decode() -> Decode:
    """`decode_letterboxed` of the Triton JPEG model, compiled alone: its module imports
    triton_python_backend_utils, which only exists inside Triton."""
    path = builder.BACKENDS / "yolox_jpeg" / "model.py"
    tree = ast.parse(path.read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "decode_letterboxed")
    namespace = {"io": io, "np": np, "Image": Image, "yolox": yolox}  # the module's own imports
    exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
    decode: Decode = namespace["decode_letterboxed"]  # type: ignore[assignment]
    return decode


def test_matching_is_one_to_one_and_finds_the_most_pairs() -> None:
    a, b = [0, 0, 10, 10], [3, 0, 13, 10]
    x, y = [1, 0, 11, 10], [-3, 0, 7, 10]  # IoU a-x 0.82, b-x 0.67, a-y 0.54, b-y 0.25
    # Greedy (best IoU first) would pair a-x and leave b alone; the assignment pairs both.
    assert sorted(match(np.array([a, b], float), np.array([x, y], float))) == [(0, 1), (1, 0)]
    # One detection over two people matches one of them; two detections of one person, one.
    assert match(np.array([a, b], float), np.array([x], float)) == [(0, 0)]
    assert len(match(np.array([a], float), np.array([x, y], float))) == 1
    assert match(np.array([a], float), np.array([x], float), min_iou=0.9) == []
    assert match(np.empty((0, 4)), np.array([x], float)) == []
    assert match(np.array([a], float), np.empty((0, 4))) == []


def test_the_decoding_mirrors_the_jpeg_model(first_frame: av.VideoFrame) -> None:
    backend = backend_decode()
    letterboxed, content_hw = link_recall._letterbox(first_frame, SIZE)
    sent = [jpeg.encode(letterboxed, content_hw, q, s) for q, s in ((80, 1.0), (40, 0.75), (10, 0.25))]
    # And a JPEG larger than the square, which the decoder's draft mode downscales.
    big = io.BytesIO()
    Image.fromarray(first_frame.to_ndarray(format="rgb24")).resize((1536, 1152)).save(big, format="JPEG")
    for data in [e.jpeg for e in sent] + [big.getvalue()]:
        ours, theirs = link_recall._decode(data, SIZE), backend(data, SIZE)
        assert ours[1] == theirs[1]
        np.testing.assert_array_equal(ours[0], theirs[0])


def test_the_letterbox_is_the_pods(first_frame: av.VideoFrame) -> None:
    from pantau.ingest.pipeline import _letterboxer

    letterboxed, (nh, nw) = link_recall._letterbox(first_frame, SIZE)
    np.testing.assert_array_equal(letterboxed, _letterboxer(SIZE)(first_frame))
    assert (nh, nw) == (312, 416)
    assert (letterboxed[nh:] == yolox.PAD_VALUE).all()


def test_recall_is_a_share_of_the_counted_boxes(
    results: dict[Setting, RecallResult], ground_truth: Path
) -> None:
    counted = sum(
        1
        for line in ground_truth.read_text().splitlines()
        if int(line.split(",")[0]) <= FRAMES and float(line.split(",")[6]) > 0
    )
    for setting, r in results.items():
        assert r.frames == (FRAMES if setting.fps == 10 else FRAMES // 2)
        assert 0 <= r.matched <= r.gt_boxes
        assert 0.0 <= r.recall <= 1.0
        assert r.recall == r.matched / r.gt_boxes
    assert results[REFERENCE].gt_boxes == counted


def test_the_reference_finds_most_people_and_a_tiny_picture_few(results: dict[Setting, RecallResult]) -> None:
    reference = results[REFERENCE].recall
    assert reference > 0.7  # 0.85 measured on these frames
    assert results[Setting(40, 1.0, 10.0)].recall > reference - 0.1
    assert results[LOW].recall < reference - 0.3  # 0.01 measured


def test_fewer_bytes_with_lower_quality_and_scale(results: dict[Setting, RecallResult]) -> None:
    size = {s: r.bytes_per_frame for s, r in results.items()}
    assert size[REFERENCE] > size[Setting(40, 1.0, 10.0)] > size[LOW] > 0
    assert size[REFERENCE] > size[Setting(80, 0.5, 10.0)] > size[LOW]


def test_one_setting_alone_gives_its_row_of_the_table(
    results: dict[Setting, RecallResult], vtest: Path, ground_truth: Path, model_path: Path
) -> None:
    alone = recall_at(vtest, ground_truth, model_path, 80, 1.0, 5.0, max_frames=FRAMES)
    assert alone == results[Setting(80, 1.0, 5.0)]


@pytest.mark.parametrize(("quality", "scale", "fps"), [(80, 1.0, 0.0), (0, 1.0, 10.0), (80, 2.0, 10.0)])
def test_settings_out_of_range_are_refused(
    vtest: Path, ground_truth: Path, model_path: Path, quality: int, scale: float, fps: float
) -> None:
    with pytest.raises(ValueError, match="must be"):
        recall_at(vtest, ground_truth, model_path, quality, scale, fps, max_frames=1)
