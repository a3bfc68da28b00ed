"""Validate a whole pipeline before anything loads a model, reporting every problem at once.

Two passes over the same data, both always run: the pipeline schema (``schema.py``), then each
component slot — its name resolved through the registries (with a did-you-mean) and its params
validated by that component's ``Params``. Each problem carries ``file:line:col`` and the key path.

Component params are validated with the pydantic context :data:`VALIDATION_CONTEXT`
(``{"check_files": True}``): a ``Params`` validator may then check what only the filesystem knows
(a local dataset file or model folder exists) so the problem surfaces here with the line of its
key, while code that builds params directly (tests, the trainer) is not tied to the disk.
"""

from __future__ import annotations

import importlib.metadata as md
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from cat_framework.components import Component, ComponentParams
from cat_framework.errors import CatError, UnknownComponentError
from cat_framework.pipeline.include import load_source
from cat_framework.pipeline.issues import Issue, PipelineValidationError
from cat_framework.pipeline.overrides import apply_overrides
from cat_framework.pipeline.schema import MODE_REQUIREMENTS, Eval, PipelineConfig
from cat_framework.pipeline.source import KeyPath, Source
from cat_framework.plugins import Plugins, default_plugins
from cat_framework.registry import suggest


@dataclass(frozen=True)
class ResolvedComponent:
    """A component slot of the pipeline: its class and validated params."""

    path: KeyPath
    kind: str
    name: str
    cls: type[Component]
    params: ComponentParams

    def build(self, **kwargs: Any) -> Component:
        component = self.cls(self.params, **kwargs)
        component.config_path = ".".join(str(k) for k in self.path)
        return component


@dataclass(frozen=True)
class Pipeline:
    """A validated pipeline: the schema object plus every resolved component."""

    config: PipelineConfig
    components: dict[KeyPath, ResolvedComponent]
    source: Source

    def component(self, *path: str | int) -> ResolvedComponent | None:
        return self.components.get(tuple(path))

    def resolved(self) -> dict[str, Any]:
        """The config with every component's params filled with defaults (JSON-compatible)."""
        data = self.config.model_dump(mode="json")
        for path, comp in self.components.items():
            target: Any = data
            for part in path[:-1]:
                target = target[part]
            selector = _SELECTORS[comp.kind]
            target[path[-1]] = {selector: comp.name, **comp.params.model_dump(mode="json")}
        return data


#: the pydantic validation context of component params at ``validate`` (see module docstring)
VALIDATION_CONTEXT: dict[str, Any] = {"check_files": True}

_SELECTORS = {
    "backend": "backend",
    "dataset": "dataset",
    "aggregator": "name",
    "reward_deriver": "name",
}
_KIND_WORDS = {
    "backend": "backend",
    "dataset": "dataset",
    "aggregator": "aggregator",
    "reward_deriver": "reward deriver",
}


def _get(data: Any, path: KeyPath) -> Any:
    for part in path:
        if (isinstance(data, dict) and part in data) or (
            isinstance(data, list) and isinstance(part, int) and part < len(data)
        ):
            data = data[part]
        else:
            return None
    return data


def _model_at(model: type[BaseModel] | None, path: Sequence[Any]) -> type[BaseModel] | None:
    """The pydantic model class that validates the mapping at ``path`` (for key suggestions)."""
    for part in path:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        model = _first_model(field.annotation)
    return model


def _first_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, (types.UnionType, typing._GenericAlias)) or typing.get_origin(
        annotation
    ):
        for arg in typing.get_args(annotation):
            found = _first_model(arg)
            if found is not None:
                return found
    return None


def _clean_loc(data: Any, loc: Sequence[Any]) -> KeyPath:
    """Drop pydantic's union/validator tags from an error location, keeping real keys."""
    out: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            out.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int):
            out.append(part)
            node = node[part] if part < len(node) else None
        elif i == len(loc) - 1 and isinstance(part, str) and "[" not in part:
            out.append(part)  # a missing key: report its name
            node = None
    return tuple(out)


