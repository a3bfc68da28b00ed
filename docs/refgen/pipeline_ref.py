"""``reference/pipeline.md``: the pipeline schema and every registered component's ``Params``."""

from __future__ import annotations

import enum
import json
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from refgen.markdown import (
    GENERATED_NOTE,
    KIND_ORDER,
    KIND_TITLES,
    first_paragraph,
    md_doc,
    md_text,
)

SPEC_TYPES = {
    "BackendSpec": "[backend spec](#backends)",
    "DatasetSpec": "[dataset spec](#datasets)",
    "NamedSpec": "[component spec](#component-slots)",
}
_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


def fmt_type(annotation: Any, models: dict[type, str] | None = None) -> str:
    """A field's type in YAML terms, without ``|`` (Markdown tables)."""
    models = models or {}
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    if annotation is Any:
        return "any"
    if origin is typing.Literal:
        return "one of " + ", ".join(
            f"`{json.dumps(a) if not isinstance(a, str) else a}`" for a in args
        )
    if origin in (typing.Union, types.UnionType):
        return " or ".join(fmt_type(a, models) for a in args)
    if origin in (list, tuple, set, frozenset):
        return f"list of {fmt_type(args[0], models)}" if args else "list"
    if origin is dict or annotation is dict:
        return "mapping"
    if isinstance(annotation, type) and annotation.__name__ in SPEC_TYPES:
        return SPEC_TYPES[annotation.__name__]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        anchor = models.get(annotation)
        return f"[mapping](#{anchor})" if anchor else "mapping"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(f"`{e.value}`" for e in annotation)
    return f"`{getattr(annotation, '__name__', str(annotation))}`"


def _constraints(field: FieldInfo) -> list[str]:
    out = []
    for meta in field.metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(meta, attr, None)
            if value is not None and isinstance(
                meta,
                (annotated_types.Ge, annotated_types.Gt, annotated_types.Le, annotated_types.Lt),
            ):
                out.append(f"{sign} {value}")
        pattern = getattr(meta, "pattern", None)
        if isinstance(pattern, str):
            out.append(f"matches `{pattern}`")
        for attr, word in (("min_length", "min length"), ("max_length", "max length")):
            value = getattr(meta, attr, None)
            if isinstance(value, int):
                out.append(f"{word} {value}")
    return out


def _yaml_value(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude_defaults=True)
        if set(value) == {"name"}:
            return value["name"]
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return value if value else '""'
    return json.dumps(value)


def fmt_default(field: FieldInfo, models: dict[type, str] | None = None) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel) and type(value) in (models or {}):
            return "see section"
    else:
        value = field.default
    if value is PydanticUndefined:
        return ""
    return f"`{_yaml_value(value)}`"


def _model_of(annotation: Any, want: Callable[[type], bool]) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel) and want(annotation):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg, want)
        if found is not None:
            return found
    return None


def field_rows(
    model: type[BaseModel],
    prefix: str,
    problems: list[str],
    models: dict[type, str] | None = None,
    fallback: Callable[[str, FieldInfo], str | None] | None = None,
) -> list[str]:
    """Table rows (``| key | type | default | description |``) of a model's fields."""
    rows = []
    for name, field in model.model_fields.items():
        description = field.description or (fallback(name, field) if fallback else None)
        if description:
            description = md_text(description)
        else:
            problems.append(f"{prefix}{name}: no description")
            description = "**undocumented**"
        typ = fmt_type(field.annotation, models)
        limits = _constraints(field)
        if limits:
            typ += " (" + ", ".join(limits) + ")"
        rows.append(f"| `{name}` | {typ} | {fmt_default(field, models)} | {description} |")
    return rows


TABLE_HEAD = ["| key | type | default | description |", "|---|---|---|---|"]


# -- reference/pipeline.md -----------------------------------------------------------------------


def _schema_sections() -> list[tuple[str, type[BaseModel]]]:
    """(key path, model) of the pipeline schema's nested sections, depth first."""
    from cat_framework.pipeline.schema import ComponentSpec, PipelineConfig

    out: list[tuple[str, type[BaseModel]]] = []

    def walk(path: str, model: type[BaseModel]) -> None:
        out.append((path, model))
        for name, field in model.model_fields.items():
            sub = _model_of(field.annotation, lambda m: not issubclass(m, ComponentSpec))
            if sub is not None:
                walk(f"{path}.{name}" if path else name, sub)

    walk("", PipelineConfig)
    return out


def component_entries(plugins: Any) -> Iterator[tuple[str, Any, type | None, str | None]]:
    """(kind, registry entry, class or None, import error or None) of every component."""
    for kind in KIND_ORDER:
        registry = plugins.registry(kind)
        for entry in registry:
            try:
                yield kind, entry, registry.get(entry.name), None
            except Exception as exc:  # a lazy target whose import fails
                yield kind, entry, None, f"{type(exc).__name__}: {exc}"


def _component_anchor(kind: str, name: str) -> str:
    return f"{kind.replace('_', '-')}-{name.replace('_', '-')}"


def _nested_param_models(params: type[BaseModel]) -> list[tuple[str, type[BaseModel]]]:
    out = []
    for name, field in params.model_fields.items():
        sub = _model_of(field.annotation, lambda m: True)
        if sub is not None:
            out.append((name, sub))
    return out


def _selector_example(kind: str, name: str, cls: type) -> str:
    selector = KIND_TITLES[kind][1]
    fields = cls.Params.model_fields
    required = [n for n, f in fields.items() if f.is_required()]
    params = "".join(f", {n}: ..." for n in required)
    if kind == "backend":
        return f"models:\n  policy: {{backend: {name}{params or ', model: ...'}}}"
    if kind == "dataset":
        return f"data:\n  eval: {{dataset: {name}{params}}}"
    key = "aggregator" if kind == "aggregator" else "reward"
    return f"{key}: {{{selector}: {name}{params}}}"


