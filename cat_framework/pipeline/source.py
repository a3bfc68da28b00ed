"""YAML text -> plain data plus a map from key paths to ``file:line:col``.

``yaml.safe_load`` semantics (no tags that build objects), but composed node by node so every
error can point at the line the user wrote. Values set with ``--set`` point at the override.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cat_framework.pipeline.issues import Issue, PipelineValidationError

KeyPath = tuple[str | int, ...]


def format_path(path: Sequence[str | int]) -> str:
    """``("eval", "aggregators", 0, "name")`` -> ``eval.aggregators[0].name``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


@dataclass
class Source:
    """A pipeline's data and where each key came from."""

    file: str
    data: Any
    positions: dict[KeyPath, tuple[int, int]] = field(default_factory=dict)
    overrides: dict[KeyPath, str] = field(default_factory=dict)

    def where(self, path: Sequence[str | int]) -> tuple[str, int | None, int | None]:
        """``(file_or_override, line, col)`` of ``path`` or, failing that, its nearest ancestor."""
        path = tuple(path)
        for n in range(len(path), -1, -1):
            prefix = path[:n]
            if prefix in self.overrides:
                return self.overrides[prefix], None, None
        for n in range(len(path), -1, -1):
            pos = self.positions.get(path[:n])
            if pos is not None:
                return self.file, pos[0], pos[1]
        return self.file, None, None

    def issue(self, path: Sequence[str | int], message: str) -> Issue:
        file, line, col = self.where(path)
        return Issue(file=file, line=line, column=col, path=format_path(path), message=message)


def _syntax_issue(file: str, exc: yaml.YAMLError) -> Issue:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    message = f"YAML syntax error: {problem}" + (f" ({context})" if context else "")
    return Issue(
        file=file,
        line=mark.line + 1 if mark else None,
        column=mark.column + 1 if mark else None,
        path="",
        message=message + ". Check the indentation and the ':' after each key.",
    )


_PLAIN_TAGS = {"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"}


class _Builder:
    def __init__(self, file: str) -> None:
        self.file = file
        self.positions: dict[KeyPath, tuple[int, int]] = {}
        self.issues: list[Issue] = []
        self._constructor = yaml.SafeLoader("")  # only for scalar construction

    def build(self, node: yaml.Node, path: KeyPath) -> Any:
        self.positions.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _PLAIN_TAGS:
            raise yaml.constructor.ConstructorError(
                None, None, f"tag {node.tag!r} is not allowed in a pipeline", node.start_mark
            )
        if isinstance(node, yaml.MappingNode):
            self._constructor.flatten_mapping(node)
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self._constructor.construct_object(key_node, deep=True)
                if not isinstance(key, (str, int, float, bool)) or key is None:
                    key = str(key)
                child = (*path, key)
                if key in out:
                    self.issues.append(
                        Issue(
                            self.file,
                            key_node.start_mark.line + 1,
                            key_node.start_mark.column + 1,
                            format_path(child),
                            f"duplicate key {key!r} (the earlier value would be silently ignored)",
                        )
                    )
                # a key's own line is where users look for it
                self.positions[child] = (
                    key_node.start_mark.line + 1,
                    key_node.start_mark.column + 1,
                )
                out[key] = self.build(value_node, child)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self._constructor.construct_object(node, deep=True)


def load_source(path: str | Path, text: str | None = None) -> Source:
    """Parse a pipeline file; syntax errors raise :class:`PipelineValidationError`."""
    file = str(path)
    if text is None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise PipelineValidationError(
                file, [Issue(file, None, None, "", "file not found")]
            ) from None
        except OSError as exc:
            raise PipelineValidationError(
                file, [Issue(file, None, None, "", f"cannot read: {exc}")]
            ) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise PipelineValidationError(file, [_syntax_issue(file, exc)]) from None
    builder = _Builder(file)
    try:
        data = builder.build(node, ()) if node is not None else {}
    except yaml.YAMLError as exc:  # e.g. unknown tags such as !!python/object
        raise PipelineValidationError(file, [_syntax_issue(file, exc)]) from None
    if builder.issues:
        raise PipelineValidationError(file, builder.issues)
    if not isinstance(data, dict):
        raise PipelineValidationError(
            file,
            [
                Issue(
                    file,
                    1,
                    1,
                    "",
                    f"a pipeline must be a mapping of keys, got {type(data).__name__}",
                )
            ],
        )
    return Source(file=file, data=data, positions=builder.positions)
