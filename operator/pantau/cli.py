"""The `pantau` command: operator, ingest, dev tools, demo and benchmarks are sub-commands."""

from __future__ import annotations

import typer

from pantau.bench.cli import bench_app
from pantau.demo.cli import demo
from pantau.dev.cli import dev_app
from pantau.handlers.cli import operator
from pantau.ingest.cli import ingest
from pantau.triton.cli import detect, model_app

app = typer.Typer(name="pantau", help="Pantau: CCTV analytics on Kubernetes.", no_args_is_help=True)
app.add_typer(dev_app, name="dev")
app.add_typer(model_app, name="model")
app.add_typer(bench_app, name="bench")
app.command()(detect)
app.command()(operator)
app.command()(ingest)
app.command()(demo)


if __name__ == "__main__":
    app()
