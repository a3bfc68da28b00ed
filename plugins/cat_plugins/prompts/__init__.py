"""Prompt templates: one file each, ``$name`` placeholders (``string.Template``).

``$``-placeholders leave LaTeX braces (``\\boxed{}``) alone. A pipeline may override any template
with a path to its own file; :func:`load_template` accepts either a built-in name or a path.
"""

from __future__ import annotations

import functools
import string
from pathlib import Path

from cat_framework.errors import ConfigError

PROMPTS_DIR = Path(__file__).resolve().parent


def builtin_templates() -> list[str]:
    return sorted(p.stem for p in PROMPTS_DIR.glob("*.txt"))


@functools.cache
def load_template(name_or_path: str) -> string.Template:
    """A built-in template by name (e.g. ``synthesis_reasoning``) or any file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROMPTS_DIR / f"{name_or_path}.txt"
    if not path.is_file():
        raise ConfigError(
            f"prompt template {name_or_path!r} not found (looked for {path}); built-in templates: "
            f"{', '.join(builtin_templates())}, or give a path to a .txt file"
        )
    return string.Template(path.read_text(encoding="utf-8"))


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
