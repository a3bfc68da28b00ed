"""One update loop for every training mode: micro-batches of rows of similar length, gradients
accumulated without syncing until the last one, then the non-finite guard, clipping and the
optimizer step, for as many passes as the mode asks (GRPO's ``num_iterations``).

The caller's loss is normalised by *global* counts (sequences or tokens over all processes), so
the summed gradient over micro-batches and processes equals the full-batch gradient whatever
the split, and the loop never needs to know which loss it is.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from cat_framework.engine.finite import NonfiniteGuard, step_scheduler
from cat_framework.engine.sequences import TokenBatch

#: rows of a batch: a slice, or the indices of length-sorted rows
Rows = slice | torch.Tensor


def micro_batches(batch: TokenBatch, size: int) -> list[Rows]:
    """Micro-batches of rows of similar completion length (a stable sort), so each costs its
    own width, not the batch's longest (``completion_logps`` trims all-padding columns)."""
    n = len(batch.input_ids)
    if n <= size:
        return [slice(0, n)]
    order = torch.argsort(batch.completion_mask.sum(-1).cpu(), stable=True)
    return [order[i : i + size].to(batch.input_ids.device) for i in range(0, n, size)]


@dataclass
class Updated:
    """What the passes did: how many were skipped as non-finite, and the last gradient norm
    (NaN when never clipped)."""

    skipped: int
    grad_norm: float


@dataclass
class Updater:
    """The optimizer side of a run, held once: the module being trained (as the accelerator
    prepared it), optimizer, schedule, the non-finite guard and the clipping norm."""

    model: torch.nn.Module
    optimizer: Any
    scheduler: Any
    accelerator: Any
    guard: NonfiniteGuard
    max_grad_norm: float | None
    micro_batch_size: int

    def __post_init__(self) -> None:
        self.params = [p for p in self.model.parameters() if p.requires_grad]

    def run(
        self,
        batch: TokenBatch,
        loss: Callable[[Rows, int], torch.Tensor],
        where: str,
        passes: int = 1,
    ) -> Updated:
        """``passes`` optimizer steps over ``batch``; ``loss(rows, pass)`` is one
        micro-batch's share of the global loss (it may record statistics as it goes)."""
        acc = self.accelerator
        micro = micro_batches(batch, self.micro_batch_size)
        skipped, grad_norm = 0, float("nan")
        for it in range(passes):
            self.optimizer.zero_grad(set_to_none=True)
            finite = True
            for k, rows in enumerate(micro):
                sync = k == len(micro) - 1
                with nullcontext() if sync else acc.no_sync(self.model):
                    value = loss(rows, it)
                    acc.backward(value * acc.num_processes)
                finite = finite and bool(torch.isfinite(value.detach()))
            if self.guard.allow(finite, self.params, f"{where}, pass {it + 1}"):
                if self.max_grad_norm is not None:
                    grad_norm = float(acc.clip_grad_norm_(self.params, self.max_grad_norm))
                self.optimizer.step()
            else:
                skipped += 1
            step_scheduler(self.scheduler)
        self.optimizer.zero_grad(set_to_none=True)
        return Updated(skipped, grad_norm)


__all__ = ["Rows", "Updated", "Updater", "micro_batches"]
