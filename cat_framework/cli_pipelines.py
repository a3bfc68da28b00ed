"""``cat-framework pipelines``: the pipelines that come with the package, by name.

Registered on the main command group in :mod:`cat_framework.cli`; `run` and `validate` accept
the same names.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from cat_framework.pipeline.shipped import (
    ShippedPipeline,
    find_shipped,
    shipped_pipelines,
    unknown_name_message,
)


def _summary(pipe: ShippedPipeline) -> dict[str, Any]:
    """Name, mode, one-line description and hardware; the mode is read through ``include:``."""
    from cat_framework.errors import CatError
    from cat_framework.pipeline.include import load_source

    try:
        mode = load_source(pipe.path).data.get("mode", "?")
    except CatError as exc:  # a broken shipped file is a bug: show it, keep listing the rest
        mode = f"? ({str(exc).splitlines()[-1].strip()})"
    return {
        "name": pipe.name,
        "mode": mode,
        "description": pipe.description(),
        "hardware": pipe.hardware(),
        "file": str(pipe.path),
    }


@click.group("pipelines", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="JSON lines (with each file's path).")
@click.pass_context
def pipelines_cmd(ctx: click.Context, as_json: bool) -> None:
    """List the shipped pipelines (name, mode, description, hardware); run one by name with
    `cat-framework run NAME`, copy one with `cat-framework pipelines show NAME > my.yaml`."""
    if ctx.invoked_subcommand is not None:
        return
    rows = [_summary(p) for p in shipped_pipelines().values()]
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    if not rows:
        click.echo("no shipped pipelines in this installation", err=True)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="shipped pipelines (cat-framework run NAME)", title_justify="left")
    for col in ("name", "mode", "description", "hardware"):
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(row["name"], row["mode"], row["description"], row["hardware"])
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # piped: wide rows rather than 80-column folds
    console.print(table)


@pipelines_cmd.command("show")
@click.argument("name")
def show_cmd(name: str) -> None:
    """Print shipped pipeline NAME as written, to read or to save and edit
    (`cat-framework pipelines show quickstart > my.yaml`)."""
    found = find_shipped(name)
    if found is None:
        click.echo(f"error: {unknown_name_message(name, file_too=False)}", err=True)
        sys.exit(2)
    click.echo(found.text(), nl=False)
