"""``cat-framework data NAME``: print the prompts a dataset component yields, as JSON lines.

So that a field mapping (or a download, or a split) can be checked in seconds before a run
spends GPU hours on it. Gold answers and rubrics are labels: only whether they are present is
shown, their values only with ``--show-gold``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click
import yaml
from pydantic import ValidationError

from cat_framework.errors import ConfigError
from cat_framework.types import Prompt


def parse_settings(settings: tuple[str, ...]) -> dict[str, Any]:
    """``("key=value", ...)`` -> params; each value is read as YAML (``limit=3`` is a number)."""
    params: dict[str, Any] = {}
    for item in settings:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise click.UsageError(f"--set {item!r}: expected KEY=VALUE, e.g. --set split=train")
        try:
            params[key.strip()] = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError as e:
            mark = getattr(e, "problem", None) or "not valid YAML"
            raise click.UsageError(f"--set {item!r}: the value is {mark}") from None
    return params


def validation_message(name: str, cls: type, error: ValidationError) -> str:
    """One line per problem in ``--set``, with a did-you-mean for an unknown key."""
    from cat_framework.registry import suggest

    keys = sorted(cls.Params.model_fields)
    lines = []
    for e in error.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "params"
        if e["type"] == "extra_forbidden":
            hint = suggest(loc, keys)
            lines.append(
                f"unknown parameter {loc!r}"
                + (f" (did you mean {hint!r}?)" if hint else "")
                + f"; known: {', '.join(keys)}"
            )
        else:
            lines.append(f"{loc}: {e['msg']}")
    return f"dataset {name!r}: " + "; ".join(lines)


def prompt_line(prompt: Prompt, show_gold: bool) -> dict[str, Any]:
    """What ``data`` prints for one prompt."""
    line: dict[str, Any] = {
        "id": prompt.id,
        "messages": [dict(m) for m in prompt.messages],
        "has_gold_answer": prompt.gold_answer is not None,
        "has_rubric": bool(prompt.rubric),
    }
    if show_gold:
        line["gold_answer"] = prompt.gold_answer
        line["rubric"] = (
            None
            if prompt.rubric is None
            else [{"criterion": c.text, "points": c.points} for c in prompt.rubric]
        )
    return line


@click.command("data")
@click.argument("name")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most N prompts.")
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    help="A dataset parameter (YAML value), e.g. --set path=my.parquet. Repeatable.",
)
@click.option("--show-gold", is_flag=True, help="Also print gold answers and rubrics.")
def data_cmd(name: str, limit: int | None, settings: tuple[str, ...], show_gold: bool) -> None:
    """Print the prompts of dataset NAME as JSON lines (id, messages, has_gold_answer,
    has_rubric), e.g. `cat-framework data hf --set path=my.parquet --set question_field=q`."""
    from cat_framework.pipeline.validate import VALIDATION_CONTEXT
    from cat_framework.plugins import default_plugins

    cls = default_plugins().registry("dataset").get(name)
    params = parse_settings(settings)
    if limit is not None:
        params["limit"] = limit
    try:
        validated = cls.Params.model_validate(params, context=VALIDATION_CONTEXT)
    except ValidationError as e:
        raise ConfigError(validation_message(name, cls, e)) from None
    prompts = cls(validated).load()
    try:
        for prompt in prompts:
            click.echo(json.dumps(prompt_line(prompt, show_gold), ensure_ascii=False))
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    click.echo(f"{name}: {len(prompts)} prompt{'' if len(prompts) == 1 else 's'}", err=True)


__all__ = ["data_cmd", "parse_settings", "prompt_line"]
