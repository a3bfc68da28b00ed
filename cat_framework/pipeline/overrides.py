"""``--set key.path=value`` overrides, applied to a loaded pipeline before validation.

Values are parsed as YAML scalars/flow collections (``4`` is an int, ``[a, b]`` a list,
``null`` None), so an override means exactly what the same text would mean in the file. Integer
path parts index lists (``eval.aggregators.0.name=majority``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cat_framework.errors import ConfigError
from cat_framework.pipeline.source import KeyPath, Source, parse_value


def parse_override(text: str) -> tuple[KeyPath, Any]:
    """``"a.b.0=3"`` -> ``(("a", "b", 0), 3)``."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--set {text!r}: expected KEY.PATH=VALUE, e.g. --set rollouts.n=4")
    try:
        value = parse_value(raw) if raw.strip() else ""
    except ValueError as exc:
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise ConfigError(f"--set {shown!r}: {exc}") from None
    path: KeyPath = tuple(int(p) if p.isdigit() else p for p in key.split("."))
    return path, value


def apply_overrides(source: Source, overrides: Iterable[str]) -> Source:
    """Apply each override in order, creating missing mappings; records where values came from."""
    for text in overrides:
        path, value = parse_override(text)
        node: Any = source.data
        for i, part in enumerate(path[:-1]):
            nxt = path[i + 1]
            if isinstance(node, list) and isinstance(part, int):
                if part >= len(node):
                    raise ConfigError(f"--set {text!r}: index {part} is out of range")
                node = node[part]
                continue
            if not isinstance(node, dict):
                raise ConfigError(
                    f"--set {text!r}: {'.'.join(map(str, path[:i]))} is not a mapping"
                )
            if node.get(part) is None:
                node[part] = [] if isinstance(nxt, int) else {}
            node = node[part]
        last = path[-1]
        if isinstance(node, list) and isinstance(last, int):
            if last > len(node):
                raise ConfigError(f"--set {text!r}: index {last} is out of range")
            if last == len(node):
                node.append(value)
            else:
                node[last] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"--set {text!r}: cannot set a key inside a {type(node).__name__}")
        source.overrides[path] = f"--set {text}"
    return source
