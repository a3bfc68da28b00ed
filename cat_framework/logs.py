"""structlog, configured once: readable lines on stderr for people, JSON lines in the run dir.

``configure_logging()`` is called by the CLI at start; ``attach_run_log(path)`` adds the run's
``log.jsonl`` sink when a run directory exists. Library users who never call either get
structlog's defaults.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

import structlog

from cat_framework.confine import inside_run
from cat_framework.scrub import scrub

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class _JsonTee:
    """A processor that writes each event as a JSON line to the run's log file, then passes it on."""

    def __init__(self) -> None:
        self._file: TextIO | None = None
        self._lock = threading.Lock()

    def open(self, path: Path) -> None:
        self.close()
        path.parent.mkdir(parents=True, exist_ok=True)
        path = inside_run(path.parent, path.name)  # never appends through a link
        self._file = path.open("a", encoding="utf-8", buffering=1)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __call__(self, logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
        if self._file is not None:
            line = json.dumps(event, default=str, ensure_ascii=False)
            with self._lock:
                self._file.write(line + "\n")
        return event


def _scrubbed(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrubbed(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrubbed(v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return scrub(str(value))  # an exception or a path is written as its text: scrub that


def _scrub_event(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Secrets and URL credentials masked in every line, on the console and in ``log.jsonl``
    (:mod:`cat_framework.scrub`): a log line may quote a server's error or a URL."""
    return {k: _scrubbed(v) for k, v in event.items()}


_tee = _JsonTee()
_configured = False


class _CurrentStderr:
    """Whatever ``sys.stderr`` is *now*: a stream captured at configuration time may be closed
    later (a test harness's capture, a redirected CLI call made in-process)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Console rendering on ``stream`` (stderr) at ``level``; idempotent."""
    global _configured
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=False),
            _scrub_event,
            _tee,
            structlog.dev.ConsoleRenderer(colors=(stream or sys.stderr).isatty()),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=stream or _CurrentStderr()),
        cache_logger_on_first_use=False,
    )
    _configured = True


def attach_run_log(path: str | Path) -> None:
    """Also write every event as JSON to ``path`` (the run's ``log.jsonl``)."""
    if not _configured:
        configure_logging()
    _tee.open(Path(path))


def detach_run_log() -> None:
    _tee.close()
