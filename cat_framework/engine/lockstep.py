"""Lock-step generation on sharded weights (``trainer.fsdp_gather_for_generation: false``).

Under FSDP2 every forward pass of a sharded module all-gathers its weights layer by layer: a
collective that all processes must enter together, on the same module. Generation makes a
data-dependent number of forward passes per process (other prompts, other lengths, other
micro-batches, retries), so before each forward the processes agree on *which* module runs next:
every process says which one it wants (or none), an all-reduce picks the first one anyone wants,
and a process that wanted another one (or none) runs an *idle* forward on it, the equivalent of
``generate(synced_gpus=True)``. At a point all processes reach before their next other
collective, :meth:`Lockstep.drain` keeps a process that has finished stepping until all have.

The backend only calls its ``lockstep`` hook before each forward and offers ``idle_forward``
(:class:`~cat_framework.components.TrainableBackend`); the agreement lives here, so any number
of ``generate``/``score`` calls, on any of the attached modules, is collective-safe.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import structlog
import torch

from cat_framework.components import TrainableBackend

log = structlog.get_logger("cat_framework.lockstep")


class Lockstep:
    """The agreement between processes on the next forward pass of the attached backends."""

    def __init__(
        self, device: Any, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> None:
        self.device = device
        self.idle: list[Callable[[], Any]] = []
        self.reduce = reduce or _all_reduce_max
        self.forwards = 0  # this process's own forward passes
        self.idle_forwards = 0  # the ones it ran for the others

    def attach(self, backend: TrainableBackend) -> None:
        """Route ``backend``'s forwards through the agreement. Every process must attach the
        same backends in the same order (the index is the module's name in the all-reduce)."""
        if backend.lockstep is not None:
            return
        index = len(self.idle)
        self.idle.append(backend.idle_forward)
        backend.lockstep = partial(self.before_forward, index)

    def agree(self, want: int | None) -> int | None:
        """The module every process runs next: the first one that any process wants."""
        flags = torch.zeros(len(self.idle), dtype=torch.int32, device=self.device)
        if want is not None:
            flags[want] = 1
        wanted = self.reduce(flags).nonzero()
        return int(wanted[0, 0]) if len(wanted) else None

    def before_forward(self, index: int) -> None:
        """Called by backend ``index`` before each of its forwards: idle forwards on the
        modules others need first, then its own turn."""
        while (chosen := self.agree(index)) != index:
            assert chosen is not None  # this process wants one, so someone does
            self.idle_forwards += 1
            self.idle[chosen]()
        self.forwards += 1

    def drain(self) -> None:
        """Idle forwards until no process needs another one."""
        while (chosen := self.agree(None)) is not None:
            self.idle_forwards += 1
            self.idle[chosen]()

    def summary(self) -> dict[str, int]:
        return {"forwards": self.forwards, "idle_forwards": self.idle_forwards}


def _all_reduce_max(flags: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return flags


__all__ = ["Lockstep"]
