"""`pantau dev ...`: start, inspect and stop the local stack."""

from __future__ import annotations

import signal
import threading
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pantau_dev.procs import StackError
from pantau_dev.settings import DevSettings
from pantau_dev.stack import DevStack, StackInfo

dev_app = typer.Typer(
    add_completion=False,
    help="The local stack: control plane, a node (containerd, kubelet), kwok, Triton, Jaeger.",
    no_args_is_help=True,
)
console = Console(stderr=True)


def _stack() -> DevStack:
    return DevStack(DevSettings())


def _print_info(info: StackInfo) -> None:
    table = Table(title="pantau dev stack", show_header=False)
    for key, value in info.model_dump(exclude={"processes"}).items():
        table.add_row(key, str(value))
    down = sorted(n for n, alive in info.processes.items() if not alive)
    table.add_row(
        "processes", f"{sum(info.processes.values())} running" + (f"; stopped: {down}" if down else "")
    )
    Console().print(table)
    Console().print(f"export KUBECONFIG={info.kubeconfig}")


@dev_app.command()
def up(
    wait: Annotated[
        bool, typer.Option(help="Stay in the foreground until Ctrl-C, then stop the stack.")
    ] = False,
) -> None:
    """Start the stack in the background (idempotent) and print where everything is."""
    stack = _stack()
    try:
        with console.status("starting the local stack ..."):
            info = stack.up()
    except StackError as exc:
        console.print(f"[red]stack failed to start:[/red] {exc}")
        raise typer.Exit(1) from exc
    _print_info(info)
    if wait:
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        console.print("stack is up; press Ctrl-C to stop it")
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        finally:
            stopped = stack.down()
            console.print(f"stopped {len(stopped)} processes")


@dev_app.command()
def down(purge: Annotated[bool, typer.Option(help="Also delete the state directory.")] = False) -> None:
    """Stop every process the stack started, pods included."""
    stopped = _stack().down(purge=purge)
    console.print(f"stopped {len(stopped)} processes: {', '.join(stopped) or '-'}")


@dev_app.command()
def status(json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Print addresses, paths and which processes are running."""
    info = _stack().status()
    if json_:
        print(info.model_dump_json(indent=2))
    else:
        _print_info(info)


@dev_app.command("lint-chart")
def lint_chart() -> None:
    """helm lint --strict, and helm template applied with kubectl --dry-run=server into a namespace that
    enforces restricted Pod Security, on a throwaway control plane (part of `make lint`)."""
    from pantau_dev.chart import lint_on_throwaway_stack

    with console.status("linting charts/pantau on a throwaway control plane ..."):
        problems = lint_on_throwaway_stack(DevSettings())
    for problem in problems:
        console.print(f"[red]{problem}[/red]")
    if problems:
        raise typer.Exit(1)
    console.print("charts/pantau: lint and server-side dry run clean")
