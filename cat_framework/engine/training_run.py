"""The skeleton every training mode (``train``, ``sft``) runs in: accelerator, prompts,
placement, optimizer, resume, a step's bookkeeping, and the finished model.

A mode supplies only what differs: what a step computes. The order of everything else is fixed
here: the placement is built before the optimizer (LoRA adds the trained parameters), the
checkpoint to resume from is chosen by every process alike before any loads it, a step's files
are written before its checkpoint, and the observers hear of a step only once it is saved.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog
import torch

from cat_framework.confine import refuse_links
from cat_framework.engine.accelerator import (
    check_processes,
    check_replicas_agree,
    make_accelerator,
)
from cat_framework.engine.checkpoint import (
    Checkpoint,
    SlotCheck,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    tidy_checkpoints,
    truncate_jsonl,
)
from cat_framework.engine.files import append_jsonl
from cat_framework.engine.finite import NonfiniteGuard, refuse_nonfinite_weights
from cat_framework.engine.main_decides import main_decides
from cat_framework.engine.placement import Placement, build_placement
from cat_framework.engine.schedule import derive_seed, shard, step_prompts
from cat_framework.engine.split_prompts import split_prompts
from cat_framework.engine.update import Updater
from cat_framework.errors import CatError
from cat_framework.pipeline import Pipeline
from cat_framework.pipeline.build import BackendPool
from cat_framework.plugins import Plugins
from cat_framework.records import check_schema
from cat_framework.types import Prompt

log = structlog.get_logger("cat_framework.training")


class TrainingRun:
    """What a training mode holds from start to finish (open it with :func:`training_run`)."""

    def __init__(
        self, pipeline: Pipeline, run_dir: Path, plugins: Plugins, accelerator: Any,
        prompts: list[Prompt],
    ) -> None:  # fmt: skip
        self.pipeline, self.run_dir, self.plugins = pipeline, run_dir, plugins
        self.cfg = pipeline.config
        self.acc = accelerator
        self.prompts = prompts
        self.pool = BackendPool()
        self.resume: str | None = None
        #: the ``state.json`` of the checkpoint resumed from (a mode's own keys included; empty
        #: for a fresh run): what a mode keeps across a resume besides weights and optimizer
        self.resumed_state: dict[str, Any] = {}
        self.placement: Placement
        self.updater: Updater

    # ------------------------------------------------------------------ the schedule
    def mine(self, count: int, step: int) -> list[tuple[int, int]]:
        """This process's share of ``step``'s items among ``count``: (position in the step,
        item index) pairs, whole items only."""
        tc = self.cfg.trainer
        order = step_prompts(count, tc.prompts_per_step, step, self.cfg.seed)
        positions = shard(list(range(len(order))), self.acc.process_index, self.acc.num_processes)
        return [(k, order[k]) for k in positions]

    def plan(self, step: int) -> tuple[list[Prompt], list[int]] | None:
        """This process's prompts and rollout seeds for ``step`` (None past the last step)."""
        if step > self.cfg.trainer.steps:
            return None
        mine = self.mine(len(self.prompts), step)
        seeds = [derive_seed(self.cfg.seed, "rollouts", step, k) for k, _ in mine]
        return [self.prompts[i] for _, i in mine], seeds

    # ------------------------------------------------------------------ start, resume
    def prepare(self, total_steps: int, files: tuple[str, ...], sample_next: bool = True) -> int:
        """Optimizer and schedule for ``total_steps`` updates, the accelerator's wrapping, and
        the resume: returns the last step already done (0 for a fresh run). ``files``: the run
        files whose lines after the checkpoint are dropped. ``sample_next: False`` (``sft``:
        nothing samples until training ends, when the sampler gets the weights anyway): the
        restored weights are not pushed to the sampler at a resume."""
        tc = self.cfg.trainer
        model = self.placement.model
        optimizer, scheduler = make_optimizer(model, self.pipeline, total_steps)
        train_model, optimizer = self.acc.prepare(model, optimizer)
        self.updater = Updater(
            train_model, optimizer, scheduler, self.acc,
            NonfiniteGuard(tc.nonfinite_stop_after, self.acc), tc.max_grad_norm,
            tc.micro_batch_size,
        )  # fmt: skip
        ckpt = resume_point(
            self.run_dir, self.resume, self.acc, files, tc.keep_checkpoints,
            self.placement.extra_checks(),
        )  # fmt: skip
        if ckpt is None:
            return 0
        load_checkpoint(
            ckpt, model, optimizer, scheduler, self.acc.process_index,
            self.placement.checkpoint_layout,
        )  # fmt: skip
        if sample_next:
            self.placement.resume(ckpt)
        self.resumed_state = dict(ckpt.state)
        log.info("resumed", step=ckpt.step, checkpoint=str(ckpt.path))
        return ckpt.step

    # ------------------------------------------------------------------ a step, the end
    def finish_step(
        self, step: int, metrics: dict[str, Any], records: list[dict[str, Any]] | None,
        last_step: int, state: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        """Run files (main process), a checkpoint when ``trainer.save_every`` says so or at the
        last step (all processes), then the observers' ``on_step_end`` (after the checkpoint,
        so an observer that stops the run never loses the step). ``state``: a mode's own plain
        JSON kept in the checkpoint's ``state.json`` (read back as :attr:`resumed_state`)."""
        tc, acc = self.cfg.trainer, self.acc
        if acc.is_main_process:
            if records:
                append_jsonl(self.run_dir / "records.jsonl", records)
            append_jsonl(self.run_dir / "metrics.jsonl", [metrics])
        if (tc.save_every and step % tc.save_every == 0) or step == last_step:
            kept = {"prompts_seen": step * tc.prompts_per_step, **(state or {})}
            save_checkpoint(
                self.run_dir, step, self.placement.model, self.updater.optimizer,
                self.updater.scheduler, acc, kept,
                tc.keep_checkpoints, self.placement.checkpoint_layout,
                self.placement.extra_state(),
            )  # fmt: skip
        if acc.is_main_process:
            self.notify(step, metrics)

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        """A metrics row outside a step (an evaluation), main process only."""
        append_jsonl(self.run_dir / "metrics.jsonl", [metrics])
        self.notify(step, metrics)

    def notify(self, step: int, metrics: dict[str, Any]) -> None:
        self.plugins.notify(
            "on_step_end", run_dir=str(self.run_dir.resolve()), step=step, metrics=metrics
        )

    def finish(self) -> Path | None:
        """The trained policy as a loadable folder (full model, or the LoRA adapter) plus its
        tokenizer, after checking that data-parallel replicas agree; its path on the main
        process."""
        check_replicas_agree(self.placement.model, self.acc)
        return save_final(self.run_dir, self.placement, self.acc)


@contextmanager
def training_run(
    pipeline: Pipeline,
    run_dir: Path,
    plugins: Plugins,
    resume: str | None,
    *,
    need_frozen: bool,
) -> Iterator[TrainingRun]:
    """Start a training run (accelerator checked against the batch, seeded RNGs, the training
    prompts, the placement) and close its backends however it ends."""
    from accelerate.utils import set_seed

    cfg = pipeline.config
    acc = make_accelerator(cfg.trainer.mixed_precision)
    check_processes(cfg.trainer.prompts_per_step, acc)
    set_seed(cfg.seed)
    prompts = split_prompts(pipeline, "train")[1]
    if not prompts:
        raise CatError("data.train has no prompts")
    run = TrainingRun(pipeline, run_dir, plugins, acc, prompts)
    run.resume = resume
    try:
        run.placement = build_placement(
            pipeline, plugins, run.pool, acc, need_frozen=need_frozen, plan=run.plan
        )
        try:
            run.placement.begin()  # before anything samples (CaT-SFT's references, a resume's)
            yield run
        finally:
            run.placement.close()
    finally:
        run.pool.close()


def make_optimizer(model: torch.nn.Module, pipeline: Pipeline, total_steps: int) -> tuple[Any, Any]:
    """AdamW over the trainable parameters and the configured schedule (per optimizer step)."""
    from transformers import get_scheduler

    tc = pipeline.config.trainer
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise CatError("the policy has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=tc.learning_rate, weight_decay=tc.weight_decay)
    scheduler = get_scheduler(
        tc.lr_scheduler,
        optimizer,
        num_warmup_steps=tc.warmup_steps,
        num_training_steps=max(total_steps, 1),
    )
    return optimizer, scheduler


def resume_point(
    run_dir: Path,
    resume: str | None,
    accelerator: Any,
    files: tuple[str, ...] = ("metrics.jsonl", "records.jsonl"),
    keep: int | None = None,
    checks: dict[str, SlotCheck] | None = None,
) -> Checkpoint | None:
    """The checkpoint to continue from (None for a fresh run; ``checks``: see
    :func:`~cat_framework.engine.checkpoint_check.check_checkpoint`); drops the lines of
    ``files`` logged after it (those steps are redone; the rewrite is atomic) and prunes to the
    ``keep`` newest checkpoints (a kill during a prune left more, and a finished run saves no
    more). A fresh run's directory is new or emptied by the runner (``--overwrite``)."""
    if not resume:
        return None
    if accelerator.is_main_process:  # finish a prune or a save a kill interrupted
        tidy_checkpoints(run_dir)
    accelerator.wait_for_everyone()
    ckpt = latest_checkpoint(run_dir, checks)
    accelerator.wait_for_everyone()  # every process has chosen before any is pruned

    def tidy() -> None:
        if ckpt is not None and keep is not None:
            prune_checkpoints(run_dir, ckpt.step, keep)
        for name in files:  # a record of a newer schema is refused, never kept and appended to
            check = check_schema if name == "records.jsonl" else None
            truncate_jsonl(run_dir / name, ckpt.step if ckpt else -1, check)

    main_decides(tidy, main=accelerator.is_main_process, default=None)  # refused: all stop
    if ckpt is None:
        log.warning("no checkpoint to resume from: starting at step 1", run_dir=str(run_dir))
    return ckpt


def save_final(run_dir: Path, placement: Placement, acc: Any) -> Path | None:
    """The trained policy as a loadable folder (full model, or the LoRA adapter) + tokenizer.
    Every process takes part (sharded weights are gathered); the main process writes."""
    acc.wait_for_everyone()
    refuse_nonfinite_weights(placement.model, acc, "final/")  # every process, before any gather
    state = placement.export()
    if not acc.is_main_process:
        return None
    path = run_dir / "final"
    refuse_links(run_dir, ("final",))  # save_pretrained would write through a link
    placement.model.save_pretrained(path, state_dict=state)
    placement.tokenizer.save_pretrained(path)
    return path


__all__ = ["TrainingRun", "make_optimizer", "resume_point", "save_final", "training_run"]
