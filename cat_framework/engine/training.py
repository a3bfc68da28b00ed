"""Plumbing shared by the training modes (``train``, ``sft``): accelerator, optimizer and
schedule, run files, resume point, the final model, and a replica-agreement check."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
import torch

from cat_framework.components import Dataset
from cat_framework.confine import refuse_links
from cat_framework.engine import fsdp, lora
from cat_framework.engine.checkpoint import (
    latest_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    tidy_checkpoints,
    truncate_jsonl,
)
from cat_framework.engine.evaluate import load_prompts
from cat_framework.engine.finite import refuse_nonfinite_weights
from cat_framework.engine.main_decides import main_decides
from cat_framework.errors import CatError
from cat_framework.pipeline import Pipeline
from cat_framework.pipeline.build import build_component
from cat_framework.records import check_schema
from cat_framework.types import Prompt

log = structlog.get_logger("cat_framework.training")


#: accelerate launch modes the trainer supports: data parallelism (every process keeps whole
#: weights) and FSDP2 (sharded weights; rollouts come from a gathered generation copy)
SUPPORTED_DISTRIBUTED = (
    "NO", "MULTI_CPU", "MULTI_GPU", "MULTI_XPU", "MULTI_NPU", "MULTI_MLU", "FSDP",
)  # fmt: skip


def make_accelerator(mixed_precision: str) -> Any:
    from accelerate import Accelerator

    acc = Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())
    if fsdp.requested() and not torch.cuda.is_available():
        fsdp.enable_on_cpu(acc, mixed_precision)  # accelerate alone would run plain gloo DDP
    kind = str(getattr(acc.distributed_type, "value", acc.distributed_type))
    if kind not in SUPPORTED_DISTRIBUTED:
        raise CatError(
            f"accelerate distributed type {kind} is not supported by the trainer: use FSDP2 "
            "(pipelines/accelerate/fsdp2.yaml) to shard weights, gradients and optimizer "
            "states, or data parallelism (pipelines/accelerate/ddp.yaml)"
        )
    fsdp.check_version(acc)
    return acc


def start_training(pipeline: Pipeline) -> tuple[Any, list[Prompt]]:
    """What every training mode starts with: the accelerator (checked against the batch),
    seeded RNGs, and the training prompts."""
    from accelerate.utils import set_seed

    cfg = pipeline.config
    acc = make_accelerator(cfg.trainer.mixed_precision)
    check_processes(cfg.trainer.prompts_per_step, acc)
    set_seed(cfg.seed)
    dataset = build_component(pipeline, "data", "train")
    assert isinstance(dataset, Dataset)
    prompts = load_prompts(dataset, None)
    if not prompts:
        raise CatError("data.train has no prompts")
    return acc, prompts


def finish_step(
    run_dir: Path,
    step: int,
    metrics: dict[str, Any],
    *,
    records: list[dict[str, Any]] | None,
    trainer: Any,
    last_step: int,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    accelerator: Any,
    plugins: Any,
    state: dict[str, Any] | None = None,
    pending: Callable[[], Any] | None = None,
) -> None:
    """A step's bookkeeping, the same for every training mode: run files (main process), a
    checkpoint when ``trainer.save_every`` says so or at the last step (all processes), then
    the observers' ``on_step_end`` (after the checkpoint, so an observer that stops the run
    never loses the step)."""
    if accelerator.is_main_process:
        if records:
            append_jsonl(run_dir / "records.jsonl", records)
        append_jsonl(run_dir / "metrics.jsonl", [metrics])
    if (trainer.save_every and step % trainer.save_every == 0) or step == last_step:
        save_checkpoint(
            run_dir, step, model, optimizer, scheduler, accelerator, state or {},
            trainer.keep_checkpoints, pending() if pending is not None else None,
        )  # fmt: skip
    if accelerator.is_main_process:
        plugins.notify("on_step_end", run_dir=str(run_dir.resolve()), step=step, metrics=metrics)


def check_processes(prompts_per_step: int, accelerator: Any) -> None:
    """Every process must get the same number of whole prompts (groups are never split, and
    per-step tensors are gathered across processes)."""
    world = accelerator.num_processes
    if prompts_per_step % world:
        raise CatError(
            f"trainer.prompts_per_step ({prompts_per_step}) must be a multiple of the number of "
            f"processes ({world}): set it to {world * max(1, round(prompts_per_step / world))} "
            "with --set trainer.prompts_per_step=N"
        )


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


def append_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def resume_point(
    run_dir: Path,
    resume: str | None,
    accelerator: Any,
    files: tuple[str, ...] = ("metrics.jsonl", "records.jsonl"),
    keep: int | None = None,
    check_pending: Callable[[Any], str | None] | None = None,
) -> Any:
    """The checkpoint to continue from (None for a fresh run; ``check_pending``: see
    :func:`check_checkpoint`); drops the lines of ``files``
    logged after it (those steps are redone; the rewrite is atomic) and prunes to the ``keep``
    newest checkpoints (a kill during a prune left more, and a finished run saves no more). A
    fresh run's directory is new or emptied by the runner (``--overwrite``): nothing to do."""
    if not resume:
        return None
    if accelerator.is_main_process:  # finish a prune or a save a kill interrupted
        tidy_checkpoints(run_dir)
    accelerator.wait_for_everyone()
    ckpt = latest_checkpoint(run_dir, check_pending)
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


def save_final(run_dir: Path, policy: Any, acc: Any) -> Path | None:
    """The trained policy as a loadable folder (full model, or the LoRA adapter) + tokenizer."""
    acc.wait_for_everyone()
    refuse_nonfinite_weights(policy.model, acc, "final/")  # every process, before any gather
    # under FSDP2 every process takes part in gathering the shards; the main one writes them
    # (the generation copy is done with by now: its memory makes room for the whole model)
    state = None
    if fsdp.is_fsdp2(acc):
        policy.release_sampler_memory()
        if policy.lora:  # the adapter folder needs the adapters only: never gather the base
            state = dict(lora.adapter_tensors(policy.model))
        else:
            state = fsdp.full_state_dict(policy.model)
    if not acc.is_main_process:
        return None
    path = run_dir / "final"
    refuse_links(run_dir, ("final",))  # save_pretrained would write through a link
    policy.model.save_pretrained(path, state_dict=state)
    policy.tokenizer.save_pretrained(path)
    return path


def check_replicas_agree(model: torch.nn.Module, acc: Any) -> None:
    """Data-parallel processes must end with identical weights; a silent divergence (a step
    that skipped the gradient all-reduce) would otherwise surface only as bad results."""
    if acc.num_processes == 1:
        return
    if fsdp.is_fsdp2(acc):  # shards, not replicas: each holds different tensors by design
        log.info("sharded weights: no replica check", processes=acc.num_processes)
        return
    with torch.no_grad():
        local = torch.stack(
            [p.detach().double().sum() for p in model.parameters() if p.requires_grad]
        ).to(acc.device)
    everyone = acc.gather(local[None]).cpu()
    spread = float((everyone - everyone[0]).abs().max())
    if spread > 1e-6:
        raise CatError(f"data-parallel replicas diverged (max parameter-sum difference {spread})")
    log.info("replicas agree", processes=acc.num_processes, max_difference=spread)


def gather_records(acc: Any, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if acc.num_processes == 1:
        return records
    from accelerate.utils import gather_object

    return list(gather_object(records))
