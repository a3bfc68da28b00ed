"""Live progress of a run, so that no run ever looks hung.

On a terminal: a rich bar over optimizer steps (or evaluation batches) with a column saying what
the step is doing now and for how long (``rollouts 0:41``, ``teacher``, ``update``). When output
is not a terminal (piped, CI, a log file), the bar is replaced by log lines: one per finished
step and a heartbeat every :data:`HEARTBEAT_S` seconds, so a piped run is never silent for 30 s.

The engine only announces what it is doing with :func:`phase` and iterates evaluation batches
through :func:`track`; both are no-ops when no progress display is active (library use, tests,
non-main processes), so the engine never needs to know whether anyone is watching.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

import structlog

SHOWN = ("reward/mean", "kl", "loss", "time/step")
#: seconds between heartbeat log lines when output is not a terminal (under 30: never 30 s silent)
HEARTBEAT_S = 25.0

log = structlog.get_logger("cat_framework.progress")
T = TypeVar("T")
_active: list[LiveProgress] = []


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


class _ConsoleFile:
    """A text file that prints through a rich console (above a live display)."""

    def __init__(self, console: Any) -> None:
        self.console = console

    def write(self, text: str) -> int:
        from rich.text import Text

        if text.strip():
            self.console.print(Text.from_ansi(text.rstrip("\n")), soft_wrap=True)
        return len(text)

    def flush(self) -> None:
        pass


class LiveProgress:
    """A progress display over ``total`` units of work named ``label`` (a context manager).

    ``console`` (a rich Console; stderr by default) decides terminal or not; ``interval`` is the
    heartbeat period when it is not a terminal.
    """

    def __init__(
        self,
        label: str,
        total: int | None,
        start: int = 0,
        *,
        enabled: bool = True,
        interval: float = HEARTBEAT_S,
        console: Any = None,
    ) -> None:
        self.label, self.total, self.completed = label, total, start
        self.enabled, self.interval, self.console = enabled, interval, console
        self.phase, self.prefix, self.info = "", "", ""
        self.started = self.phase_since = time.monotonic()
        self._progress: Any = None
        self._task: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ display
    def __enter__(self) -> LiveProgress:
        if not self.enabled:
            return self
        from rich.console import Console

        self.console = self.console or Console(stderr=True)
        if self.console.is_terminal:
            self._start_bar()
        else:
            self._thread = threading.Thread(target=self._beat, name="cat-heartbeat", daemon=True)
            self._thread.start()
        _active.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self in _active:
            _active.remove(self)
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._progress is not None:
            structlog.configure(logger_factory=self._saved_factory)
            self._progress.__exit__(*exc)

    def _start_bar(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            TextColumn(f"[bold]{self.label}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[doing]}"),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            transient=False,
        )
        self._progress.__enter__()
        self._task = self._progress.add_task(
            self.label, total=self.total, completed=self.completed, doing="", info=""
        )
        # log lines go through the console, above the bar: written straight to stderr they
        # would land inside the live region and garble it
        self._saved_factory = structlog.get_config()["logger_factory"]
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(_ConsoleFile(self.console)))

    def _doing(self) -> str:
        what = (self.prefix + self.phase).rstrip(" ·")
        return f"{what} {_clock(time.monotonic() - self.phase_since)}" if what else ""

    def _refresh(self) -> None:
        if self._progress is not None:
            self._progress.update(
                self._task, completed=self.completed, doing=self._doing(), info=self.info
            )

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            log.info(
                "still working",
                on=self.label,
                done=f"{self.completed}/{self.total if self.total is not None else '?'}",
                now=(self.prefix + self.phase).rstrip(" ·") or "-",
                for_s=round(time.monotonic() - self.phase_since),
                elapsed=_clock(time.monotonic() - self.started),
            )

    # ------------------------------------------------------------------ updates
    def set_phase(self, name: str) -> None:
        """What the current unit of work is doing now (``rollouts``, ``teacher``, ``update``)."""
        self.phase, self.phase_since = name, time.monotonic()
        self._refresh()

    def advance(self, completed: int, info: str = "") -> None:
        self.completed, self.info, self.phase, self.prefix = completed, info, "", ""
        self.phase_since = time.monotonic()
        self._refresh()


class StepProgress(LiveProgress):
    """The training bar: optimizer steps with a few live metrics (quiet on non-main processes)."""

    def __init__(self, total: int, start: int = 0, *, enabled: bool = True, **kw: Any) -> None:
        super().__init__("train", total, start, enabled=enabled, **kw)

    def update(self, step: int, metrics: Mapping[str, float]) -> None:
        info = "  ".join(f"{k}={metrics[k]:.3g}" for k in SHOWN if k in metrics)
        self.advance(step, info)
        if self.enabled and self._progress is None:  # no bar: one line per step instead
            shown = {k.replace("/", "_"): round(metrics[k], 4) for k in SHOWN if k in metrics}
            log.info("step done", step=f"{step}/{self.total}", **shown)


def phase(name: str) -> None:
    """Announce what the run is doing now to the active progress display, if any."""
    if _active:
        _active[-1].set_phase(name)


def active_console() -> Any:
    """The console of the active progress display (print there to stay above its bar), or
    ``None`` when none is active."""
    return _active[-1].console if _active else None


def track(items: Iterable[T], label: str, *, enabled: bool = True, **display: Any) -> Iterator[T]:
    """Iterate ``items`` with progress: inside an active display (an evaluation during training)
    it is shown as that display's phase (``evaluate 1/4 · rollouts``); otherwise with its own
    (``display``: :class:`LiveProgress`'s ``interval`` and ``console``)."""
    items = list(items)
    if _active:
        live = _active[-1]
        saved = live.phase, live.prefix, live.phase_since
        try:
            for i, item in enumerate(items):
                live.prefix = f"{label} {i}/{len(items)} · "
                live.set_phase("")
                yield item
        finally:
            live.phase, live.prefix, live.phase_since = saved
            live._refresh()
        return
    with LiveProgress(label, len(items), enabled=enabled, **display) as own:
        for i, item in enumerate(items):
            yield item
            own.advance(i + 1)


__all__ = ["HEARTBEAT_S", "LiveProgress", "StepProgress", "active_console", "phase", "track"]
