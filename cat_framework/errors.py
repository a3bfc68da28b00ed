"""Errors the user is meant to read.

Every error that reaches the CLI derives from :class:`CatError`; the CLI prints its message (no
traceback unless ``--debug``) and exits with its ``exit_code``.
"""

from __future__ import annotations

from typing import Any


class CatError(Exception):
    """Base of all user-facing errors; ``exit_code`` is what the CLI returns."""

    exit_code = 1


class ConfigError(CatError):
    """A pipeline or its overrides are invalid."""

    exit_code = 2


class ComponentClashError(CatError):
    """Two plugins registered the same component name."""


class UnknownComponentError(CatError, KeyError):
    """A name that no installed plugin registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class PluginLoadError(CatError):
    """A plugin could not be loaded (fatal only with ``CAT_STRICT_PLUGINS=1``)."""


class BackendError(CatError):
    """A backend failed in a way the user can act on (dead server, missing package...)."""


class PartialBatchError(BackendError):
    """Some requests of a batch failed for good (after the backend's own retries).
    ``results[i]`` is request i's completions, or ``None`` where it failed (``failed`` lists
    those indices, ``errors[i]`` says why), so finished work is not lost: judges keep the
    verdicts that arrived and count the rest as unscorable. Any backend may raise it."""

    def __init__(
        self,
        message: str,
        results: list[Any],
        failed: list[int],
        errors: list[BaseException | None] | None = None,
    ) -> None:
        super().__init__(message)
        self.results = results
        self.failed = failed
        self.errors = errors if errors is not None else [None] * len(results)


class OutputError(CatError):
    """A file the user asked for cannot be written (read-only folder, a file in the way...)."""


class NotARunError(CatError):
    """A directory given as a run holds none (see :func:`cat_framework.rundir.is_run_dir`)."""

    exit_code = 2


class NotSupportedError(CatError):
    """A component does not implement an optional capability (e.g. ``update_weights``)."""


#: the most characters of one error message shown or recorded (a hostile file can make a message
#: of megabytes: an alias bomb quoted back)
MAX_MESSAGE = 10_000


def cut_message(message: str, limit: int = MAX_MESSAGE) -> str:
    """``message``, bounded to ``limit`` characters (``--debug`` shows it whole)."""
    if len(message) <= limit:
        return message
    rest = len(message) - limit
    return f"{message[:limit]}... ({rest:,} more characters; --debug shows them)"
