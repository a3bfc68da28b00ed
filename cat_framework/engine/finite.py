"""The non-finite guard: a NaN or infinity in a loss or gradient never reaches the weights.

One NaN in one update (a bad batch, a bf16 overflow, a damaged run file) turns every weight into
NaN at the optimizer step, and every later step, checkpoint and the final model with it, while
the run still ends ``completed``. So an update whose loss or gradient is not finite is skipped
(its gradients dropped, no optimizer step) and counted (``train/nonfinite_steps``), and after
``trainer.nonfinite_stop_after`` consecutive skips the run stops: it is not recovering.

Every process must take the same decision, or DDP/FSDP2 processes diverge (one steps, one does
not) or hang in the next collective: the finiteness flag is all-reduced first. A last check,
:func:`refuse_nonfinite_weights`, keeps non-finite weights out of checkpoints and ``final/``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import structlog
import torch

from cat_framework.engine import fsdp
from cat_framework.errors import CatError

log = structlog.get_logger("cat_framework.finite")


class NonfiniteError(CatError):
    """Training produced non-finite values it cannot skip (the message says where)."""


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every value of every tensor is finite (one device sync, not one per tensor)."""
    flags = [torch.isfinite(fsdp.local_tensor(t).detach()).all() for t in tensors]
    return bool(torch.stack([f.to(flags[0].device) for f in flags]).all()) if flags else True


def everyone_finite(local_ok: bool, accelerator: Any) -> bool:
    """True when the flag is True on every process: all processes then decide alike."""
    if getattr(accelerator, "num_processes", 1) == 1:
        return local_ok
    bad = torch.tensor([0.0 if local_ok else 1.0], device=accelerator.device)
    return float(accelerator.reduce(bad, reduction="sum").item()) == 0.0


def gradients(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """The gradients the next optimizer step would apply."""
    return [p.grad for p in params if p.grad is not None]


class NonfiniteGuard:
    """Decides, the same on every process, whether an update may reach the weights."""

    def __init__(self, stop_after: int, accelerator: Any) -> None:
        self.stop_after, self.acc = stop_after, accelerator
        self.consecutive = 0

    def allow(self, loss_finite: bool, params: Iterable[torch.Tensor], where: str) -> bool:
        """Whether the optimizer may step on the gradients ``params`` hold; False (after
        dropping them) when the loss or a gradient is not finite on any process. Raises
        :class:`NonfiniteError` at the ``stop_after``-th such update in a row."""
        params = list(params)
        # fp16's loss scaler skips overflowing gradients itself and lowers its scale: an inf
        # gradient there is its signal, so only the loss decides (dropping those gradients
        # would keep the scale, and the overflow, forever)
        scaled = getattr(self.acc, "scaler", None) is not None
        local = loss_finite and (scaled or all_finite(gradients(params)))
        ok = everyone_finite(local, self.acc)
        if ok:
            self.consecutive = 0
            return True
        for p in params:
            p.grad = None
        self.consecutive += 1
        log.warning(
            "non-finite loss or gradient: update skipped, the weights are unchanged",
            where=where, consecutive=self.consecutive, stop_after=self.stop_after,
        )  # fmt: skip
        if self.consecutive >= self.stop_after:
            raise NonfiniteError(
                f"{where}: the loss or gradient was NaN or infinite in {self.consecutive} "
                "update(s) in a row (each was skipped: the weights, checkpoints and final model "
                "hold none of it), so the run stops (trainer.nonfinite_stop_after: "
                f"{self.stop_after}). Look for a bad batch or run file, lower "
                "trainer.learning_rate, or try mixed_precision: no; --resume continues from "
                "the last checkpoint"
            )
        return False


def step_scheduler(scheduler: Any) -> None:
    """Advance the schedule even when the update was skipped (the learning rate stays a function
    of the step), without torch's warning about a scheduler stepping before its optimizer."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
        scheduler.step()


def refuse_nonfinite_weights(model: torch.nn.Module, accelerator: Any, what: str) -> None:
    """Raise :class:`NonfiniteError` instead of saving ``what`` when a trainable weight is NaN
    or infinite on any process (every process calls this, before anything is written)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if everyone_finite(all_finite(params), accelerator):
        return
    raise NonfiniteError(
        f"the trained weights hold NaN or infinite values: {what} is not written (a non-finite "
        "weight ruins every later step and the final model). Resume from an earlier checkpoint "
        "with --resume, or start the run again"
    )


__all__ = [
    "NonfiniteError",
    "NonfiniteGuard",
    "all_finite",
    "everyone_finite",
    "gradients",
    "refuse_nonfinite_weights",
    "step_scheduler",
]
