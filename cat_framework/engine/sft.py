"""CaT-SFT (``mode: sft``): supervised fine-tuning on the anchor's synthesized references.

The paper's baseline: for every training prompt the initial policy samples G rollouts, the frozen
anchor synthesizes a reference (the pipeline's ``aggregator``), and the policy is then trained
with cross-entropy on (question -> reference), usually with LoRA (paper: r=32). References are
written to ``records.jsonl`` (step 0) as they are made, so ``--resume`` never recomputes them.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import structlog
import torch

from cat_framework.components import Aggregator
from cat_framework.engine.checkpoint import load_checkpoint
from cat_framework.engine.finite import NonfiniteGuard, step_scheduler
from cat_framework.engine.policy import PolicyModels, build_policy, build_training_roles
from cat_framework.engine.progress import StepProgress
from cat_framework.engine.record_builder import build_record
from cat_framework.engine.schedule import derive_seed, shard, step_prompts
from cat_framework.engine.sequences import build_batch, completion_logps
from cat_framework.engine.teacher import Teacher, explore
from cat_framework.engine.training import (
    append_jsonl,
    check_replicas_agree,
    finish_step,
    gather_records,
    make_optimizer,
    resume_point,
    save_final,
    start_training,
)
from cat_framework.errors import CatError
from cat_framework.pipeline import Pipeline
from cat_framework.pipeline.build import BackendPool, build_component
from cat_framework.plugins import Plugins
from cat_framework.records import RunRecord, read_records
from cat_framework.types import Prompt

log = structlog.get_logger("cat_framework.sft")


def synthesize_references(
    pipeline: Pipeline,
    prompts: list[Prompt],
    policy: PolicyModels,
    teacher: Teacher,
    path: Path,
    acc: Any,
) -> dict[str, dict[str, Any]]:
    """Rollouts from pi_0 and one reference per prompt, appended to ``path`` batch by batch;
    each process synthesizes its share of a batch and the main process writes them all."""
    cfg = pipeline.config
    done = {r.prompt_id: r.to_dict() for r in read_records(path)}
    todo = [(i, p) for i, p in enumerate(prompts) if p.id not in done]
    bs = cfg.trainer.prompts_per_step
    for start in range(0, len(todo), bs):
        chunk = todo[start : start + bs][acc.process_index :: acc.num_processes]
        seeds = [derive_seed(cfg.seed, "sft", i) for i, _ in chunk]
        groups = explore(policy.sampler, [p for _, p in chunk], cfg.rollouts, seeds=seeds)
        refs = teacher.references(groups) if groups else []
        policy.sync_generation()  # lock-step: a process with fewer prompts steps on
        rows = [
            build_record("sft", 0, g, {r.method: r}, r.method).to_dict()
            for g, r in zip(groups, refs, strict=True)
        ]
        rows = gather_records(acc, rows)
        if acc.is_main_process:
            append_jsonl(path, rows)
        done.update({r["prompt_id"]: r for r in rows})
        log.info("references", done=len(done), total=len(prompts))
    return done


def run_sft(
    pipeline: Pipeline, run_dir: Path, plugins: Plugins, resume: str | None = None
) -> dict[str, Any]:
    cfg = pipeline.config
    tc = cfg.trainer
    acc, prompts = start_training(pipeline)
    pool = BackendPool()
    # references come from pi_0 before any update: the policy itself is pi_0 then
    policy = build_policy(pipeline, plugins, pool, acc.device, need_frozen=False, accelerator=acc)
    try:
        roles = build_training_roles(pipeline, pool, policy)
        aggregator = build_component(pipeline, "aggregator", roles=roles)
        assert isinstance(aggregator, Aggregator)
        fallback = pipeline.component("trainer", "reference_fallback")
        teacher = Teacher(aggregator, None, fallback.build(roles=roles) if fallback else None)  # type: ignore[arg-type]
        refs = synthesize_references(
            pipeline, prompts, policy, teacher, run_dir / "records.jsonl", acc
        )
        pairs = sft_pairs(policy, prompts, refs)
        per_epoch = math.ceil(len(pairs) / tc.prompts_per_step)
        total = min(tc.steps, tc.sft_epochs * per_epoch)
        optimizer, scheduler = make_optimizer(policy.model, pipeline, total)
        train_model, optimizer = acc.prepare(policy.model, optimizer)
        ckpt = resume_point(
            run_dir, resume, acc, files=("metrics.jsonl",), keep=tc.keep_checkpoints
        )
        start = 0
        if ckpt is not None:
            load_checkpoint(ckpt, policy.model, optimizer, scheduler, acc.process_index)
            start = ckpt.step
        policy.release_sampler_memory()  # FSDP2: back with the push after training
        guard = NonfiniteGuard(tc.nonfinite_stop_after, acc)
        with StepProgress(total, start, enabled=acc.is_main_process) as bar:
            for step in range(start + 1, total + 1):
                t0 = time.perf_counter()
                order = step_prompts(len(pairs), tc.prompts_per_step, step, cfg.seed)
                mine = [
                    pairs[order[k]]
                    for k in shard(list(range(len(order))), acc.process_index, acc.num_processes)
                ]
                loss, tokens, stepped = sft_update(
                    train_model, mine, policy, optimizer, scheduler, acc, tc, guard, step
                )
                metrics = {
                    "step": step,
                    **({"loss": loss} if math.isfinite(loss) else {}),
                    "tokens": tokens,
                    "train/nonfinite_steps": 0.0 if stepped else 1.0,
                    "lr": float(scheduler.get_last_lr()[0]),
                    "epoch": (step - 1) / per_epoch,
                    "time/step": time.perf_counter() - t0,
                }
                finish_step(
                    run_dir, step, metrics, records=None, trainer=tc, last_step=total,
                    model=policy.model, optimizer=optimizer, scheduler=scheduler,
                    accelerator=acc, plugins=plugins,
                )  # fmt: skip
                bar.update(step, metrics)
        if policy.pushes_weights:  # the sampler (an engine, a gathered copy) gets the result
            policy.push_weights()
        if cfg.data.eval is not None and acc.is_main_process:
            evaluate_final(pipeline, roles, run_dir, total, plugins)
        policy.sync_generation()
        acc.wait_for_everyone()
        check_replicas_agree(policy.model, acc)
        final = save_final(run_dir, policy, acc)
    finally:
        policy.close()
        pool.close()
    return {"steps": total, "references": len(refs), "final_model": str(final) if final else None}


def evaluate_final(
    pipeline: Pipeline, roles: Any, run_dir: Path, step: int, plugins: Plugins
) -> None:
    """The fine-tuned policy on ``data.eval`` (the paper compares CaT-SFT with CaT-RL there)."""
    from cat_framework.engine.trainer import PeriodicEval

    row = {"step": step, **PeriodicEval(pipeline, roles, run_dir)(step)}
    append_jsonl(run_dir / "metrics.jsonl", [row])
    plugins.notify("on_step_end", run_dir=str(run_dir.resolve()), step=step, metrics=row)


def sft_pairs(
    policy: PolicyModels, prompts: list[Prompt], refs: dict[str, dict[str, Any]]
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, reference ids + EOS) for every prompt that has a reference: non-empty text
    and, for math, a committed final answer (an answerless reference is no reference)."""
    eos = policy.tokenizer.eos_token_id
    pairs = []
    no_answer = 0
    for p in prompts:
        row = refs.get(p.id)
        ref = RunRecord.from_dict(row, "records.jsonl").reference if row else None
        if ref is None or not ref.text.strip():
            continue
        if p.meta.get("task", "math") == "math" and ref.answer is None:
            no_answer += 1
            continue
        target = list(policy.tokenizer(ref.text, add_special_tokens=False)["input_ids"])
        pairs.append((policy.encode(p.messages), target + ([eos] if eos is not None else [])))
    if not pairs:
        raise CatError(
            "the aggregator produced no usable reference to train on "
            f"({no_answer} had no final answer; see trainer.reference_fallback)"
        )
    skipped = len(prompts) - len(pairs)
    if skipped:
        log.warning("prompts without a reference skipped", count=skipped, no_answer=no_answer)
    return pairs


