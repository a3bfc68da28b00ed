"""TensorBoard observer: every run's scalar metrics in ``<run_dir>/tensorboard/``.

View them with ``tensorboard --logdir <run_dir>/tensorboard`` (or ``--logdir runs/`` to compare
runs). Needs the optional dependency: ``pip install 'cat-framework[tensorboard]'``; without it a
single info line is logged (TensorBoard is optional, not a problem) and runs go on unlogged.

- ``on_run_start`` opens a :class:`torch.utils.tensorboard.SummaryWriter` for the run and writes
  the resolved config as text (``run/config``);
- ``on_step_end`` writes each finite numeric metric as ``add_scalar(key, value, step)``. Strings,
  ``None``, NaN and infinities are skipped silently (a NaN would flatten TensorBoard's plot
  scale); booleans are written as 0/1, and numpy / 0-d torch scalars as their value;
- ``on_run_end`` writes the status (``run/status``) as text, then flushes and closes the writer.

Each run directory gets its own writer, so several runs in one process never mix their events;
hooks for a run this observer did not open are no-ops.

Switches, read when a run starts:

- ``CAT_TENSORBOARD=0`` (or ``false``/``no``/``off``) disables the observer;
- only the main process writes: under ``accelerate launch``/``torchrun`` a process whose ``RANK``
  is not 0 opens nothing (read from the environment, so accelerate is never imported here).
"""

from __future__ import annotations

import json
import math
import numbers
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from cat_framework import hookimpl

log = structlog.get_logger("cat_framework.observers")

ENV_SWITCH = "CAT_TENSORBOARD"
SUBDIR = "tensorboard"
MISSING_WARNING = (
    "TensorBoard logging is off: tensorboard is not installed "
    "(pip install 'cat-framework[tensorboard]')"
)
_OFF = {"0", "false", "no", "off"}


def _enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "").strip().lower() not in _OFF


def _is_main_process() -> bool:
    """Rank 0, or no distributed launcher at all (an unparsable RANK counts as main)."""
    try:
        return int(os.environ.get("RANK", "0")) == 0
    except ValueError:
        return True


def _scalar(value: Any) -> float | None:
    """``value`` as a finite float, or ``None`` when it is not a finite number."""
    if isinstance(value, (str, bytes)):
        return None
    if not isinstance(value, numbers.Real):
        # numpy.bool_, 0-d numpy arrays and 0-d torch tensors, without importing either
        if getattr(value, "ndim", None) != 0 or not hasattr(value, "item"):
            return None
        value = value.item()
        if not isinstance(value, numbers.Real):
            return None
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return x if math.isfinite(x) else None


def _key(run_dir: str) -> str:
    return os.path.realpath(run_dir)


class TensorBoardObserver:
    """One ``SummaryWriter`` per open run directory; state for the process-wide hooks below."""

    def __init__(self) -> None:
        self._writers: dict[str, Any] = {}
        self._last_step: dict[str, int] = {}
        self._lock = threading.Lock()
        self._warned_missing = False

    def _writer_class(self) -> Any | None:
        """The SummaryWriter class, or ``None`` (warned about once) when tensorboard is missing."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            if not self._warned_missing:
                self._warned_missing = True
                log.info(MISSING_WARNING, error=str(exc))
            return None
        return SummaryWriter

    def start(self, run_dir: str, config: Mapping[str, Any]) -> None:
        if not _enabled() or not _is_main_process():
            return
        if not Path(run_dir).is_dir():
            # The runner creates the directory first; anything else is not a run to log.
            log.warning("tensorboard: run directory does not exist; not logging", run_dir=run_dir)
            return
        writer_class = self._writer_class()
        if writer_class is None:
            return
        key = _key(run_dir)
        try:
            writer = writer_class(log_dir=str(Path(run_dir) / SUBDIR))
        except Exception as exc:  # unwritable directory...: logging must never fail a run
            log.warning("tensorboard: could not open a writer", run_dir=run_dir, error=str(exc))
            return
        with self._lock:
            previous = self._writers.pop(key, None)
            self._writers[key] = writer
            self._last_step[key] = 0
        if previous is not None:  # the same run started twice without ending: keep one writer
            previous.close()
        text = json.dumps(dict(config), indent=2, default=str)
        writer.add_text("run/config", f"```json\n{text}\n```", global_step=0)

    def step(self, run_dir: str, step: int, metrics: Mapping[str, Any]) -> None:
        key = _key(run_dir)
        with self._lock:
            writer = self._writers.get(key)
            if writer is None:
                return
            self._last_step[key] = max(self._last_step[key], step)
        for name, value in metrics.items():
            x = _scalar(value)
            if x is not None:
                writer.add_scalar(str(name), x, global_step=step)

    def end(self, run_dir: str, status: str) -> None:
        key = _key(run_dir)
        with self._lock:
            writer = self._writers.pop(key, None)
            last_step = self._last_step.pop(key, 0)
        if writer is None:
            return
        try:
            writer.add_text("run/status", str(status), global_step=last_step)
        finally:
            writer.close()  # flushes

    def close_all(self) -> None:
        """Close every open writer (tests, interpreter shutdown of embedding programs)."""
        with self._lock:
            writers = list(self._writers.values())
            self._writers.clear()
            self._last_step.clear()
        for writer in writers:
            writer.close()


_OBSERVER = TensorBoardObserver()


# ``specname`` lets other observers in this package implement the same hooks side by side.
@hookimpl(specname="on_run_start")
def tensorboard_on_run_start(run_dir: str, config: Mapping[str, Any]) -> None:
    _OBSERVER.start(run_dir, config)


@hookimpl(specname="on_step_end")
def tensorboard_on_step_end(run_dir: str, step: int, metrics: Mapping[str, Any]) -> None:
    _OBSERVER.step(run_dir, step, metrics)


@hookimpl(specname="on_run_end")
def tensorboard_on_run_end(run_dir: str, status: str) -> None:
    _OBSERVER.end(run_dir, status)
