"""``cat-framework serve-command PIPELINE``: the commands that start the servers a pipeline's
backends expect (a policy on ``vllm serve`` replicas, an anchor or judge endpoint), exactly as
they need them, one per line.

Each backend says what it needs (:meth:`cat_framework.components.Backend.server_commands`): the
core names no backend. A server that several model slots share is printed once (they must
ask for the same command).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from cat_framework.cli_options import set_option
from cat_framework.components import Backend, ServerCommand
from cat_framework.errors import CatError

if TYPE_CHECKING:
    from cat_framework.pipeline import Pipeline


def server_commands(pipeline: Pipeline) -> list[tuple[str, ServerCommand]]:
    """(model slot, command) for every server the pipeline's backends expect, first use only."""
    seen: dict[str, tuple[str, ServerCommand]] = {}
    for path, comp in pipeline.components.items():
        if comp.kind != "backend" or not issubclass(comp.cls, Backend):
            continue
        slot = ".".join(str(p) for p in path)
        for command in comp.cls.server_commands(comp.params):
            first = seen.setdefault(command.url, (slot, command))
            if first[1] != command:
                raise CatError(
                    f"{first[0]} and {slot} need different servers at {command.url}: give one "
                    "of them another URL, or the same serve settings"
                )
    return list(seen.values())


@click.command("serve-command")
@click.argument("pipeline", type=click.Path(dir_okay=False))
@set_option
def serve_command_cmd(pipeline: str, overrides: tuple[str, ...]) -> None:
    """Print the command line(s) that start the servers PIPELINE expects (POSIX shell, one per
    server, with their environment); nothing is started."""
    from cat_framework.pipeline import PipelineValidationError, load_pipeline
    from cat_framework.pipeline.shipped import resolve_pipeline
    from cat_framework.plugins import default_plugins

    try:
        loaded = load_pipeline(resolve_pipeline(pipeline), overrides, plugins=default_plugins())
        found = server_commands(loaded)
    except PipelineValidationError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    except CatError as exc:
        click.echo(f"{pipeline}: {exc}", err=True)
        sys.exit(2)
    if not found:
        click.echo(f"# {pipeline}: no backend of this pipeline expects a server to be running")
        return
    for slot, command in found:
        click.echo(f"# {slot}: {command.url}")
        click.echo(command.shell())


__all__ = ["serve_command_cmd", "server_commands"]
