"""The latency defaults of the detector path, without a server: the client's batching rule, the
onnxruntime session settings, and one set of defaults shared by the builder, the client, the ingest
settings and the chart."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from pantau.contract import IngestSettings
from pantau.triton import contract, yolox
from pantau.triton.builder import BuildOptions
from pantau.triton.client import ClientSettings, Detector, Prepared
from pantau_dev.chart import CHART, LINT_VALUES, Tools
from pantau_dev.settings import DevSettings

FRAME = Prepared(orig_hw=(576, 768), image=np.zeros((416, 416, 3), dtype=np.uint8))


class _FakeServer:
    """Stands in for the gRPC call: records each request's frames, holds it until released."""

    def __init__(self, hold: bool = True) -> None:
        self.batches: list[int] = []
        self.in_flight = 0
        self.peak = 0
        self.hold = hold
        self.released: list[asyncio.Event] = []

    def release(self, request: int | None = None) -> None:
        """Let one request (by its index) or, with None, every request answer."""
        if request is None:
            self.hold = False
        for i, event in enumerate(self.released):
            if request in (None, i):
                event.set()

    async def infer(
        self, frames: Sequence[Prepared], headers: Mapping[str, str] | None = None
    ) -> list[list[contract.Detection]]:
        self.batches.append(len(frames))
        self.released.append(event := asyncio.Event())
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        if self.hold:
            await event.wait()
        self.in_flight -= 1
        return [[] for _ in frames]


async def _until(condition: Callable[[], bool]) -> None:
    deadline = asyncio.get_running_loop().time() + 5.0
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


async def test_frames_go_at_once_and_batch_only_while_every_slot_is_busy() -> None:
    server = _FakeServer()
    settings = ClientSettings(url="127.0.0.1:9", max_batch=4, max_in_flight=2)
    async with Detector(settings, input_size=416) as detector:
        detector._infer_with_retries = server.infer  # type: ignore[method-assign]
        first = [asyncio.create_task(detector.detect(FRAME)) for _ in range(2)]
        # No batching delay, and two frames queued together go to the two free slots.
        await _until(lambda: server.batches == [1, 1])
        rest = [asyncio.create_task(detector.detect(FRAME)) for _ in range(6)]
        await _until(lambda: detector._queue.qsize() == 5)  # the sixth waits for a slot
        assert server.batches == [1, 1]
        server.release(0)  # one slot frees: what queued meanwhile goes, up to max_batch
        await _until(lambda: len(server.batches) == 3)
        assert server.batches[2] == 4
        server.release()
        results = await asyncio.gather(*first, *rest)
    assert sum(server.batches) == 8
    assert server.peak == 2
    assert results == [[]] * 8


async def test_the_defaults_send_one_frame_per_request() -> None:
    server = _FakeServer(hold=False)
    async with Detector(ClientSettings(url="127.0.0.1:9"), input_size=416) as detector:
        detector._infer_with_retries = server.infer  # type: ignore[method-assign]
        await asyncio.gather(*(detector.detect(FRAME) for _ in range(8)))
    assert server.batches == [1] * 8
    assert server.peak <= ClientSettings(url="x").max_in_flight


def test_onnxruntime_threads_sleep_instead_of_spinning() -> None:
    options = ort.SessionOptions()
    yolox.tune_session(options, 1)
    assert options.intra_op_num_threads == 1
    assert options.inter_op_num_threads == 1
    for key in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
        assert options.get_session_config_entry(key) == "0"


def test_builder_client_ingest_and_chart_share_the_defaults() -> None:
    build, client = BuildOptions(), ClientSettings(url="x")
    assert client.max_in_flight == build.instances  # one request per detector instance
    assert client.max_delay == 0
    assert IngestSettings.model_fields["max_batch"].default == client.max_batch
    values = yaml.safe_load((CHART / "values.yaml").read_text())["triton"]["model"]
    assert (values["instances"], values["threads"]) == (build.instances, build.intra_op_threads)


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_the_chart_builds_the_repository_with_its_instances_and_threads(target: str) -> None:
    tools = Tools(DevSettings(), Path("/nonexistent-kubeconfig"))  # helm renders offline
    sets = (f"triton.target={target}", "triton.model.instances=4", "triton.model.threads=0")
    rendered = tools.template("pantau-system", LINT_VALUES, sets=sets)
    builds = [line.strip() for line in rendered.splitlines() if line.strip().startswith("pantau model build")]
    assert builds
    assert all(line.endswith(f"--target {target} --instances 4 --threads 0") for line in builds)
