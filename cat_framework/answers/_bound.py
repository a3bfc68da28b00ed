"""Time bounds for math-verify/sympy work (which can run for minutes on adversarial input)."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

_R = TypeVar("_R")

#: seconds allowed for one math-verify parse or comparison (main thread only)
DEFAULT_TIMEOUT_S = 5.0


class _Timeout(BaseException):
    """Raised by our alarm; a BaseException so sympy's ``except Exception`` cannot swallow it."""


def _raise_timeout(signum: int, frame: Any) -> None:
    raise _Timeout


def bounded(fn: Callable[[], _R], default: _R, seconds: float | None) -> _R:
    """``fn()``, or ``default`` if it runs longer than ``seconds``.

    The bound is a SIGALRM timer, so it applies only in the main thread (elsewhere ``fn`` runs
    unbounded and the answer-length limit is the guard). A timer armed by someone else (e.g.
    pytest-timeout) is paused and re-armed with its remaining time; if it would fire first, it is
    left alone to do so.
    """
    if (
        not seconds
        or seconds <= 0
        or not hasattr(signal, "setitimer")
        or threading.current_thread() is not threading.main_thread()
    ):
        return fn()
    outer_remaining, outer_interval = signal.getitimer(signal.ITIMER_REAL)
    if outer_remaining and outer_remaining <= seconds:
        return fn()
    previous = signal.signal(signal.SIGALRM, _raise_timeout)
    start = time.monotonic()
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, seconds)
            return fn()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _Timeout:
        return default
    finally:
        signal.signal(signal.SIGALRM, previous)
        if outer_remaining:
            left = max(outer_remaining - (time.monotonic() - start), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, left, outer_interval)


class _DropTimeoutWarning(logging.Filter):
    """math-verify warns that its timeout is off; we bound time ourselves (:func:`bounded`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutWarning())
