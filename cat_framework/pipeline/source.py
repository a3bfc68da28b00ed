"""YAML text -> plain data plus a map from key paths to ``file:line:col``.

``yaml.safe_load`` semantics (no tags that build objects), but composed node by node so every
error can point at the line the user wrote. Values set with ``--set`` point at the override.
One file as written: a pipeline's ``include:`` is resolved over these by
:func:`cat_framework.pipeline.include.load_source`, after which each key points at the file it
came from.

A pipeline is a small hand-written file, so anything else is refused with one message before it
can cost time or memory: non-UTF-8 or binary files, anything but a regular file (``/dev/zero``
never ends, a FIFO blocks), files over :data:`MAX_FILE_BYTES` (counted while reading), nesting
deeper than :data:`MAX_DEPTH`, documents of more than :data:`MAX_VALUES` values, and documents
whose aliases expand to more (a ten-line "billion laughs" file otherwise exhausts memory).
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cat_framework.bounded import FileTooLargeError, NotRegularFileError, read_capped
from cat_framework.pipeline.issues import Issue, PipelineValidationError

KeyPath = tuple[str | int, ...]

#: the largest pipeline file read (real ones are a few KiB)
MAX_FILE_BYTES = 4 * 2**20
#: the deepest nesting of mappings and lists (real pipelines use fewer than 6 levels)
MAX_DEPTH = 64
#: the most values (scalars, mappings, lists) a document may expand to through aliases
MAX_VALUES = 100_000


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
    #: the file a key path came from when it is not ``file`` (a key of an included pipeline)
    files: dict[KeyPath, str] = field(default_factory=dict)

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
                return self.files.get(path[:n], self.file), pos[0], pos[1]
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


_TOO_DEEP = f"nested deeper than {MAX_DEPTH} levels; a pipeline needs only a few"


class _ShapeError(Exception):
    def __init__(self, node: yaml.Node, message: str) -> None:
        super().__init__(message)
        self.node = node


def _count_values(root: yaml.Node) -> None:
    """Refuse a document of more than :data:`MAX_VALUES` distinct values, aliases aside: such a
    file is not a pipeline, and telling it from an alias bomb gives the right message."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if len(seen) > MAX_VALUES:
            raise _ShapeError(
                node,
                f"the document holds more than {MAX_VALUES:,} values (keys, values and list "
                "items); a pipeline needs a few hundred: is this the right file?",
            )
        if isinstance(node, yaml.MappingNode):
            stack.extend(reversed([n for pair in node.value for n in pair]))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(reversed(node.value))


def _check_shape(root: yaml.Node) -> None:
    """Bound the size and depth of the document *after* alias expansion, without expanding it.

    Each node's expanded size and height are memoised (aliases share nodes), so the check costs
    one visit per distinct node; an alias to an enclosing anchor is a cycle and is refused.
    """
    _count_values(root)
    done: dict[int, tuple[int, int]] = {}  # id -> (expanded size, height)
    active: set[int] = set()

    def visit(node: yaml.Node, depth: int) -> tuple[int, int]:
        key = id(node)
        if key in done:
            size, height = done[key]
        elif key in active:
            raise _ShapeError(node, "an alias refers to a structure that contains it (a cycle)")
        elif isinstance(node, yaml.ScalarNode):
            return 1, 0
        elif depth > MAX_DEPTH:
            raise _ShapeError(node, _TOO_DEEP)
        else:
            active.add(key)
            if isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            else:
                children = list(node.value)
            size, height = 1, 0
            for child in children:
                child_size, child_height = visit(child, depth + 1)
                size += child_size
                height = max(height, child_height + 1)
                if size > MAX_VALUES:
                    raise _ShapeError(
                        node,
                        f"the document expands to more than {MAX_VALUES:,} values through "
                        "aliases (*name): refused as a likely alias bomb; write the values out "
                        "or use fewer nested aliases",
                    )
            active.discard(key)
            done[key] = size, height
        if depth + height > MAX_DEPTH:  # an alias to a deep structure, used deep down
            raise _ShapeError(node, _TOO_DEEP)
        return size, height

    visit(root, 0)


