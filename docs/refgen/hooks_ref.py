"""``reference/hooks.md``: every hookspec, with its signature and docstring."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from refgen.markdown import (
    GENERATED_NOTE,
    _ann,
    _inline,
    _signature,
    first_paragraph,
    hookspecs,
    md_doc,
    md_text,
)

# -- reference/hooks.md --------------------------------------------------------------------------


def hook_signature(func: Callable[..., Any]) -> str:
    """``def name(arg: Type, ...) -> Return`` as written in the source."""
    sig = inspect.signature(func)
    params = []
    for p in sig.parameters.values():
        text = p.name
        if p.annotation is not inspect.Parameter.empty:
            text += f": {_ann(p.annotation)}"
        if p.default is not inspect.Parameter.empty:
            text += f" = {p.default!r}"
        params.append(text)
    ret = ""
    if sig.return_annotation is not inspect.Signature.empty:
        ret = f" -> {_ann(sig.return_annotation)}"
    return f"def {func.__name__}({', '.join(params)}){ret}"


def render_hooks(problems: list[str]) -> str:
    from cat_framework import hookspecs as module

    specs = hookspecs()
    groups = {
        "Component hooks": [f for f in specs if f.__name__.startswith("register_")],
        "Lifecycle hooks (observers)": [f for f in specs if not f.__name__.startswith("register_")],
    }
    lines = [
        GENERATED_NOTE,
        "",
        "# Hook reference",
        "",
        "Generated from `cat_framework/hookspecs.py`. The [plugin tutorial](../plugins/tutorial.md) "
        "implements one of these hooks step by step.",
        "",
        md_doc(module.__doc__),
        "",
        "| hook | called |",
        "|---|---|",
    ]
    for f in specs:
        summary = md_text(_inline(first_paragraph(f.__doc__)))
        lines.append(f"| [`{f.__name__}`](#{f.__name__}) | {summary} |")
    lines.append("")
    for title, funcs in groups.items():
        lines += [f"## {title}", ""]
        for f in funcs:
            if not (f.__doc__ or "").strip():
                problems.append(f"hookspec {f.__name__}: no docstring")
            opts = getattr(f, f"{module.PROJECT}_spec")
            flags = [k for k in ("firstresult", "historic") if opts.get(k)]
            lines += [
                f"### `{f.__name__}` {{#{f.__name__}}}",
                "",
                "```python",
                "@hookimpl",
                hook_signature(f),
                "```",
                "",
            ]
            if flags:
                lines += [f"pluggy options: {', '.join(flags)}.", ""]
            lines += [md_doc(f.__doc__) or "**Undocumented.**", ""]
    register = module.Register
    lines += [
        "## The `register` callback {#register}",
        "",
        "```python",
        f"register{_signature(register.__call__, skip_first=True)}",
        "```",
        "",
        md_doc(register.__doc__),
        "",
    ]
    return "\n".join(lines).rstrip() + "\n"
