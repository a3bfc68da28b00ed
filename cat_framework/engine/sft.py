"""CaT-SFT (``mode: sft``): supervised fine-tuning on the anchor's synthesized references.

The paper's baseline: for every training prompt the initial policy samples G rollouts, the frozen
anchor synthesizes a reference (the pipeline's ``aggregator``), and the policy is then trained
with cross-entropy on (question -> reference), usually with LoRA (paper: r=32). References are
written to ``records.jsonl`` (step 0) as they are made, so ``--resume`` never recomputes them.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import structlog
import torch

from cat_framework.components import Aggregator
from cat_framework.engine.accelerator import gather_records
from cat_framework.engine.evaluate import PeriodicEval
from cat_framework.engine.files import append_jsonl
from cat_framework.engine.placement import Placement, training_roles
from cat_framework.engine.progress import StepProgress
from cat_framework.engine.record_builder import build_record
from cat_framework.engine.schedule import derive_seed
from cat_framework.engine.sequences import build_batch, completion_logps
from cat_framework.engine.teacher import Teacher
from cat_framework.engine.training_run import TrainingRun, training_run
from cat_framework.engine.update import Rows
from cat_framework.errors import CatError
from cat_framework.pipeline import Pipeline
from cat_framework.pipeline.build import build_component
from cat_framework.plugins import Plugins
from cat_framework.records import RunRecord, read_records
from cat_framework.types import Prompt

log = structlog.get_logger("cat_framework.sft")

Pair = tuple[list[int], list[int]]


def synthesize_references(
    run: TrainingRun, teacher: Teacher, path: Path
) -> dict[str, dict[str, Any]]:
    """Rollouts from pi_0 and one reference per prompt, appended to ``path`` batch by batch;
    each process synthesizes its share of a batch and the main process writes them all."""
    cfg, acc, placement = run.cfg, run.acc, run.placement
    done = {r.prompt_id: r.to_dict() for r in read_records(path)}
    todo = [(i, p) for i, p in enumerate(run.prompts) if p.id not in done]
    bs = cfg.trainer.prompts_per_step
    for start in range(0, len(todo), bs):
        chunk = todo[start : start + bs][acc.process_index :: acc.num_processes]
        seeds = [derive_seed(cfg.seed, "sft", i) for i, _ in chunk]
        groups = placement.sample(0, [p for _, p in chunk], seeds).groups
        refs = teacher.references(groups) if groups else []
        placement.settle()  # lock-step: a process with fewer prompts steps on
        rows = [
            build_record("sft", 0, g, {r.method: r}, r.method).to_dict()
            for g, r in zip(groups, refs, strict=True)
        ]
        rows = gather_records(acc, rows)
        if acc.is_main_process:
            append_jsonl(path, rows)
        done.update({r["prompt_id"]: r for r in rows})
        log.info("references", done=len(done), total=len(run.prompts))
    return done


def run_sft(
    pipeline: Pipeline, run_dir: Path, plugins: Plugins, resume: str | None = None
) -> dict[str, Any]:
    cfg = pipeline.config
    tc = cfg.trainer
    # references come from pi_0 before any update: the policy itself is pi_0 then
    with training_run(pipeline, run_dir, plugins, resume, need_frozen=False) as run:
        roles = training_roles(pipeline, run.pool, run.placement)
        aggregator = build_component(pipeline, "aggregator", roles=roles)
        assert isinstance(aggregator, Aggregator)
        fallback = pipeline.component("trainer", "reference_fallback")
        teacher = Teacher(aggregator, None, fallback.build(roles=roles) if fallback else None)  # type: ignore[arg-type]
        refs = synthesize_references(run, teacher, run_dir / "records.jsonl")
        pairs = sft_pairs(run.placement, run.prompts, refs)
        per_epoch = math.ceil(len(pairs) / tc.prompts_per_step)
        total = min(tc.steps, tc.sft_epochs * per_epoch)
        start = run.prepare(total, ("metrics.jsonl",))
        with run.placement.update():  # the sampler gets the result when training is done
            _steps(run, pairs, start, total, per_epoch)
        if cfg.data.eval is not None:
            row = PeriodicEval(pipeline, roles, run_dir).everywhere(
                total, run.acc, run.placement.settle
            )
            if run.acc.is_main_process:  # the paper compares CaT-SFT with CaT-RL there
                run.log_metrics(total, {"step": total, **row})
        final = run.finish()
    return {"steps": total, "references": len(refs), "final_model": str(final) if final else None}


def _steps(run: TrainingRun, pairs: list[Pair], start: int, total: int, per_epoch: int) -> None:
    """Steps ``start + 1`` to ``total``: each this process's share of the step's pairs."""
    acc = run.acc
    with StepProgress(total, start, enabled=acc.is_main_process) as bar:
        for step in range(start + 1, total + 1):
            t0 = time.perf_counter()
            mine = [pairs[i] for _, i in run.mine(len(pairs), step)]
            loss, tokens, stepped = sft_update(run, mine, step)
            metrics = {
                "step": step,
                **({"loss": loss} if math.isfinite(loss) else {}),
                "tokens": tokens,
                "train/nonfinite_steps": 0.0 if stepped else 1.0,
                "lr": float(run.updater.scheduler.get_last_lr()[0]),
                "epoch": (step - 1) / per_epoch,
                "time/step": time.perf_counter() - t0,
            }
            run.finish_step(step, metrics, None, total)
            bar.update(step, metrics)


def sft_pairs(
    placement: Placement, prompts: list[Prompt], refs: dict[str, dict[str, Any]]
) -> list[Pair]:
    """(prompt ids, reference ids + EOS) for every prompt that has a reference: non-empty text
    and, for math, a committed final answer (an answerless reference is no reference)."""
    eos = placement.tokenizer.eos_token_id
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
        target = list(placement.tokenizer(ref.text, add_special_tokens=False)["input_ids"])
        pairs.append((placement.encode(p.messages), target + ([eos] if eos is not None else [])))
    if not pairs:
        raise CatError(
            "the aggregator produced no usable reference to train on "
            f"({no_answer} had no final answer; see trainer.reference_fallback)"
        )
    skipped = len(prompts) - len(pairs)
    if skipped:
        log.warning("prompts without a reference skipped", count=skipped, no_answer=no_answer)
    return pairs


def sft_update(run: TrainingRun, pairs: list[Pair], step: int) -> tuple[float, float, bool]:
    """One optimizer step of token-mean cross-entropy over the global batch's target tokens:
    (loss, target tokens, whether the step was taken: a non-finite one is skipped)."""
    acc, tok = run.acc, run.placement.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    batch = build_batch([p for p, _ in pairs], [t for _, t in pairs], pad).to(acc.device)
    local = batch.completion_mask.sum().float()
    total = float(acc.reduce(local.clone(), reduction="sum").item())
    loss_sum = 0.0

    def loss(rows: Rows, _: int) -> torch.Tensor:
        nonlocal loss_sum
        mb = batch.rows(rows)
        logp, _ent = completion_logps(
            run.updater.model, mb, 1.0, chunk=run.cfg.trainer.logprob_chunk
        )
        value = -(logp * mb.completion_mask).sum() / max(total, 1.0)
        loss_sum += float(value.item())
        return value

    updated = run.updater.run(batch, loss, f"step {step}")
    loss_all = float(
        acc.reduce(torch.tensor([loss_sum], device=acc.device), reduction="sum").item()
    )
    return loss_all, total, updated.skipped == 0


__all__ = ["run_sft", "sft_pairs", "synthesize_references"]
