"""`pantau analyse`: a video file through the detector, the tracker and a Camera's zones and lines,
offline, with the same engine the ingest pipeline uses."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

if TYPE_CHECKING:  # numpy, av and the engine are imported when the command runs (start-up cost)
    import numpy as np

    DetectFn = Callable[[np.ndarray], list[Any]]

console = Console(stderr=True)
SHEET_FRAMES = 12


def analyse(
    video: Annotated[Path, typer.Argument(help="A video file.")],
    camera: Annotated[Path, typer.Option(help="Camera manifest (YAML or JSON): zones, lines, classes.")],
    fps: Annotated[
        float | None,
        typer.Option(min=0.01, help="Sampled rate; default: spec.sampling.fps, else every frame."),
    ] = None,
    mot: Annotated[Path | None, typer.Option(help="Write the tracks here (MOTChallenge format).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write counts and events here.")] = None,
    render: Annotated[
        Path | None,
        typer.Option(help="Draw boxes, ids, zones, lines: OUT.mp4 (video) or OUT.jpg (contact sheet)."),
    ] = None,
    model: Annotated[
        Path | None, typer.Option(envvar="PANTAU_MODEL", help="YOLOX ONNX for the in-process detector.")
    ] = None,
    triton: Annotated[
        str | None, typer.Option(help="Detect with Triton at this gRPC address (host:port) instead.")
    ] = None,
    max_frames: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many decoded frames.")
    ] = None,
) -> None:
    """Track objects in a video and apply a Camera's zones and lines: MOT tracks, counts, events."""
    import av

    from pantau.analytics.manifest import ManifestError, load_camera

    if not video.is_file():
        raise typer.BadParameter(f"{video} is not a file", param_hint="VIDEO")
    if render is not None and render.suffix.lower() not in (".mp4", ".jpg", ".jpeg"):
        raise typer.BadParameter("must end in .mp4 or .jpg", param_hint="--render")
    if triton is None and (model is None or not model.is_file()):
        raise typer.BadParameter(
            "give the YOLOX ONNX file (or PANTAU_MODEL), or --triton", param_hint="--model"
        )
    try:
        spec = load_camera(camera)
    except (OSError, ManifestError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--camera") from exc
    try:
        with _detector(model, triton) as detect:
            result = _run(video, spec, fps or spec.fps, detect, mot, render, max_frames)
    except av.error.FFmpegError as exc:
        console.print(f"[red]cannot decode {video}:[/red] {exc}")
        raise typer.Exit(1) from exc
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(
        f"{result['frames']} frames analysed, {result['tracks']} tracks; "
        + ", ".join(f"{k} {v['forward']}/{v['backward']}" for k, v in result["lines"].items())
    )


class _detector:  # lower case: used as `with _detector(...) as detect`
    """The in-process detector, or Triton's through the async client on a private event loop."""

    def __init__(self, model: Path | None, triton: str | None) -> None:
        self.model, self.triton = model, triton
        self._runner: asyncio.Runner | None = None
        self._client: Any = None

    def __enter__(self) -> DetectFn:
        if self.triton is None:
            from pantau.triton.local import LocalDetector

            assert self.model is not None
            local = LocalDetector(self.model)
            return lambda image: local.detect([image])[0]
        from pantau.triton.client import ClientSettings, Detector

        self._runner = asyncio.Runner()
        self._client = self._runner.run(Detector.connect(ClientSettings(url=self.triton)))
        runner, client = self._runner, self._client
        return lambda image: list(runner.run(client.detect(image)))

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            self._runner.run(self._client.aclose())
            self._runner.close()


def _frames(
    video: Path, fps: float | None, max_frames: int | None
) -> Iterator[tuple[int, float, np.ndarray]]:
    """(frame number from 1, seconds, BGR image) of the sampled frames."""
    import av

    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or 25)
        due = 0.0
        for number, frame in enumerate(container.decode(stream), start=1):
            if max_frames is not None and number > max_frames:
                break
            t = float(frame.time) if frame.time is not None else (number - 1) / rate
            if fps is not None:
                if t + 1e-6 < due:
                    continue
                due = max(due + 1 / fps, t + 0.5 / fps)
            yield number, t, frame.to_ndarray(format="bgr24")


def _run(
    video: Path,
    spec: Any,
    fps: float | None,
    detect: DetectFn,
    mot: Path | None,
    render: Path | None,
    max_frames: int | None,
) -> dict[str, Any]:
    from pantau.analytics import render as draw
    from pantau.analytics.engine import CameraAnalytics

    engine = CameraAnalytics(spec.zones, spec.lines)
    events: list[dict[str, Any]] = []
    mot_rows: list[str] = []
    ids: set[int] = set()
    pictures: list[tuple[int, np.ndarray]] = []
    writer = (
        draw.VideoWriter(render, fps or 10)
        if render is not None and render.suffix.lower() == ".mp4"
        else None
    )
    frames = 0
    for number, t, image in _frames(video, fps, max_frames):
        found = [
            d
            for d in detect(image)
            if (spec.classes is None or d.class_name in spec.classes)
            and (spec.min_score is None or d.score >= spec.min_score)
        ]
        result = engine.update(t, (image.shape[0], image.shape[1]), found)
        frames += 1
        for tr in result.tracks:
            ids.add(tr.track_id)
            x1, y1, x2, y2 = tr.box
            box = f"{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f}"
            mot_rows.append(f"{number},{tr.track_id},{box},{tr.score:.4f},-1,-1,-1")
        events += [{k: v for k, v in asdict(e).items() if v is not None} for e in result.events]
        if render is not None:
            annotated = draw.annotate(image, result, spec.zones, spec.lines)
            if writer is not None:
                writer.write(annotated)
            else:
                pictures.append((number, annotated))
                if len(pictures) > 4 * SHEET_FRAMES:  # keep memory bounded: every other one
                    pictures = pictures[::2]
    if writer is not None:
        writer.close()
    elif render is not None and pictures:
        step = max(1, len(pictures) // SHEET_FRAMES)
        draw.write_jpeg(draw.contact_sheet([p for _, p in pictures[::step][:SHEET_FRAMES]]), render)
    if mot is not None:
        mot.write_text("".join(row + "\n" for row in mot_rows))
    summary = engine.summary()
    return {
        "video": str(video),
        "camera": spec.name,
        "fps": fps,
        "frames": frames,
        "tracks": len(ids),
        "lines": summary["lines"],
        "zones": summary["zones"],
        "events": events,
    }
