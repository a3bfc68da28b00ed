"""CaT-SFT (``mode: sft``): supervised fine-tuning on the anchor's synthesized references.

The paper's baseline: for every training prompt the initial policy samples G rollouts, the frozen
anchor synthesizes a reference (the pipeline's ``aggregator``), and the policy is then trained
with cross-entropy on (question -> reference), usually with LoRA (paper: r=32). References are
written to ``records.jsonl`` (step 0) as they are made, so ``--resume`` never recomputes them.

As published (v1 Table 2, Eq. 13): the loss is each reference's token mean averaged over the
references (``trainer.sft_loss: sequence_mean``, :mod:`~cat_framework.engine.sft_loss`), and
training stops early on the lowest loss on held-out references (``trainer.sft_validation``,
:mod:`~cat_framework.engine.sft_validation`), ending with those weights.
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
from cat_framework.engine.diagnostics import majority_reading
from cat_framework.engine.early_stopping import held_out
from cat_framework.engine.evaluate import PeriodicEval
from cat_framework.engine.files import append_jsonl
from cat_framework.engine.placement import Placement, training_roles
from cat_framework.engine.progress import StepProgress
from cat_framework.engine.record_builder import build_record
from cat_framework.engine.schedule import derive_seed
from cat_framework.engine.sequences import build_batch, completion_logps
from cat_framework.engine.sft_loss import SftLoss, loss_share, loss_total
from cat_framework.engine.sft_validation import Pair, SftValidation
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


def synthesize_references(
    run: TrainingRun, teacher: Teacher, path: Path
) -> dict[str, dict[str, Any]]:
    """Rollouts from pi_0 and one reference per prompt, appended to ``path`` batch by batch;
    each process synthesizes its share of a batch and the main process writes them all."""
    cfg, acc, placement = run.cfg, run.acc, run.placement
    majority = majority_reading(run.pipeline, evaluation=False)
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
            build_record("sft", 0, g, {r.method: r}, r.method, majority=majority).to_dict()
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
        pairs, held = split_pairs(
            sft_examples(run.placement, run.prompts, refs), tc.sft_validation, cfg.seed
        )
        per_epoch = math.ceil(len(pairs) / tc.prompts_per_step)
        total = min(tc.steps, tc.sft_epochs * per_epoch)
        start = run.prepare(total, ("metrics.jsonl",), sample_next=False)
        val = SftValidation(run, held, per_epoch, total, tc.sft_loss) if held else None
        with run.placement.update():  # the sampler gets the result when training is done
            end = _steps(run, pairs, start, total, per_epoch, val)
            best = val.finish(end) if val is not None else end  # the weights the run ends with
        if cfg.data.eval is not None:
            row = PeriodicEval(pipeline, roles, run_dir).everywhere(
                end, run.acc, run.placement.settle
            )
            if run.acc.is_main_process:  # the paper compares CaT-SFT with CaT-RL there
                run.log_metrics(end, {"step": end, **row})
        final = run.finish()
    return {
        "steps": end, "references": len(refs), "validation": len(held), "final_step": best,
        "final_model": str(final) if final else None,
    }  # fmt: skip


def _steps(
    run: TrainingRun, pairs: list[Pair], start: int, total: int, per_epoch: int,
    val: SftValidation | None,
) -> int:  # fmt: skip
    """Steps ``start + 1`` to ``total``: each this process's share of the step's pairs, the
    validation loss when due; returns the step training ended at (earlier when it stopped)."""
    acc = run.acc
    if val is not None and val.stopper.stopped:  # resumed after it had stopped early
        return start
    with StepProgress(total, start, enabled=acc.is_main_process) as bar:
        for step in range(start + 1, total + 1):
            t0 = time.perf_counter()
            mine = [pairs[i] for _, i in run.mine(len(pairs), step)]
            loss, tokens, stepped = sft_update(run, mine, step, run.cfg.trainer.sft_loss)
            metrics = {
                "step": step,
                **({"loss": loss} if math.isfinite(loss) else {}),
                "tokens": tokens,
                "train/nonfinite_steps": 0.0 if stepped else 1.0,
                "lr": float(run.updater.scheduler.get_last_lr()[0]),
                "epoch": (step - 1) / per_epoch,
                "time/step": time.perf_counter() - t0,
            }
            stop = val.after_step(step, metrics) if val is not None else False
            state = val.state() if val is not None else None
            run.finish_step(step, metrics, None, step if stop else total, state)
            bar.update(step, metrics)
            if stop:
                return step
    return total


def sft_pairs(
    placement: Placement, prompts: list[Prompt], refs: dict[str, dict[str, Any]]
) -> list[Pair]:
    """(prompt ids, reference ids + EOS) for every prompt that has a reference."""
    return [pair for _, pair in sft_examples(placement, prompts, refs)]


def split_pairs(
    examples: list[tuple[str, Pair]], share: float, seed: int
) -> tuple[list[Pair], list[Pair]]:
    """(training pairs, held-out validation pairs): ``share`` of the prompts with a reference
    held out by a seeded hash of their ids (:func:`held_out`), disjoint by construction. Both
    sides' targets are the anchor's references: gold answers are never read."""
    val = held_out([pid for pid, _ in examples], share, seed)
    train = [pair for pid, pair in examples if pid not in val]
    held = [pair for pid, pair in examples if pid in val]
    if held:
        log.info("validation split", train=len(train), held_out=len(held))
    return train, held


def sft_examples(
    placement: Placement, prompts: list[Prompt], refs: dict[str, dict[str, Any]]
) -> list[tuple[str, Pair]]:
    """(prompt id, (prompt ids, reference ids + EOS)) for every prompt that has a reference:
    non-empty text and, for math, a committed final answer (an answerless reference is no
    reference)."""
    eos = placement.tokenizer.eos_token_id
    pairs: list[tuple[str, Pair]] = []
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
        pair = (placement.encode(p.messages), target + ([eos] if eos is not None else []))
        pairs.append((p.id, pair))
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
    run: TrainingRun, pairs: list[Pair], step: int, kind: SftLoss = "token_mean"
) -> tuple[float, float, bool]:
    """One optimizer step of cross-entropy on the global batch (``kind``: see
    :mod:`~cat_framework.engine.sft_loss`): (loss, target tokens, whether the step was taken:
    a non-finite one is skipped)."""
    acc, tok = run.acc, run.placement.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    batch = build_batch([p for p, _ in pairs], [t for _, t in pairs], pad).to(acc.device)
    mask = batch.completion_mask
    local = torch.stack([mask.sum().float(), loss_total(mask, kind).float()])
    tokens, total = (float(x) for x in acc.reduce(local, reduction="sum").tolist())
    loss_sum = 0.0

    def loss(rows: Rows, _: int) -> torch.Tensor:
        nonlocal loss_sum
        mb = batch.rows(rows)
        logp, _ent = completion_logps(
            run.updater.model, mb, 1.0, chunk=run.cfg.trainer.logprob_chunk
        )
        value = loss_share(logp, mb.completion_mask, kind, total)
        loss_sum += float(value.item())
        return value

    updated = run.updater.run(batch, loss, f"step {step}")
    loss_all = float(
        acc.reduce(torch.tensor([loss_sum], device=acc.device), reduction="sum").item()
    )
    return loss_all, tokens, updated.skipped == 0


__all__ = ["run_sft", "sft_examples", "sft_pairs", "split_pairs", "synthesize_references"]
