"""Leaving the process group before the interpreter exits.

A gloo process group still alive at interpreter exit is torn down by its C++ destructor, which
aborts now and then (``terminate called without an active exception``, SIGABRT): a run that
finished, or refused with a clear message, would then exit -6 and ``torchrun``/``accelerate
launch`` would report the launch as failed. Every entry point that may have joined a group
leaves it explicitly on the way out.
"""

from __future__ import annotations

import sys


def leave_process_group() -> None:
    """Destroy the default process group if this process joined one (torch is never imported
    here just to find out: a command that did not load torch joined nothing)."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return
    dist.destroy_process_group()


__all__ = ["leave_process_group"]