def render_pipeline(plugins: Any, problems: list[str]) -> str:
    """The pipeline reference: schema sections, then every component with its params."""
    from cat_framework.pipeline import schema

    sections = _schema_sections()
    anchors = {
        model: ("top-level" if not path else path.replace(".", "-")) for path, model in sections
    }

    def section_doc(_name: str, field: FieldInfo) -> str | None:
        """A section's row: its model's docstring, else a pointer to its own table."""
        sub = _model_of(field.annotation, lambda m: True)
        if sub is None or sub not in anchors:
            return None
        return first_paragraph(sub.__doc__) if sub.__doc__ else "The keys in the section below."

    lines = [
        GENERATED_NOTE,
        "",
        "# Pipeline reference",
        "",
        "Every key a pipeline file accepts, generated from `cat_framework/pipeline/schema.py` and "
        "from the `Params` model of every built-in component. Unknown keys are errors everywhere. "
        "`cat-framework components` prints the same parameters for the components installed on "
        "your machine, third-party plugins included. The [pipelines guide](../pipelines.md) "
        "explains how to write a pipeline.",
        "",
        md_doc(schema.__doc__, link=False),
        "",
    ]
    for path, model in sections:
        title = "Top-level keys" if not path else f"`{path}`"
        lines += [f"## {title} {{#{anchors[model]}}}", ""]
        if model.__doc__ and path:
            lines += [md_doc(model.__doc__, link=False), ""]
        lines += [
            *TABLE_HEAD,
            *field_rows(model, f"{path}." if path else "", problems, anchors, section_doc),
            "",
        ]
        if path == "models":
            lines += [
                "A role is a backend spec (`backend:` selects a [backend](#backends), every other "
                "key is that backend's parameter; a bare string is the policy's `model`) or a "
                "reference to another role:",
                "",
                "| role | may reference |",
                "|---|---|",
                *(
                    f"| `{role}` | {', '.join(f'`{c}`' for c in choices)} |"
                    for role, choices in schema.ROLE_CHOICES.items()
                ),
                "",
            ]
        if path == "data":
            lines += [
                "Each split is a dataset spec: `dataset:` selects a [dataset](#datasets); every "
                "other key is that dataset's parameter. A bare string is the dataset's name.",
                "",
            ]
    lines += [
        "## Component slots {#component-slots}",
        "",
        "| key | kind | selector key | shorthand |",
        "|---|---|---|---|",
        "| `models.policy`, `models.anchor`, `models.judge` | [backend](#backends) | `backend` "
        "(default `transformers`) | policy: `policy: MODEL` means `{model: MODEL}` |",
        "| `data.train`, `data.eval` | [dataset](#datasets) | `dataset` | `eval: gsm8k` |",
        "| `aggregator`, `eval.aggregators[i]` | [aggregator](#aggregators) | `name` | "
        "`aggregator: synthesis` |",
        "| `reward`, `eval.scorer` | [reward deriver](#reward-derivers) | `name` | "
        "`reward: programmatic` |",
        "",
        "## What each mode needs {#modes}",
        "",
        "| mode | required keys |",
        "|---|---|",
    ]
    for mode, needs in schema.MODE_REQUIREMENTS.items():
        keys = ", ".join(f"`{'.'.join(p)}`" for p, _ in needs)
        lines.append(f"| `{mode}` | {keys} |")
    lines += [""]

    entries = list(component_entries(plugins))
    for kind in KIND_ORDER:
        title, selector, where = KIND_TITLES[kind]
        lines += [
            f"## {title} {{#{title.lower().replace(' ', '-')}}}",
            "",
            f"Selected with `{selector}:` at {', '.join(f'`{w}`' for w in where.split(' / '))}.",
            "",
        ]
        for k, entry, cls, error in entries:
            if k != kind:
                continue
            lines += [f"### `{entry.name}` {{#{_component_anchor(kind, entry.name)}}}", ""]
            meta = f"Plugin `{entry.source.plugin}`, class `{entry.origin}`"
            if entry.is_lazy or isinstance(entry.target, str):
                meta += " (registered lazily: imported only when a pipeline uses it)"
            if cls is None:
                problems.append(f"{kind} {entry.name}: cannot be imported ({error})")
                lines += [meta + ".", "", f"!!! failure\n    Not importable here: {error}", ""]
                continue
            if kind == "dataset":
                meta += f"; task `{cls.task}`"
            elif hasattr(cls, "tasks"):
                meta += f"; tasks: {', '.join(f'`{t}`' for t in sorted(cls.tasks))}"
            if not cls.__doc__:
                problems.append(f"{kind} {entry.name}: the class has no docstring")
            lines += [
                md_doc(cls.__doc__, link=False) or "**Undocumented.**",
                "",
                meta + ".",
                "",
                "```yaml",
                _selector_example(kind, entry.name, cls),
                "```",
                "",
            ]
            fields = cls.Params.model_fields
            if not fields:
                lines += ["No parameters.", ""]
                continue
            lines += [*TABLE_HEAD, *field_rows(cls.Params, f"{kind} {entry.name}: ", problems), ""]
            for sub_name, sub in _nested_param_models(cls.Params):
                lines += [f"Keys of `{sub_name}`:", ""]
                lines += [
                    *TABLE_HEAD,
                    *field_rows(sub, f"{kind} {entry.name}: {sub_name}.", problems),
                    "",
                ]
    return "\n".join(lines).rstrip() + "\n"
