"""The in-pod fallback detector (Site spec.inference.fallback): while Triton cannot be reached, an
onnxruntime copy of the same detector analyses each camera at a reduced rate, so a district whose link is
down still gets events, marked `"inference": "local"`.

The model file comes from the pod's settings: a path (an image or volume that carries it), or a URL with
its SHA-256 (the chart's triton.model.url), downloaded once onto the pod's volume when a Site first enables
the fallback. Loading happens in a thread; until it is done, or when it failed (said in the log and in
`problem`), frames are dropped as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pantau.models.site import Fallback as FallbackSpec
from pantau.triton import contract
from pantau.triton.fetch import FetchError, fetch

if TYPE_CHECKING:
    from pantau.triton.local import LocalDetector

log = logging.getLogger("pantau.ingest")


class Fallback:
    def __init__(
        self,
        model: str | None = None,
        url: str | None = None,
        sha256: str | None = None,
        cache_dir: str | None = None,
    ) -> None:
        self.model, self.url, self.sha256 = model, url, sha256
        self.cache_dir = Path(cache_dir or "/tmp") / "fallback-model"  # noqa: S108 - the pod's own volume
        self.spec: FallbackSpec | None = None
        self.problem: str | None = None  # why the fallback cannot run, once that is known
        self._detector: LocalDetector | None = None
        self._loading: asyncio.Task[None] | None = None
        self._last: dict[str, float] = {}  # camera -> time.monotonic() of its last local frame

    @property
    def enabled(self) -> bool:
        return self.spec is not None and self.spec.enabled

    def configure(self, spec: FallbackSpec | None) -> None:
        """The Site's setting; the model is loaded (in the background) when first enabled."""
        self.spec = spec
        if self.enabled and self._detector is None and self._loading is None:
            self._loading = asyncio.create_task(self._load(), name="load-fallback-model")

    async def analyse(
        self, camera: str, image: np.ndarray, orig_hw: tuple[int, int]
    ) -> list[contract.Detection] | None:
        """Detections of a letterboxed frame by the local detector, when enabled, loaded and due for this
        camera (at most spec.fps frames a second); None otherwise (the frame stays a drop)."""
        spec, detector = self.spec, self._detector
        if spec is None or not spec.enabled or detector is None:
            return None
        now = time.monotonic()
        if now - self._last.get(camera, -1e9) < 1.0 / spec.fps:
            return None
        self._last[camera] = now
        found = await asyncio.to_thread(detector.detect_letterboxed, image[np.newaxis], [orig_hw])
        return found[0]

    async def loaded(self) -> None:
        """Return once a load under way has ended (loaded, or `problem` says why not)."""
        task = self._loading
        if task is not None:
            await asyncio.shield(task)

    def forget(self, camera: str) -> None:
        self._last.pop(camera, None)

    async def _load(self) -> None:
        # onnxruntime is imported only by pods whose Site enables the fallback (tens of MB each).
        from pantau.triton.local import LocalDetector

        try:
            path = await asyncio.to_thread(self._model_file)
            threads = self.spec.threads if self.spec is not None else 1
            self._detector = await asyncio.to_thread(LocalDetector, path, threads)
            self.problem = None
            log.info("fallback detector loaded from %s", path.name)
        except (FetchError, OSError, ValueError, RuntimeError) as exc:
            self.problem = f"the fallback detector could not be loaded: {exc}"
            log.error("%s", self.problem)
        finally:
            self._loading = None

    def _model_file(self) -> Path:
        if self.model:
            return Path(self.model)
        if not (self.url and self.sha256):
            raise ValueError(
                "no model for it: set the chart's triton.model.url and sha256 (the pods download it), "
                "or PANTAU_INGEST_FALLBACK_MODEL to a file in the pod"
            )
        target = self.cache_dir / f"{self.sha256}.onnx"
        if not target.exists():
            fetch(self.url, self.sha256, target)
        return target
