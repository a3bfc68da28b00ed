"""Prompt templates: one file each, ``$name`` placeholders (``string.Template``).

``$``-placeholders leave LaTeX braces (``\\boxed{}``) alone. A pipeline may override any template
with a path to its own file; :func:`load_template` accepts either a built-in name or a path.
:func:`check_template` lets a component's ``Params`` refuse a template with a placeholder it does
not fill at ``validate`` time, instead of at the first call mid-run.
"""

from __future__ import annotations

import functools
import string
from pathlib import Path

from cat_framework.errors import ConfigError

PROMPTS_DIR = Path(__file__).resolve().parent


class TemplateError(ConfigError, ValueError):
    """A template that cannot be used. A :class:`ConfigError` for the CLI, and a ``ValueError``
    so that, raised in a pydantic validator, it becomes an issue at the template key's line."""


def builtin_templates() -> list[str]:
    return sorted(p.stem for p in PROMPTS_DIR.glob("*.txt"))


def load_template(name_or_path: str) -> string.Template:
    """A built-in template by name (e.g. ``synthesis_reasoning``) or any file by path."""
    path = Path(name_or_path).expanduser()
    if not path.suffix:
        path = PROMPTS_DIR / f"{name_or_path}.txt"
    if not path.is_file():
        raise TemplateError(
            f"prompt template {name_or_path!r} not found (looked for {path}); built-in templates: "
            f"{', '.join(builtin_templates())}, or give a path to a .txt file"
        )
    path = path.resolve()
    try:
        # keyed by the absolute path and its mtime: a relative name read from another working
        # directory, or an edited file, is read afresh
        return _read_template(str(path), path.stat().st_mtime_ns)
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"prompt template {name_or_path!r} cannot be read: {exc}") from None


@functools.lru_cache(maxsize=256)
def _read_template(path: str, mtime_ns: int) -> string.Template:
    return string.Template(Path(path).read_text(encoding="utf-8"))


def template_fields(name_or_path: str) -> set[str]:
    """The ``$placeholders`` a template uses; :class:`TemplateError` on a malformed ``$``."""
    text = load_template(name_or_path).template
    fields = set()
    for m in string.Template.pattern.finditer(text):
        if m.group("invalid") is not None:
            line = text.count("\n", 0, m.start("invalid")) + 1
            raise TemplateError(
                f"prompt template {name_or_path!r} line {line}: a '$' that starts no placeholder; "
                "write a literal $ as $$"
            )
        name = m.group("named") or m.group("braced")
        if name:
            fields.add(name)
    return fields


def check_template(name_or_path: str, *, required: set[str], allowed: set[str], param: str) -> None:
    """:class:`TemplateError` when a template lacks a needed placeholder or uses one that is not
    provided (e.g. ``$question`` in a question-blind synthesis template)."""
    fields = template_fields(name_or_path)
    missing, extra = required - fields, fields - allowed
    if missing or extra:
        problems = []
        if missing:
            problems.append(f"lacks {', '.join('$' + f for f in sorted(missing))}")
        if extra:
            problems.append(
                f"uses {', '.join('$' + f for f in sorted(extra))}, which is not provided here "
                f"(available: {', '.join('$' + f for f in sorted(allowed))})"
            )
        raise TemplateError(f"{param} {name_or_path!r} {' and '.join(problems)}")


def render(name_or_path: str, **values: str) -> str:
    """Fill a template; a placeholder without a value is an error naming the template."""
    try:
        return load_template(name_or_path).substitute(**values)
    except KeyError as exc:
        raise ConfigError(
            f"prompt template {name_or_path!r} uses ${exc.args[0]}, which is not provided; "
            f"available: {', '.join('$' + k for k in values)}"
        ) from None
    except ValueError as exc:
        raise ConfigError(
            f"prompt template {name_or_path!r} is malformed ({exc}); write a literal $ as $$"
        ) from None


__all__ = [
    "PROMPTS_DIR",
    "TemplateError",
    "builtin_templates",
    "check_template",
    "load_template",
    "render",
    "template_fields",
]
