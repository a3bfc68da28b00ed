"""``include:``: a pipeline built on others, overriding only what differs.

.. code-block:: yaml

    include: healthbench-rubric-rl      # a shipped name, or a path relative to this file
    name: healthbench-judge-ablation
    reward: judge

Plain data composition (never code: no ``!function``). Each included pipeline (a string, or a
list applied in order) is read with its own includes, then this file's keys are merged over it:
mappings merge key by key, everything else (scalars, lists) replaces. A component mapping that
names a *different* component (another ``name:``, ``backend:`` or ``dataset:``) replaces the
included one whole, since one component's params mean nothing to another. Every key remembers
the file and line it came from, so errors point at the file that set it. Cycles are refused
with the chain.

Includes are bounded in depth (:data:`MAX_INCLUDE_DEPTH`) and in total: a few one-line files
that each include the next ten times would otherwise mean 10^8 reads. At most
:data:`MAX_INCLUDES` included files (each include counts, repeats too) and
:data:`MAX_TOTAL_BYTES` bytes, the including file's own among them, are read per pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cat_framework.pipeline.issues import PipelineValidationError
from cat_framework.pipeline.shipped import find_shipped, looks_like_name, unknown_name_message
from cat_framework.pipeline.source import KeyPath, Source, parse_source, read_pipeline_text

KEY = "include"
#: the deepest chain of includes (real pipelines use one level)
MAX_INCLUDE_DEPTH = 16
#: the most included files one pipeline reads in all (real pipelines include one or two)
MAX_INCLUDES = 64
#: the most bytes one pipeline and everything it includes may hold
MAX_TOTAL_BYTES = 16 * 2**20
#: keys whose value names the component a mapping configures
SELECTORS = ("name", "backend", "dataset")
_MISSING = object()


@dataclass
class IncludeBudget:
    """What one pipeline has read so far: included files and bytes (its own included)."""

    files: int = 0
    size: int = 0

    def read(self, source: Source, key: KeyPath, path: Path) -> str:
        """The text of the included ``path``, counted; refused past the totals."""
        self.files += 1
        if self.files > MAX_INCLUDES:
            raise _fail(
                source,
                key,
                f"more than {MAX_INCLUDES} included files in all (every include counts, repeated "
                "ones too); a pipeline needs a few: include each file once",
            )
        try:
            text = read_pipeline_text(path)
        except PipelineValidationError as exc:  # one issue: the file, and line if any
            raise _fail(source, key, f"cannot include {exc.issues[0]}") from None
        self.size += len(text.encode("utf-8"))
        if self.size > MAX_TOTAL_BYTES:
            raise _fail(
                source,
                key,
                f"the pipeline and its includes hold more than {MAX_TOTAL_BYTES:,} bytes in all; "
                "is this the right file?",
            )
        return text


def _fail(source: Source, path: KeyPath, message: str) -> PipelineValidationError:
    return PipelineValidationError(source.file, [source.issue(path, message)])


def _targets(source: Source) -> list[tuple[KeyPath, str]]:
    raw = source.data[KEY]
    items = raw if isinstance(raw, list) else [raw]
    if not items or not all(isinstance(v, str) and v.strip() for v in items):
        raise _fail(
            source,
            (KEY,),
            "include takes a pipeline file (relative to this file) or a shipped pipeline name, "
            f"or a list of them; got {raw!r}",
        )
    if isinstance(raw, list):
        return [((KEY, i), v) for i, v in enumerate(items)]
    return [((KEY,), raw)]


def _locate(source: Source, key: KeyPath, target: str) -> Path:
    """A relative path (from the including file's folder) if that file exists, else a shipped
    pipeline name; a written-out copy of a shipped pipeline thus still finds what it includes."""
    candidate = Path(source.file).parent / target
    if candidate.exists():
        return candidate
    shipped = find_shipped(target)
    if shipped is not None:
        return shipped.path
    if looks_like_name(target) and not target.endswith((".yaml", ".yml")):
        why = unknown_name_message(target)
    else:
        why = f"no such file ({candidate})."
    raise _fail(source, key, f"include {target!r}: {why}")


def expand_includes(
    source: Source,
    chain: tuple[tuple[Path, str], ...] = (),
    budget: IncludeBudget | None = None,
) -> Source:
    """``source`` with its ``include:`` resolved and merged (recursively); unchanged without one.

    ``chain`` holds the files being included above this one, to refuse cycles; ``budget`` counts
    what the whole pipeline has read (see the module docstring).
    """
    chain = chain or ((Path(source.file).resolve(), source.file),)
    budget = budget if budget is not None else IncludeBudget()
    if not isinstance(source.data, dict) or KEY not in source.data:
        return source
    base: Source | None = None
    for key, target in _targets(source):
        path = _locate(source, key, target)
        resolved = path.resolve()
        seen = [real for real, _ in chain]
        if resolved in seen:
            names = [shown for _, shown in chain[seen.index(resolved) :]]
            raise _fail(
                source,
                key,
                f"include cycle: {' -> '.join([*names, str(path)])}; a pipeline cannot include "
                "itself, directly or through others",
            )
        if len(chain) >= MAX_INCLUDE_DEPTH:
            raise _fail(source, key, f"includes nested deeper than {MAX_INCLUDE_DEPTH} files")
        try:
            text = budget.read(source, key, path)
            included = expand_includes(
                parse_source(path, text), (*chain, (resolved, str(path))), budget
            )
        except PipelineValidationError as exc:  # the issues name the included file and line
            raise PipelineValidationError(source.file, exc.issues) from None
        base = included if base is None else merge_sources(base, included)
    assert base is not None
    own = {k: v for k, v in source.data.items() if k != KEY}
    top = Source(
        file=source.file,
        data=own,
        positions={p: at for p, at in source.positions.items() if p[:1] != (KEY,)},
        files=source.files,
    )
    return merge_sources(base, top)


def load_source(path: str | Path, text: str | None = None) -> Source:
    """Parse a pipeline file and the pipelines it includes; every problem raises
    :class:`PipelineValidationError`."""
    if text is None:
        text = read_pipeline_text(path)
    budget = IncludeBudget(size=len(text.encode("utf-8")))
    return expand_includes(parse_source(path, text), budget=budget)


def _names_other_component(base: dict[Any, Any], top: dict[Any, Any]) -> bool:
    return any(k in base and k in top and base[k] != top[k] for k in SELECTORS)


def merge(base: Any, top: Any, root: bool = True) -> Any:
    """``top`` over ``base``: mappings merge, everything else replaces (see module docstring)."""
    if not (isinstance(base, dict) and isinstance(top, dict)):
        return top
    if not root and _names_other_component(base, top):
        return top
    out = dict(base)
    for key, value in top.items():
        out[key] = merge(base[key], value, root=False) if key in base else value
    return out


def merge_sources(base: Source, top: Source) -> Source:
    """The merged data, each key path keeping the position and file of the source it came from."""
    data = merge(base.data, top.data)
    merged = Source(file=top.file, data=data)

    def attribute(value: Any, top_value: Any, path: KeyPath) -> None:
        src = base if top_value is _MISSING else top
        if path in src.positions:
            merged.positions[path] = src.positions[path]
            file = src.files.get(path, src.file)
            if file != merged.file:
                merged.files[path] = file
        if isinstance(value, dict):
            for key, child in value.items():
                sub = top_value.get(key, _MISSING) if isinstance(top_value, dict) else _MISSING
                attribute(child, sub, (*path, key))
        elif isinstance(value, list):
            for i, child in enumerate(value):
                sub = top_value[i] if isinstance(top_value, list) else _MISSING
                attribute(child, sub, (*path, i))

    attribute(data, top.data, ())
    return merged


__all__ = [
    "KEY",
    "MAX_INCLUDES",
    "MAX_INCLUDE_DEPTH",
    "MAX_TOTAL_BYTES",
    "IncludeBudget",
    "expand_includes",
    "load_source",
    "merge",
    "merge_sources",
]
