"""`pantau model build` and `pantau detect`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pantau.triton.builder import BuildOptions, ModelBuildError, Target, build

model_app = typer.Typer(help="Triton model repositories for the detector.", no_args_is_help=True)
console = Console(stderr=True)


@model_app.command("build")
def build_command(
    model: Annotated[Path, typer.Option(help="A YOLOX ONNX export (e.g. yolox_nano.onnx, yolox_s.onnx).")],
    out: Annotated[Path, typer.Option(help="Model repository directory to write (created).")],
    target: Annotated[
        str, typer.Option(help="cpu: Python backend + onnxruntime; gpu: official Triton container.")
    ] = "cpu",
    instances: Annotated[int, typer.Option(min=1, help="Model instances (cpu target).")] = 1,
    threads: Annotated[int, typer.Option(min=0, help="onnxruntime threads per instance; 0 = all cores.")] = 0,
) -> None:
    """Write a ready Triton model repository (yolox, yolox_jpeg, ...) for one target."""
    if target not in ("cpu", "gpu"):
        raise typer.BadParameter("must be 'cpu' or 'gpu'", param_hint="--target")
    if not model.is_file():
        raise typer.BadParameter(f"{model} is not a file", param_hint="--model")
    chosen: Target = "cpu" if target == "cpu" else "gpu"
    try:
        written = build(
            model, out, BuildOptions(target=chosen, instances=instances, intra_op_threads=threads)
        )
    except ModelBuildError as exc:
        console.print(f"[red]cannot build:[/red] {exc}")
        raise typer.Exit(1) from exc
    for name, folder in sorted(written.items()):
        console.print(f"wrote {name}: {folder}")
