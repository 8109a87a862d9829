"""Frames on an uplink (JPEG at the plan's quality and scale, boxes mapped back) and the pod's fallback
detector (the real model, loaded as a pod loads it: from a file or a checked download)."""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Iterator
from functools import partial
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from PIL import Image

from pantau.ingest import jpeg
from pantau.ingest.fallback import Fallback
from pantau.models.site import Fallback as FallbackSpec
from pantau.triton import contract, yolox
from tests.test_chart_triton import _Quiet

SIZE = 416


@pytest.fixture(scope="module")
def letterboxed(vtest: Path) -> tuple[np.ndarray, tuple[int, int]]:
    """Frame 100 of the street scene, letterboxed as the pod does; its size before letterboxing."""
    with av.open(str(vtest)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index == 100:
                nh, nw = yolox.resized_shape(frame.height, frame.width, SIZE)
                resized = frame.reformat(width=nw, height=nh, format="bgr24", interpolation="BILINEAR")
                return yolox.pad(resized.to_ndarray(), SIZE), (frame.height, frame.width)
    raise AssertionError("the clip is shorter than 100 frames")


def test_only_the_picture_is_encoded_at_the_scale_asked(letterboxed: tuple[np.ndarray, Any]) -> None:
    image, orig = letterboxed
    content = yolox.resized_shape(orig[0], orig[1], SIZE)
    full = jpeg.encode(image, content, 80, 1.0)
    half = jpeg.encode(image, content, 80, 0.5)
    assert full.hw == content  # the padding is not sent
    assert half.hw == (round(content[0] / 2), round(content[1] / 2))
    assert Image.open(io.BytesIO(half.jpeg)).size == (half.hw[1], half.hw[0])
    assert len(half.jpeg) < len(full.jpeg)
    assert len(jpeg.encode(image, content, 40, 1.0).jpeg) < len(full.jpeg)


@pytest.mark.parametrize(("quality", "scale"), [(0, 1.0), (96, 1.0), (80, 0.1), (80, 1.5)])
def test_settings_outside_the_planners_range_are_refused(
    letterboxed: tuple[np.ndarray, Any], quality: int, scale: float
) -> None:
    with pytest.raises(ValueError, match=r"quality|scale"):
        jpeg.encode(letterboxed[0], (312, 416), quality, scale)


def test_boxes_in_the_jpegs_pixels_map_back_to_the_cameras() -> None:
    found = [contract.Detection(0, 0.9, (10.0, 20.0, 30.0, 40.0))]
    mapped = jpeg.to_frame(found, (156, 208), (576, 768))
    assert mapped[0].box == pytest.approx((10 * 768 / 208, 20 * 576 / 156, 30 * 768 / 208, 40 * 576 / 156))
    assert (mapped[0].class_name, mapped[0].score) == ("person", 0.9)


# ----- the fallback detector -----


@pytest.fixture(scope="module")
def model(shared_dir: Path) -> Path:
    return shared_dir / "models" / "yolox_nano.onnx"


@pytest.fixture(scope="module")
def served(model: Path) -> Iterator[tuple[str, str]]:
    """The model over HTTP on loopback, as the chart's triton.model.url serves it: (URL, SHA-256)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(model.parent)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield (
        f"http://127.0.0.1:{server.server_port}/{model.name}",
        hashlib.sha256(model.read_bytes()).hexdigest(),
    )
    server.shutdown()
    server.server_close()


async def loaded(fallback: Fallback, spec: FallbackSpec) -> Fallback:
    fallback.configure(spec)
    await fallback.loaded()
    return fallback


async def test_the_fallback_detects_at_its_rate_once_downloaded(
    served: tuple[str, str], tmp_path: Path, letterboxed: tuple[np.ndarray, Any]
) -> None:
    url, sha256 = served
    fallback = await loaded(
        Fallback(url=url, sha256=sha256, cache_dir=str(tmp_path)), FallbackSpec(enabled=True, fps=0.5)
    )
    assert fallback.problem is None
    assert (tmp_path / "fallback-model" / f"{sha256}.onnx").is_file()  # kept on the pod's volume
    image, orig = letterboxed
    first = await fallback.analyse("gerbang", image, orig)
    assert first is not None
    assert any(d.class_name == "person" for d in first)
    assert await fallback.analyse("gerbang", image, orig) is None  # not due yet: 0.5 fps
    assert await fallback.analyse("pasar", image, orig) is not None  # each camera has its own rate


async def test_a_disabled_fallback_or_one_without_a_model_detects_nothing(
    tmp_path: Path, letterboxed: tuple[np.ndarray, Any]
) -> None:
    image, orig = letterboxed
    off = await loaded(Fallback(cache_dir=str(tmp_path)), FallbackSpec(enabled=False))
    assert await off.analyse("a", image, orig) is None
    missing = await loaded(Fallback(cache_dir=str(tmp_path)), FallbackSpec(enabled=True))
    assert await missing.analyse("a", image, orig) is None
    assert missing.problem is not None
    assert "triton.model.url" in missing.problem


async def test_a_download_that_is_not_the_model_is_refused(served: tuple[str, str], tmp_path: Path) -> None:
    url, _ = served
    wrong = await loaded(
        Fallback(url=url, sha256="0" * 64, cache_dir=str(tmp_path)), FallbackSpec(enabled=True)
    )
    assert wrong.problem is not None
    assert "checksum" in wrong.problem or "SHA" in wrong.problem or "sha" in wrong.problem
    assert not list((tmp_path / "fallback-model").glob("*.onnx"))
