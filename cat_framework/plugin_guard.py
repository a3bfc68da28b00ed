"""Keeping plugins in their box: capture what they print, describe how they died, blame them.

A plugin runs inside every command (its module is imported to list components), so its mistakes
must not become the framework's: text it prints would corrupt ``cat-framework plugins`` JSON, a
``sys.exit()`` would end the command, and an exception from its component would otherwise read
as a cat-framework bug. :func:`capture_stdout` and :func:`describe_failure` serve the loader;
:func:`find_culprit` maps a traceback back to the plugin (and distribution) whose code raised.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

#: the package of the built-in plugins; anything under it is "built-in"
BUILTIN_PACKAGE = "cat_plugins"


@dataclass
class Captured:
    """What a guarded block wrote to stdout (``text`` is set when the block ends)."""

    text: str = ""


def _flush(stream: Any) -> None:
    with contextlib.suppress(Exception):
        if stream is not None:
            stream.flush()


@contextlib.contextmanager
def capture_stdout() -> Iterator[Captured]:
    """Divert stdout, both ``sys.stdout`` and file descriptor 1, into :attr:`Captured.text`.

    The descriptor matters because ``print`` to ``sys.__stdout__``, ``os.write(1, ...)`` and
    C extensions bypass ``sys.stdout``. Where descriptor 1 cannot be redirected (closed, or an
    embedding without one), only ``sys.stdout`` is captured.
    """
    captured = Captured()
    buffer = io.StringIO()
    _flush(sys.stdout)
    _flush(sys.__stdout__)
    with tempfile.TemporaryFile() as sink:
        saved: int | None = None
        try:
            saved = os.dup(1)
            os.dup2(sink.fileno(), 1)
        except OSError:
            if saved is not None:
                os.close(saved)
            saved = None
        try:
            with contextlib.redirect_stdout(buffer):
                yield captured
        finally:
            _flush(sys.__stdout__)
            if saved is not None:
                os.dup2(saved, 1)
                os.close(saved)
            sink.seek(0)
            captured.text = buffer.getvalue() + sink.read().decode("utf-8", errors="replace")


def describe_failure(exc: BaseException) -> str:
    """``ValueError: bad`` for errors; ``called sys.exit(3)`` for an exit, which has no message."""
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r})"
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class Culprit:
    """The plugin whose code an exception escaped from."""

    plugin: str
    distribution: str | None
    version: str | None
    builtin: bool
    kind: str | None = None  # "aggregator", "reward_deriver", ...
    component: str | None = None

    @property
    def label(self) -> str:
        """``cat-boom (aggregator boom_vote)``: the distribution, else the plugin's name."""
        who = self.plugin if self.builtin else self.distribution or self.plugin
        if self.component:
            return f"{who} ({(self.kind or 'component').replace('_', ' ')} {self.component})"
        return who

    def message(self, exc: BaseException) -> str:
        """The CLI's one-paragraph error for ``exc``, naming who to report it to."""
        if self.builtin:
            return (
                f"error in built-in plugin {self.label}: {describe_failure(exc)}\n"
                "(an unexpected error in cat-framework's built-in plugins; rerun with --debug "
                "for the traceback and please report it to cat-framework)"
            )
        source = f"plugin {self.plugin!r}"
        if self.distribution:
            source += f" from {self.distribution} {self.version or ''}".rstrip()
        return (
            f"error in plugin {self.label}: {describe_failure(exc)}\n"
            f"(raised by the code of {source}, not by cat-framework: rerun with --debug for the "
            "traceback and report it to that plugin's authors; `cat-framework plugins` lists "
            "what is installed)"
        )


class PluginIdentity(Protocol):
    """Who a plugin is, as a culprit names it (a :class:`~cat_framework.plugins.PluginRecord`)."""

    name: str
    distribution: str | None
    version: str | None
    builtin: bool


@dataclass(frozen=True)
class Owner:
    """A module that belongs to a plugin: one of its components' (``component`` set) or, by
    package, any of its code."""

    module: str
    record: PluginIdentity
    kind: str | None = None
    component: str | None = None
    qualname: str | None = None  # of the component's class, to tell apart classes of one module


class OwnedModules(Protocol):
    """What :func:`find_culprit` needs of the loaded plugins: which modules belong to whom.
    :class:`~cat_framework.plugins.Plugins` answers it from its records and registries, so the
    guard, which the loader uses, only reads tracebacks and never imports the loader."""

    def owners(self) -> list[Owner]: ...


def _frames(exc: BaseException) -> Iterator[tuple[str, str]]:
    """``(module, code qualname)`` of the frames of ``exc`` and its causes, innermost first."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        tb: TracebackType | None = current.__traceback__
        frames = [f for f, _ in traceback.walk_tb(tb)]
        for frame in reversed(frames):
            module = frame.f_globals.get("__name__")
            if isinstance(module, str):
                yield module, getattr(frame.f_code, "co_qualname", frame.f_code.co_name)
        current = current.__cause__ or current.__context__


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def find_culprit(exc: BaseException, plugins: OwnedModules | None) -> Culprit | None:
    """The plugin whose module the innermost plugin frame of ``exc`` (or its causes) is in.

    Component modules are matched exactly (by class when one module holds several), a plugin's
    other modules by its entry point's top-level package. ``None``: no plugin code on the stack.
    """
    owners = plugins.owners() if plugins is not None else []
    found: Owner | None = None
    for module, qualname in _frames(exc):
        exact = [o for o in owners if o.component and o.module == module]
        by_class = [o for o in exact if o.qualname and qualname.startswith(o.qualname + ".")]
        if by_class or len(exact) == 1:
            hit = (by_class or exact)[0]
            if found is None or found.record is hit.record:
                found = hit
                break
            continue
        if found is None:
            packaged = [o for o in owners if not o.component and _inside(module, o.module)]
            if exact or packaged:
                found = (exact or packaged)[0]
                found = Owner(found.module, found.record)  # a plugin, component still unknown
            elif _inside(module, BUILTIN_PACKAGE):
                return Culprit(module, "cat-framework", None, builtin=True)
    if found is None:
        return None
    r = found.record
    return Culprit(r.name, r.distribution, r.version, r.builtin, found.kind, found.component)


__all__ = [
    "Captured",
    "Culprit",
    "OwnedModules",
    "Owner",
    "PluginIdentity",
    "capture_stdout",
    "describe_failure",
    "find_culprit",
]
