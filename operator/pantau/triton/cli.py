"""`pantau model build` and `pantau detect`."""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

# av, onnx and tritonclient are imported inside the commands: `pantau operator` shares this
# command-line module and should not carry them in memory.

model_app = typer.Typer(help="Triton model repositories for the detector.", no_args_is_help=True)
console = Console(stderr=True)


@model_app.command("build")
def build_command(
    model: Annotated[Path, typer.Option(help="A YOLOX ONNX export (e.g. yolox_nano.onnx, yolox_s.onnx).")],
    out: Annotated[Path, typer.Option(help="Model repository directory to write (created).")],
    target: Annotated[
        str, typer.Option(help="cpu: Python backend + onnxruntime; gpu: official Triton container.")
    ] = "cpu",
    instances: Annotated[
        int | None, typer.Option(min=1, help="Instances of each Python-backend model; default 2.")
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(min=0, help="onnxruntime threads per instance (cpu); 0 = one per core; default 1."),
    ] = None,
) -> None:
    """Write a ready Triton model repository (yolox, yolox_jpeg, ...) for one target."""
    from pantau.triton.builder import BuildOptions, ModelBuildError, Target, build

    if target not in ("cpu", "gpu"):
        raise typer.BadParameter("must be 'cpu' or 'gpu'", param_hint="--target")
    if not model.is_file():
        raise typer.BadParameter(f"{model} is not a file", param_hint="--model")
    chosen: Target = "cpu" if target == "cpu" else "gpu"
    options = BuildOptions(target=chosen)
    options = replace(
        options,
        instances=instances or options.instances,
        intra_op_threads=options.intra_op_threads if threads is None else threads,
    )
    try:
        written = build(model, out, options)
    except ModelBuildError as exc:
        console.print(f"[red]cannot build:[/red] {exc}")
        raise typer.Exit(1) from exc
    for name, folder in sorted(written.items()):
        console.print(f"wrote {name}: {folder}")


@model_app.command("fetch")
def fetch_command(
    url: Annotated[str, typer.Option(help="Where the ONNX file is published (http:// or https://).")],
    sha256: Annotated[str, typer.Option(help="Its published SHA-256; the download must match it.")],
    out: Annotated[Path, typer.Option(help="File to write (only once the checksum matches).")],
) -> None:
    """Download a model file and check its SHA-256 (for a model repository built at start-up)."""
    from pantau.triton.fetch import FetchError, fetch

    try:
        fetch(url, sha256, out)
    except FetchError as exc:
        console.print(f"[red]cannot fetch the model:[/red] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"wrote {out}")


def detect(
    path: Annotated[Path, typer.Argument(help="An image (JPEG, PNG, ...) or a video file.")],
    triton: Annotated[
        str, typer.Option(envvar="PANTAU_TRITON_GRPC", help="Triton's gRPC address, host:port.")
    ] = "127.0.0.1:8001",
    every: Annotated[int, typer.Option(min=1, help="Detect on every N-th frame only.")] = 1,
    json_lines: Annotated[bool, typer.Option("--json", help="One JSON object per detection.")] = False,
) -> None:
    """Run an image or a video through Triton's detector and print the detections."""
    import av

    from pantau.triton.client import InferenceError

    if not path.is_file():
        raise typer.BadParameter(f"{path} is not a file", param_hint="PATH")
    try:
        asyncio.run(_detect(path, triton, every, json_lines))
    except InferenceError as exc:
        console.print(f"[red]{exc}[/red] (Triton at {triton}: is `pantau dev up` running, or pass --triton)")
        raise typer.Exit(1) from exc
    except av.error.FFmpegError as exc:
        console.print(f"[red]cannot decode {path}:[/red] {exc}")
        raise typer.Exit(1) from exc


async def _detect(path: Path, triton: str, every: int, json_lines: bool) -> None:
    import av

    from pantau.triton.client import ClientSettings, Detector

    out = Console(highlight=False)
    async with await Detector.connect(ClientSettings(url=triton)) as detector:
        with av.open(str(path)) as container:
            chosen = (
                (index, frame)
                for index, frame in enumerate(container.decode(video=0), start=1)
                if (index - 1) % every == 0
            )
            # Up to 16 frames in flight keeps the client's batcher busy without holding a whole video.
            while chunk := list(itertools.islice(chosen, 16)):
                frames = [(i, f.to_ndarray(format="bgr24")) for i, f in chunk]
                results = await asyncio.gather(*(detector.detect(image) for _, image in frames))
                for (index, _), detections in zip(frames, results, strict=True):
                    for d in detections:
                        box = [round(v, 1) for v in d.box]
                        if json_lines:
                            record = {
                                "frame": index,
                                "class": d.class_name,
                                "score": round(d.score, 4),
                                "box": box,
                            }
                            print(json.dumps(record))
                        else:
                            out.print(f"frame {index}: {d.class_name} {d.score:.2f} {box}")
