"""The `pantau` command: the product's sub-commands (operator, ingest, model, detect) plus any that
another installed distribution registers in the `pantau.commands` entry-point group (the
development package adds dev, bench and demo).

Start-up cost matters (`pantau ingest` is a pod's entry point, `pantau --help` a user's first try):
sub-command modules import their heavy dependencies inside the command, and a plugin is imported
only when its own command runs, never to print help."""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from pantau.analytics.cli import analyse
from pantau.handlers.cli import operator
from pantau.ingest.cli import ingest
from pantau.triton.cli import detect, model_app

PLUGIN_GROUP = "pantau.commands"


# Typer may vendor its own click: contexts and commands are typed Any here so this module does not
# depend on which click that is.


class _PluginStub(TyperCommand):
    """Stands for a plugin's command in listings without importing it."""

    def __init__(self, entry: EntryPoint) -> None:
        source = entry.dist.name if entry.dist is not None else entry.module
        super().__init__(entry.name, help=f"Commands from {source} (see `pantau {entry.name} --help`).")
        self.entry = entry


class PantauGroup(TyperGroup):
    def _plugins(self) -> dict[str, EntryPoint]:
        return {e.name: e for e in entry_points(group=PLUGIN_GROUP) if e.name not in self.commands}

    def list_commands(self, ctx: Any) -> list[str]:
        return [*super().list_commands(ctx), *sorted(self._plugins())]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        found = super().get_command(ctx, cmd_name)
        if found is None and (entry := self._plugins().get(cmd_name)) is not None:
            return _PluginStub(entry)
        return found

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        name, command, rest = super().resolve_command(ctx, args)
        if isinstance(command, _PluginStub):  # about to run: now load the real one
            loaded: Any = command.entry.load()
            if not isinstance(loaded, typer.Typer):  # a plain function: a one-command app
                single = typer.Typer()
                single.command(command.entry.name)(loaded)
                loaded = single
            command = typer.main.get_command(loaded)
        return name, command, rest


app = typer.Typer(
    name="pantau", help="Pantau: CCTV analytics on Kubernetes.", no_args_is_help=True, cls=PantauGroup
)
app.add_typer(model_app, name="model")
app.command()(detect)
app.command()(operator)
app.command()(ingest)
app.command()(analyse)


if __name__ == "__main__":
    app()