def sft_update(
    model: torch.nn.Module,
    pairs: list[tuple[list[int], list[int]]],
    policy: PolicyModels,
    optimizer: Any,
    scheduler: Any,
    acc: Any,
    tc: Any,
    guard: NonfiniteGuard,
    step: int,
) -> tuple[float, float, bool]:
    """One optimizer step of token-mean cross-entropy over the global batch's target tokens:
    (loss, target tokens, whether the step was taken: ``guard`` skips a non-finite one)."""
    pad = policy.tokenizer.pad_token_id
    pad = pad if pad is not None else (policy.tokenizer.eos_token_id or 0)
    batch = build_batch([p for p, _ in pairs], [t for _, t in pairs], pad).to(acc.device)
    local = batch.completion_mask.sum().float()
    total = float(acc.reduce(local.clone(), reduction="sum").item())
    size = tc.micro_batch_size
    slices = [slice(i, min(i + size, len(pairs))) for i in range(0, len(pairs), size)]
    optimizer.zero_grad(set_to_none=True)
    loss_sum, loss_finite = 0.0, True
    for k, s in enumerate(slices):
        mb = batch.rows(s)
        ctx = acc.no_sync(model) if k < len(slices) - 1 else nullcontext()
        with ctx:
            logp, _ = completion_logps(model, mb, 1.0, chunk=tc.logprob_chunk)
            loss = -(logp * mb.completion_mask).sum() / max(total, 1.0)
            acc.backward(loss * acc.num_processes)
        loss_sum += float(loss.item())
        loss_finite = loss_finite and bool(torch.isfinite(loss.detach()))
    params = [p for p in model.parameters() if p.requires_grad]
    stepped = guard.allow(loss_finite, params, f"step {step}")
    if stepped:
        if tc.max_grad_norm is not None:
            acc.clip_grad_norm_(params, tc.max_grad_norm)
        optimizer.step()
    step_scheduler(scheduler)
    optimizer.zero_grad(set_to_none=True)
    loss_all = float(
        acc.reduce(torch.tensor([loss_sum], device=acc.device), reduction="sum").item()
    )
    return loss_all, total, stepped


__all__ = ["run_sft", "sft_pairs", "synthesize_references"]
