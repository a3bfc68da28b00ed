"""CaT-SFT's validation loss and early stopping (``trainer.sft_validation`` > 0).

The paper (arXiv 2509.14234, v1 Table 2) stops CaT-SFT "early ... on lowest validation loss".
Here a seeded share of the prompts that have a reference is held out (:func:`held_out`); their
targets are the anchor's references, like the training ones (gold answers are never read: the
method is label-free). At a set cadence every process computes the loss on its share of them
(the same loss as training), the sums are all-reduced, so every process sees the same number
and makes the same decision; after ``sft_patience`` validations in a row without a new lowest,
training stops, and the run ends with the weights of the lowest validation loss
(:mod:`cat_framework.engine.best_weights`). The state is in every checkpoint: a resume decides
exactly as an uninterrupted run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog
import torch

from cat_framework.engine.best_weights import (
    prune_best,
    referenced_steps,
    restore_best,
    save_best,
)
from cat_framework.engine.early_stopping import STATE_KEY, EarlyStopping, validation_due
from cat_framework.engine.sequences import build_batch, completion_logps
from cat_framework.engine.sft_loss import SftLoss, validation_sums
from cat_framework.engine.training_run import TrainingRun
from cat_framework.engine.update import micro_batches

log = structlog.get_logger("cat_framework.sft")

Pair = tuple[list[int], list[int]]


@contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """Dropout (LoRA's included) off while the validation loss is measured, then every module
    back in the mode it was in (not all in one mode: a frozen part may be kept in eval)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def validation_loss(run: TrainingRun, pairs: list[Pair], kind: SftLoss) -> float:
    """The loss over all of ``pairs``, the same on every process: each computes its share
    (padded with zero-weight rows to the same count, so sharded weights see the same forward
    passes everywhere), and the sums are all-reduced."""
    acc, tc = run.acc, run.cfg.trainer
    size = math.ceil(len(pairs) / acc.num_processes)
    mine = pairs[acc.process_index :: acc.num_processes]
    weight = [1.0] * len(mine) + [0.0] * (size - len(mine))
    mine = mine + [pairs[0]] * (size - len(mine))
    tok = run.placement.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    batch = build_batch([p for p, _ in mine], [t for _, t in mine], pad).to(acc.device)
    weights = torch.tensor(weight, device=acc.device)
    sums = torch.zeros(2, dtype=torch.float64, device=acc.device)
    model = run.updater.model
    with torch.no_grad(), evaluating(model):
        for rows in micro_batches(batch, tc.micro_batch_size):
            mb = batch.rows(rows)
            logp, _ = completion_logps(model, mb, 1.0, chunk=tc.logprob_chunk)
            sums += validation_sums(logp, mb.completion_mask, weights[rows], kind)
    total = acc.reduce(sums, reduction="sum")
    return float(total[0] / total[1].clamp(min=1.0))


class SftValidation:
    """The held-out pairs, the cadence and the early-stopping state of one CaT-SFT run."""

    def __init__(
        self, run: TrainingRun, pairs: list[Pair], per_epoch: int, last: int, kind: SftLoss
    ) -> None:
        tc = run.cfg.trainer
        self.run, self.pairs, self.kind = run, pairs, kind
        self.per_epoch, self.last = per_epoch, last
        self.every = tc.sft_validate_every
        self.stopper = EarlyStopping.resume(tc.sft_patience, run.resumed_state)

    def after_step(self, step: int, metrics: dict[str, Any]) -> bool:
        """Validate when due (``val/loss`` and ``val/best_step`` join the step's metrics; a new
        lowest saves the weights); True when training stops after this step."""
        if not validation_due(step, self.every, self.per_epoch, self.last):
            return False
        loss = validation_loss(self.run, self.pairs, self.kind)
        if self.stopper.observe(step, loss):
            run = self.run
            placement = run.placement
            save_best(run.run_dir, step, placement.model, placement.checkpoint_layout, run.acc)
            self.prune(step)
        if math.isfinite(loss):  # like the training loss: a non-finite one is not logged
            metrics["val/loss"] = loss
        if self.stopper.best_step is not None:
            metrics["val/best_step"] = self.stopper.best_step
        if self.stopper.stopped:
            log.info("early stopping", step=step, best_step=self.stopper.best_step,
                     best_loss=self.stopper.best)  # fmt: skip
        return self.stopper.stopped

    def state(self) -> dict[str, Any]:
        return self.stopper.state()

    def finish(self, end: int) -> int:
        """Put the weights of the lowest validation loss back when training ended past it (all
        processes); returns the step the final model is from."""
        best = self.stopper.best_step
        if best is None:  # no finite validation loss at all: the last weights
            return end
        if best != end:
            placement = self.run.placement
            restore_best(
                self.run.run_dir, best, placement.model, placement.checkpoint_layout,
                self.run.acc.process_index,
            )  # fmt: skip
            log.info("final model: the lowest validation loss", step=best, loss=self.stopper.best)
        self.prune(best)
        return best

    def prune(self, keep: int) -> None:
        """Drop best weights neither ``keep`` nor a checkpoint on disk names (main process)."""
        run = self.run
        if run.acc.is_main_process:
            named = referenced_steps(run.run_dir, best_step_of)
            prune_best(run.run_dir, named | {keep})
        run.acc.wait_for_everyone()


def best_step_of(state: dict[str, Any]) -> int | None:
    """The best step a checkpoint's ``state.json`` names (None: none, or not readable)."""
    data = state.get(STATE_KEY)
    step = data.get("best_step") if isinstance(data, dict) else None
    return step if type(step) is int else None


__all__ = ["SftValidation", "best_step_of", "evaluating", "validation_loss"]
