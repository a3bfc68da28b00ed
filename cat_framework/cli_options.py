"""Options several ``cat-framework`` commands share, defined once (the command modules cannot
import ``cli``: it imports them)."""

from __future__ import annotations

import click

#: ``--set KEY.PATH=VALUE``: pipeline overrides, as ``run`` and ``validate`` take them
set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY.PATH=VALUE",
    help="Override a pipeline value (YAML syntax), e.g. --set rollouts.n=4. Repeatable.",
)

__all__ = ["set_option"]
