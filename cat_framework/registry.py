"""``Registry[T]``: component name -> class (or lazy ``"module:Class"``), with provenance.

One registry per component kind. Registration never silently overwrites: a second registration
of a name raises naming both sources. Lookups of unknown names raise with a did-you-mean, the
installed names and what to do about it.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from cat_framework.errors import ComponentClashError, UnknownComponentError
from cat_framework.plugin_guard import capture_stdout, describe_failure

T = TypeVar("T")


@dataclass(frozen=True)
class Provenance:
    """Where a registration came from."""

    plugin: str
    distribution: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        if self.distribution:
            return f"plugin {self.plugin!r} ({self.distribution} {self.version or '?'})"
        return f"plugin {self.plugin!r}"


@dataclass
class Entry(Generic[T]):
    """One registered component; ``target`` is the class or its lazy ``"module:Class"`` path."""

    name: str
    target: type[T] | str
    source: Provenance
    _resolved: type[T] | None = field(default=None, repr=False)

    @property
    def is_lazy(self) -> bool:
        return isinstance(self.target, str) and self._resolved is None

    @property
    def origin(self) -> str:
        """``module:Class`` of the implementation, without importing it."""
        if isinstance(self.target, str):
            return self.target
        return f"{self.target.__module__}:{self.target.__qualname__}"


def suggest(name: str, candidates: list[str]) -> str | None:
    """The closest candidate to ``name``, if any is close enough to be a likely typo."""
    matches = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return matches[0] if matches else None


class Registry(Generic[T]):
    """Name -> component for one ``kind`` (e.g. ``"aggregator"``), subclasses of ``base``."""

    def __init__(self, kind: str, base: type[T]) -> None:
        self.kind = kind
        self.base = base
        self._entries: dict[str, Entry[T]] = {}

    def add(self, name: str, target: type[T] | str, source: Provenance) -> None:
        """Register ``target`` as ``name``; raises :class:`ComponentClashError` on a clash."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if isinstance(target, str):
            if ":" not in target:
                raise ValueError(
                    f"lazy {self.kind} target must look like 'package.module:Class', got {target!r}"
                )
        elif not (isinstance(target, type) and issubclass(target, self.base)):
            raise TypeError(
                f"{self.kind} {name!r} from {source} must be a subclass of "
                f"{self.base.__name__} or a 'module:Class' string, got {target!r}"
            )
        existing = self._entries.get(name)
        if existing is not None:
            raise ComponentClashError(
                f"{self.kind} {name!r} is registered twice: by {existing.source} and by {source}. "
                f"Uninstall one of them, or ask the author of the second to rename it "
                f"(keeping {existing.source}'s)."
            )
        self._entries[name] = Entry(name, target, source)

    def get(self, name: str) -> type[T]:
        """The class registered as ``name``, importing a lazy target on first use."""
        entry = self.entry(name)
        if entry._resolved is None:
            entry._resolved = self._resolve(entry)
        return entry._resolved

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownComponentError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        names = self.names()
        hint = suggest(name, names)
        parts = [f"unknown {self.kind} {name!r}."]
        if hint:
            parts.append(f"Did you mean {hint!r}?")
        parts.append(f"Installed: {', '.join(names) if names else '(none)'}.")
        parts.append(
            "If it comes from a plugin, install that plugin; "
            "`cat-framework plugins` lists what is installed and what failed to load."
        )
        return " ".join(parts)

    def _resolve(self, entry: Entry[T]) -> type[T]:
        if not isinstance(entry.target, str):
            return entry.target
        module_name, _, attr = entry.target.partition(":")
        # the import runs plugin code: its prints go to stderr (stdout may carry JSON), and
        # neither an error nor a sys.exit() in it ends the command
        with capture_stdout() as printed:
            try:
                obj: object = importlib.import_module(module_name)
                for part in attr.split("."):
                    obj = getattr(obj, part)
                failure = None
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # import errors of optional deps are the common case
                failure = exc
        if printed.text:
            sys.stderr.write(printed.text)
        if failure is not None:
            raise UnknownComponentError(
                f"{self.kind} {entry.name!r} ({entry.target}, from {entry.source}) could not be "
                f"imported: {describe_failure(failure)}"
            ) from failure
        if not (isinstance(obj, type) and issubclass(obj, self.base)):
            raise UnknownComponentError(
                f"{self.kind} {entry.name!r}: {entry.target} is not a {self.base.__name__} subclass"
            )
        return obj  # type: ignore[return-value]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries[n] for n in self.names())

    def __len__(self) -> int:
        return len(self._entries)
