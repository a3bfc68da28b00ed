"""Joining the process group within a bounded time, and leaving it before the interpreter exits.

Joining: under ``accelerate launch`` every process waits for all the others, to join the group
and at every collective afterwards. A machine that never started, or a process that died before
joining, would keep the rest waiting for torch's default (30 minutes on gloo) and then fail with
a store key as the only message. The framework joins the group itself, first, with the timeout
``CAT_DIST_TIMEOUT`` (seconds; accelerate's ``Accelerator`` later reuses this group), and turns
a failed join into a message naming this process, the address all wait at, and what to do.
(A whole machine missing at the start is caught earlier, by the launcher's rendezvous:
``--rdzv_conf timeout=N``, docs/scaling.md.)

Leaving: a gloo process group still alive at interpreter exit is torn down by its C++
destructor, which aborts now and then (``terminate called without an active exception``,
SIGABRT): a run that finished, or refused with a clear message, would then exit -6 and
``torchrun``/``accelerate launch`` would report the launch as failed. Every entry point that may
have joined a group leaves it explicitly on the way out.
"""

from __future__ import annotations

import os
import socket
import sys
from datetime import timedelta
from typing import Any

from cat_framework.errors import CatError

#: how long (seconds) a process waits for the others: to join the group, then at any collective
TIMEOUT_ENV = "CAT_DIST_TIMEOUT"
#: torch's own default for gloo; long enough for the main process's periodic evaluation, which
#: the others wait out at a barrier
DEFAULT_TIMEOUT_S = 1800


def dist_timeout() -> timedelta:
    """The wait ``CAT_DIST_TIMEOUT`` allows (:data:`DEFAULT_TIMEOUT_S` when unset)."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return timedelta(seconds=DEFAULT_TIMEOUT_S)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < 10**7:
        raise CatError(
            f"{TIMEOUT_ENV}={raw!r}: give the seconds a process may wait for the others, a "
            f"positive number (default {DEFAULT_TIMEOUT_S})"
        )
    return timedelta(seconds=seconds)


def join_process_group() -> Any:
    """accelerate's process state, joining the group within :func:`dist_timeout` (the first
    call in a process joins; later ones, and accelerate's, reuse it); a failed join is a
    :class:`CatError` saying who waited for whom."""
    import torch
    from accelerate import PartialState

    timeout = dist_timeout()
    try:
        return PartialState(cpu=not torch.cuda.is_available(), timeout=timeout)
    except torch.distributed.DistError as exc:  # a store wait timed out, or the main is gone
        raise CatError(join_failure(timeout, exc)) from exc


def join_failure(timeout: timedelta, exc: BaseException) -> str:
    """Who waited for whom, and what to do (the launcher's environment names both sides)."""
    env = os.environ
    where = f"{env.get('MASTER_ADDR', '?')}:{env.get('MASTER_PORT', '?')}"
    machine = env.get("GROUP_RANK", "?")
    cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return (
        f"process {env.get('RANK', '?')} of {env.get('WORLD_SIZE', '?')} (machine rank "
        f"{machine}, host {socket.gethostname()}) waited {timeout.total_seconds():g} s for the "
        f"other processes to join at {where}, and not all did ({cause}). Start `accelerate "
        "launch` on every machine, each with its own --machine_rank (0 to num_machines - 1) and "
        "the same --num_machines, --main_process_ip and --main_process_port; if they were "
        "started, a process on another machine failed before joining: read that machine's "
        f"output. {TIMEOUT_ENV} (seconds) sets how long a process waits."
    )


def leave_process_group() -> None:
    """Destroy the default process group if this process joined one (torch is never imported
    here just to find out: a command that did not load torch joined nothing)."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return
    dist.destroy_process_group()


__all__ = [
    "DEFAULT_TIMEOUT_S",
    "TIMEOUT_ENV",
    "dist_timeout",
    "join_failure",
    "join_process_group",
    "leave_process_group",
]