class _Builder:
    def __init__(self, file: str) -> None:
        self.file = file
        self.positions: dict[KeyPath, tuple[int, int]] = {}
        self.issues: list[Issue] = []
        self._constructor = yaml.SafeLoader("")  # only for scalar construction

    def _issue(self, node: yaml.Node, path: KeyPath, message: str) -> None:
        mark = node.start_mark
        self.issues.append(
            Issue(self.file, mark.line + 1, mark.column + 1, format_path(path), message)
        )

    def _scalar(self, node: yaml.Node, path: KeyPath) -> Any:
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError:
            raise
        except Exception as exc:  # e.g. "2020-13-45" as a date, "!!int 0xZZ"
            self._issue(node, path, f"invalid value {node.value!r}: {exc}")
            return None

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
                if not isinstance(key_node, yaml.ScalarNode):
                    self._issue(key_node, path, "a key must be a plain name, not a mapping or list")
                    continue
                key = self._scalar(key_node, path)
                if not isinstance(key, (str, int, float, bool)) or key is None:
                    key = str(key)
                child = (*path, key)
                if key in out:
                    self._issue(
                        key_node,
                        child,
                        f"duplicate key {key!r} (the earlier value would be silently ignored)",
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
        return self._scalar(node, path)


def _file_issue(file: str, message: str, line: int | None = None, col: int | None = None) -> Issue:
    return Issue(file, line, col, "", message)


def read_pipeline_text(path: str | Path) -> str:
    """The file as text; one issue naming the file (and the offending byte) if it is not."""
    file = str(path)
    try:
        data = read_capped(path, MAX_FILE_BYTES)
    except FileTooLargeError:
        raise PipelineValidationError(
            file,
            [
                _file_issue(
                    file,
                    f"more than {MAX_FILE_BYTES:,} bytes is too large for a pipeline file; is "
                    "this the right file?",
                )
            ],
        ) from None
    except NotRegularFileError as exc:  # refused before reading: /dev/zero never ends
        raise PipelineValidationError(
            file, [_file_issue(file, f"{exc.kind}, not a regular file: give a pipeline file")]
        ) from None
    except FileNotFoundError:
        raise PipelineValidationError(file, [_file_issue(file, "file not found")]) from None
    except IsADirectoryError:
        raise PipelineValidationError(
            file, [_file_issue(file, "is a folder; give the pipeline's .yaml file")]
        ) from None
    except OSError as exc:
        raise PipelineValidationError(
            file, [_file_issue(file, f"cannot read: {exc.strerror or exc}")]
        ) from None
    if data.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise PipelineValidationError(
            file, [_file_issue(file, "UTF-32 text; save the file as UTF-8", 1)]
        )
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise PipelineValidationError(
            file, [_file_issue(file, "UTF-16 text; save the file as UTF-8", 1)]
        )
    if b"\x00" in data:
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        raise PipelineValidationError(
            file,
            [_file_issue(file, "binary data (a NUL byte): a pipeline is a YAML text file", line)],
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise PipelineValidationError(
            file,
            [
                _file_issue(
                    file,
                    f"not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8",
                    line,
                    col,
                )
            ],
        ) from None


def parse_value(text: str) -> Any:
    """One YAML value (a ``--set`` value) under the same rules and bounds as a pipeline file;
    :class:`ValueError` with the reason otherwise."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is None:
            return None
        _check_shape(node)
        builder = _Builder("--set")
        value = builder.build(node, ())
    except yaml.YAMLError as exc:
        raise ValueError(_syntax_issue("--set", exc).message) from None
    except _ShapeError as exc:
        raise ValueError(str(exc)) from None
    except RecursionError:
        raise ValueError(_TOO_DEEP) from None
    if builder.issues:
        raise ValueError("; ".join(i.message for i in builder.issues))
    return value


def parse_source(path: str | Path, text: str | None = None) -> Source:
    """Parse one pipeline file as written (an ``include:`` key is kept as data)."""
    file = str(path)
    if text is None:
        text = read_pipeline_text(path)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            _check_shape(node)
    except yaml.YAMLError as exc:
        raise PipelineValidationError(file, [_syntax_issue(file, exc)]) from None
    except _ShapeError as exc:
        mark = exc.node.start_mark
        raise PipelineValidationError(
            file, [_file_issue(file, str(exc), mark.line + 1, mark.column + 1)]
        ) from None
    except RecursionError:  # the parser itself recursed too deep (thousands of levels)
        raise PipelineValidationError(
            file,
            [
                _file_issue(
                    file, f"nested deeper than {MAX_DEPTH} levels; a pipeline needs only a few"
                )
            ],
        ) from None
    if node is None:
        raise PipelineValidationError(
            file,
            [
                _file_issue(
                    file,
                    "the file is empty (or only comments); a pipeline needs at least name, mode "
                    "and models",
                )
            ],
        )
    builder = _Builder(file)
    try:
        data = builder.build(node, ())
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