def _describe(err: dict[str, Any], model: type[BaseModel] | None, key: Any) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        fields = sorted(model.model_fields) if model is not None else []
        hint = suggest(str(key), fields)
        msg = f"unknown key {key!r}."
        if hint:
            msg += f" Did you mean {hint!r}?"
        if fields:
            msg += f" Valid keys: {', '.join(fields)}."
        return msg
    if kind == "missing":
        return "required key is missing"
    if kind == "int_parsing_size":  # pydantic's text speaks of a string even for 1.0e+29
        limit = _upper_bound(model, key)
        return f"number too large{f': at most {limit}' if limit is not None else ''} (got {err.get('input')!r})"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        return msg[len("Value error, ") :]
    got = err.get("input")
    if got is not None and not isinstance(got, (dict, list)):
        msg += f" (got {got!r})"
    return msg


def _upper_bound(model: type[BaseModel] | None, key: Any) -> Any:
    """The ``le`` bound of field ``key`` of ``model``, if it has one."""
    field = model.model_fields.get(key) if model is not None and isinstance(key, str) else None
    for meta in field.metadata if field is not None else []:
        if getattr(meta, "le", None) is not None:
            return meta.le
    return None


def _pydantic_issues(
    source: Source, exc: ValidationError, prefix: KeyPath, root: type[BaseModel], data: Any
) -> list[Issue]:
    issues = []
    for err in exc.errors():
        loc = _clean_loc(data, err["loc"])
        model = _model_at(root, loc[:-1]) if loc else root
        key = loc[-1] if loc else None
        issues.append(source.issue((*prefix, *loc), _describe(err, model, key)))
    return issues


