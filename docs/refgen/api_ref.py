"""``reference/api.md``: the public names re-exported by ``cat_framework/__init__.py``."""

from __future__ import annotations

import dataclasses
import inspect

import pluggy
from pydantic import BaseModel

from refgen.markdown import (
    GENERATED_NOTE,
    _api_anchor,
    _inline,
    _signature,
    first_paragraph,
    md_doc,
)

# -- reference/api.md ----------------------------------------------------------------------------

API_SECTIONS = (
    ("Components", ("cat_framework.components",)),
    ("Data types", ("cat_framework.types",)),
    ("Plugins and registries", ("cat_framework.plugins", "cat_framework.registry", "pluggy.")),
    ("Errors", ("cat_framework.errors",)),
)


def _class_members(cls: type) -> list[str]:
    """Public members defined by the class itself or by a private base (``_Serializable``)."""
    lines: list[str] = []
    own = dict(vars(cls))
    for base in cls.__mro__[1:]:
        if base.__name__.startswith("_") and base.__module__.startswith("cat_framework"):
            own.update({k: v for k, v in vars(base).items() if k not in own})
    for name, member in own.items():
        if name.startswith("_") or name in ("Params", "model_config"):
            continue
        if isinstance(member, property):
            doc = first_paragraph(member.fget.__doc__) if member.fget else ""
            lines.append(f"- `{name}` (property)" + (f": {_inline(doc)}" if doc else ""))
        elif isinstance(member, (classmethod, staticmethod)):
            func = member.__func__
            doc = first_paragraph(func.__doc__)
            lines.append(
                f"- `{name}{_signature(func, skip_first=isinstance(member, classmethod))}`"
                + (f": {_inline(doc)}" if doc else "")
            )
        elif inspect.isfunction(member):
            doc = first_paragraph(member.__doc__)
            lines.append(
                f"- `{name}{_signature(member, skip_first=True)}`"
                + (f": {_inline(doc)}" if doc else "")
            )
        elif isinstance(
            member, (str, int, float, bool, frozenset)
        ) and not dataclasses.is_dataclass(cls):
            shown = sorted(member) if isinstance(member, frozenset) else member
            lines.append(f"- `{name} = {shown!r}`")
    return lines


def render_api(problems: list[str]) -> str:
    import cat_framework

    names = list(cat_framework.__all__)
    by_section: dict[str, list[str]] = {title: [] for title, _ in API_SECTIONS}
    other: list[str] = []
    for name in names:
        obj = getattr(cat_framework, name)
        module = getattr(obj, "__module__", None) or type(obj).__module__
        where = (module, type(obj).__module__)
        for title, modules in API_SECTIONS:
            if any(w == m or (m.endswith(".") and w.startswith(m)) for w in where for m in modules):
                by_section[title].append(name)
                break
        else:
            other.append(name)
    lines = [
        GENERATED_NOTE,
        "",
        "# Python API",
        "",
        "The public names of `cat_framework` (its `__all__`), generated from their docstrings. "
        "Import them from the package root: `from cat_framework import Aggregator, hookimpl`.",
        "",
        md_doc(cat_framework.__doc__),
        "",
    ]
    for title, members in [*by_section.items(), ("Version", other)]:
        if not members:
            continue
        lines += [f"## {title}", ""]
        for name in members:
            obj = getattr(cat_framework, name)
            lines += [f"### `{name}` {{#{_api_anchor(name)}}}", ""]
            if isinstance(obj, (pluggy.HookimplMarker, pluggy.HookspecMarker)):
                what = (
                    "HookimplMarker" if isinstance(obj, pluggy.HookimplMarker) else "HookspecMarker"
                )
                use = (
                    "Decorate a plugin's hook implementations with `@hookimpl`."
                    if what == "HookimplMarker"
                    else "Marks the hook specifications in `cat_framework.hookspecs`."
                )
                lines += [
                    f'`pluggy.{what}("{obj.project_name}")`. {use} See the '
                    "[hook reference](hooks.md).",
                    "",
                ]
                continue
            if isinstance(obj, str):
                lines += [f"`{name} = {obj!r}`", ""]
                continue
            if inspect.isclass(obj):
                bases = [
                    b.__name__
                    for b in obj.__bases__
                    if b is not object and not b.__name__.startswith("_")
                ]
                code = [f"class {name}" + (f"({', '.join(bases)})" if bases else "")]
                if dataclasses.is_dataclass(obj):
                    frozen = obj.__dataclass_params__.frozen  # type: ignore[attr-defined]
                    code.insert(0, "@dataclass(frozen=True)" if frozen else "@dataclass")
                if not issubclass(obj, BaseException) and not issubclass(obj, BaseModel):
                    code.append(f"{name}{_signature(obj, returns=False)}")
                lines += ["```python", *code, "```", ""]
            elif callable(obj):
                lines += ["```python", f"def {name}{_signature(obj)}", "```", ""]
            doc = obj.__doc__ if inspect.isclass(obj) or callable(obj) else None
            if not doc or not doc.strip():
                problems.append(f"public name {name}: no docstring")
            lines += [md_doc(doc) or "**Undocumented.**", ""]
            if inspect.isclass(obj):
                members_md = _class_members(obj)
                if members_md:
                    lines += ["Members:", "", *members_md, ""]
    return "\n".join(lines).rstrip() + "\n"
