"""``reference/cli.md``: every command of the ``cat-framework`` CLI with its ``--help``."""

from __future__ import annotations

from collections.abc import Iterator

import click

from refgen.markdown import GENERATED_NOTE, md_doc

# -- reference/cli.md ----------------------------------------------------------------------------


def iter_commands(
    group: click.Command, path: tuple[str, ...] = ("cat-framework",)
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """Every command of the CLI, depth first, with its full name."""
    yield path, group
    if isinstance(group, click.Group):
        for name in sorted(group.commands):
            yield from iter_commands(group.commands[name], (*path, name))


def help_text(path: tuple[str, ...]) -> str:
    """What ``cat-framework ... --help`` prints, at a fixed width."""
    from cat_framework.cli import cli

    ctx = click.Context(cli, info_name=path[0], terminal_width=100, max_content_width=100)
    cmd: click.Command = cli
    for name in path[1:]:
        assert isinstance(cmd, click.Group)
        cmd = cmd.commands[name]
        ctx = click.Context(
            cmd, info_name=name, parent=ctx, terminal_width=100, max_content_width=100
        )
    return cmd.get_help(ctx)


def render_cli(problems: list[str]) -> str:
    from cat_framework import cli as cli_module

    lines = [
        GENERATED_NOTE,
        "",
        "# CLI reference",
        "",
        "Generated from the `click` group `cat_framework.cli:cli`: each section is exactly what "
        "`--help` prints. `python -m cat_framework` is the same command.",
        "",
        md_doc(cli_module.__doc__, link=False),
        "",
    ]
    for path, cmd in iter_commands(cli_module.cli):
        name = " ".join(path)
        anchor = "-".join(path[1:]) or "cat-framework"
        if not cmd.help:
            problems.append(f"command {name!r}: no help text")
        for param in cmd.params:
            if isinstance(param, click.Option) and not param.help:
                problems.append(f"command {name!r}: option {param.opts[0]} has no help")
        lines += [
            f"## `{name}` {{#{anchor}}}",
            "",
            md_doc(cmd.help, link=False) if cmd.help else "**Undocumented.**",
            "",
            "```text",
            help_text(path).rstrip(),
            "```",
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"