def _with_default_components(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the component slots the schema fills by default written out
    (``eval.aggregators: [single]``), so a default is resolved like a written component."""
    section = data.get("eval", {})
    if not isinstance(section, dict) or "aggregators" in section:
        return data
    defaults = [spec.model_dump() for spec in Eval().aggregators]
    return {**data, "eval": {**section, "aggregators": defaults}}


def _component_slots(data: dict[str, Any]) -> list[tuple[KeyPath, str]]:
    slots: list[tuple[KeyPath, str]] = [(("models", "policy"), "backend")]
    models = data.get("models") if isinstance(data.get("models"), dict) else {}
    for role in ("anchor", "judge"):
        if isinstance(models.get(role), dict):
            slots.append((("models", role), "backend"))
    for split in ("train", "eval"):
        slots.append((("data", split), "dataset"))
    slots += [(("aggregator",), "aggregator"), (("reward",), "reward_deriver")]
    slots.append((("trainer", "reference_fallback"), "aggregator"))
    slots.append((("eval", "scorer"), "reward_deriver"))
    aggs = _get(data, ("eval", "aggregators"))
    if isinstance(aggs, list):
        slots += [(("eval", "aggregators", i), "aggregator") for i in range(len(aggs))]
    return slots


def _resolve_slot(
    source: Source,
    plugins: Plugins,
    path: KeyPath,
    kind: str,
    issues: list[Issue],
    data: dict[str, Any],
) -> ResolvedComponent | None:
    raw = _get(data, path)
    selector = _SELECTORS[kind]
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = {"model": raw} if path == ("models", "policy") else {selector: raw}
    if not isinstance(raw, dict):
        return None  # the schema pass reports the type error
    name = raw.get(selector, "transformers" if kind == "backend" else None)
    if not isinstance(name, str):
        return None
    registry = plugins.registry(kind)
    try:
        cls = registry.get(name)
    except UnknownComponentError as exc:
        issues.append(source.issue((*path, selector), str(exc)))
        return None
    params = {k: v for k, v in raw.items() if k != selector}
    try:
        validated = cls.Params.model_validate(params, context=VALIDATION_CONTEXT)
    except ValidationError as exc:
        issues.extend(_pydantic_issues(source, exc, path, cls.Params, params))
        return None
    except CatError as exc:  # a plugin's validator raised a user-facing error directly
        issues.append(source.issue(path, str(exc)))
        return None
    except Exception as exc:  # a plugin's validator crashed: name it rather than crash
        issues.append(
            source.issue(
                path,
                f"the params check of {_KIND_WORDS[kind]} {name!r} failed "
                f"({type(exc).__name__}: {exc}); this is a bug in the plugin that registers it",
            )
        )
        return None
    return ResolvedComponent(path, kind, name, cls, validated)


def _task_issues(source: Source, comps: dict[KeyPath, ResolvedComponent]) -> list[Issue]:
    """Aggregators/rewards that are undefined for the dataset's task (e.g. majority on prose)."""
    issues = []

    def task_of(split: str) -> tuple[str, str] | None:
        ds = comps.get(("data", split))
        if ds is None:
            return None
        return getattr(ds.params, "task", None) or getattr(ds.cls, "task", "math"), ds.name

    for path, comp in comps.items():
        if comp.kind not in ("aggregator", "reward_deriver"):
            continue
        task = task_of("eval" if path[0] == "eval" else "train") or task_of("eval")
        if task is None:
            continue
        supported = getattr(comp.cls, "tasks", frozenset({"math", "freeform"}))
        if task[0] not in supported:
            issues.append(
                source.issue(
                    (*path, "name"),
                    f"{_KIND_WORDS[comp.kind]} {comp.name!r} works on "
                    f"{' and '.join(sorted(supported))} tasks only, but dataset {task[1]!r} is "
                    f"{task[0]}",
                )
            )
    return issues


def _required_plugins(source: Source, plugins: Plugins, requires: Iterable[Any]) -> list[Issue]:
    loaded = {(r.distribution or "").lower() for r in plugins.records if r.status == "loaded"}
    issues = []
    for i, req in enumerate(requires):
        if not isinstance(req, str):
            continue
        dist = req.split(">")[0].split("=")[0].split("<")[0].strip()
        try:
            md.version(dist)
        except md.PackageNotFoundError:
            issues.append(
                source.issue(
                    ("requires", i), f"plugin {dist!r} is not installed: pip install {req!r}"
                )
            )
            continue
        if dist.lower() not in loaded and dist.lower() != "cat-framework":
            issues.append(
                source.issue(
                    ("requires", i),
                    f"plugin {dist!r} is installed but not loaded; see `cat-framework plugins`",
                )
            )
    return issues


def validate_source(source: Source, plugins: Plugins | None = None) -> Pipeline:
    """Validate parsed pipeline data; raises :class:`PipelineValidationError` with every issue."""
    plugins = plugins or default_plugins()
    data = source.data
    issues: list[Issue] = []
    config: PipelineConfig | None = None
    try:
        config = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        issues.extend(_pydantic_issues(source, exc, (), PipelineConfig, data))

    comps: dict[KeyPath, ResolvedComponent] = {}
    slot_data = _with_default_components(data)
    for path, kind in _component_slots(slot_data):
        resolved = _resolve_slot(source, plugins, path, kind, issues, slot_data)
        if resolved is not None:
            comps[path] = resolved
    issues.extend(_task_issues(source, comps))
    eval_data = comps.get(("data", "eval"))
    if (
        eval_data is not None
        and (getattr(eval_data.params, "task", None) or eval_data.cls.task) == "freeform"
        and ("eval", "scorer") not in comps
        and _get(data, ("eval", "scorer")) is None
    ):
        issues.append(
            source.issue(
                ("eval", "scorer"),
                f"dataset {eval_data.name!r} is freeform: set eval.scorer to a reward deriver that "
                "grades against gold, e.g. `scorer: human_rubric`",
            )
        )

    mode = data.get("mode")
    for path, why in MODE_REQUIREMENTS.get(mode, []) if isinstance(mode, str) else []:
        if _get(data, path) is None:
            issues.append(source.issue(path, f"missing: {why}"))
    requires = data.get("requires")
    if isinstance(requires, list):
        issues.extend(_required_plugins(source, plugins, requires))

    if issues or config is None:
        raise PipelineValidationError(source.file, issues)
    return Pipeline(config=config, components=comps, source=source)


def load_pipeline(
    path: str | Path,
    overrides: Iterable[str] = (),
    plugins: Plugins | None = None,
    text: str | None = None,
) -> Pipeline:
    """Read, override (``--set``) and validate a pipeline file."""
    source = apply_overrides(load_source(path, text), overrides)
    return validate_source(source, plugins)
