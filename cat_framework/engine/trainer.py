"""CaT-RL (``mode: train``): the GRPO loop on accelerate, with checkpoints, resume and periodic
evaluation.

Per step: this process's share of the step's prompts (whole groups) -> G rollouts each ->
teacher (frozen anchor builds the reference, the reward deriver scores rollouts) -> GRPO updates
(:mod:`cat_framework.engine.grpo_step`). The same script runs unchanged under
``accelerate launch`` (DDP on CPU or GPU); only the main process writes files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import structlog

from cat_framework.components import Dataset
from cat_framework.engine.async_rollouts import RolloutsAhead, pending_values
from cat_framework.engine.checkpoint import load_checkpoint
from cat_framework.engine.diagnostics import step_diagnostics
from cat_framework.engine.evaluate import Evaluation, flat_metrics, load_prompts, summarize
from cat_framework.engine.files import atomic_write_text
from cat_framework.engine.grpo_step import GRPOStep
from cat_framework.engine.policy import build_policy, build_training_roles, needs_frozen_copy
from cat_framework.engine.progress import StepProgress, track
from cat_framework.engine.schedule import derive_seed, shard, step_prompts
from cat_framework.engine.teacher import Teacher
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
from cat_framework.pipeline import Pipeline
from cat_framework.pipeline.build import BackendPool, build_component
from cat_framework.plugins import Plugins
from cat_framework.records import parse_records
from cat_framework.types import Prompt

log = structlog.get_logger("cat_framework.trainer")


class PeriodicEval:
    """``trainer.eval_every`` / ``eval_before``: :class:`Evaluation` (the very computation of
    ``mode: evaluate``) on ``data.eval`` with the current policy."""

    def __init__(self, pipeline: Pipeline, roles: Any, run_dir: Path) -> None:
        cfg = pipeline.config
        self.out = run_dir / "eval"
        dataset = build_component(pipeline, "data", "eval")
        assert isinstance(dataset, Dataset)
        self.pipeline = pipeline
        self.prompts = load_prompts(dataset, cfg.eval.limit)
        self.task = dataset.task_kind
        self.evaluation = Evaluation.build(pipeline, roles, self.task)

    def __call__(self, step: int) -> dict[str, float]:
        cfg = self.pipeline.config
        records: list[dict[str, Any]] = []
        for batch in track(self.evaluation.batches(self.prompts, set()), "evaluate"):
            records += self.evaluation.batch(batch)
        summary = summarize(
            records, self.evaluation.labels, self.task, cfg.eval.bootstrap, cfg.eval.confidence
        )
        self.out.mkdir(exist_ok=True)
        name = f"step-{step:06d}"
        atomic_write_text(
            self.out / f"{name}.jsonl",
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
        )
        atomic_write_text(self.out / f"{name}.json", json.dumps(summary, indent=2))
        scores = {k: round(v["score"], 4) for k, v in summary["aggregators"].items()}
        log.info("evaluated", step=step, **scores)
        return flat_metrics(summary)


def run_train(
    pipeline: Pipeline, run_dir: Path, plugins: Plugins, resume: str | None = None
) -> dict[str, Any]:
    cfg = pipeline.config
    tc = cfg.trainer
    acc, prompts = start_training(pipeline)
    task = str(prompts[0].meta.get("task", "math"))
    pool = BackendPool()
    policy = build_policy(
        pipeline, plugins, pool, acc.device, need_frozen=needs_frozen_copy(pipeline),
        accelerator=acc,
    )  # fmt: skip
    ahead: RolloutsAhead | None = None
    try:
        roles = build_training_roles(pipeline, pool, policy)
        fallback = pipeline.component("trainer", "reference_fallback")
        teacher = Teacher(
            build_component(pipeline, "aggregator", roles=roles),  # type: ignore[arg-type]
            build_component(pipeline, "reward", roles=roles),  # type: ignore[arg-type]
            fallback.build(roles=roles) if fallback else None,  # type: ignore[arg-type]
        )
        optimizer, scheduler = make_optimizer(policy.model, pipeline, tc.steps * tc.num_iterations)
        train_model, optimizer = acc.prepare(policy.model, optimizer)

        def plan(step: int) -> tuple[list[Prompt], list[int]] | None:
            """This process's prompts and rollout seeds for ``step`` (whole groups)."""
            if step > tc.steps:
                return None
            order = step_prompts(len(prompts), tc.prompts_per_step, step, cfg.seed)
            mine = shard(list(range(len(order))), acc.process_index, acc.num_processes)
            seeds = [derive_seed(cfg.seed, "rollouts", step, k) for k in mine]
            return [prompts[order[k]] for k in mine], seeds

        ahead = RolloutsAhead(policy.sampler, cfg.rollouts, plan) if tc.async_rollouts else None
        vocab = policy.model.get_input_embeddings().num_embeddings
        check = pending_values(vocab) if tc.async_rollouts else None
        ckpt = resume_point(run_dir, resume, acc, keep=tc.keep_checkpoints, check_pending=check)
        start = 0
        if ckpt is not None:
            load_checkpoint(ckpt, policy.model, optimizer, scheduler, acc.process_index)
            start = ckpt.step
            if policy.pushes_weights:
                policy.push_weights()
            planned = plan(start + 1)
            if ahead is not None and planned is not None:
                ahead.resume(
                    ckpt, start + 1, planned[0], acc.num_processes, acc.process_index,
                    vocab=vocab,
                )  # fmt: skip
            log.info("resumed", step=start, checkpoint=str(ckpt.path))
        step_fn = GRPOStep(
            policy, train_model, teacher, optimizer, scheduler, acc, cfg.rollouts, tc
        )
        wants_eval = (tc.eval_every or tc.eval_before) and cfg.data.eval
        evaluator = PeriodicEval(pipeline, roles, run_dir) if wants_eval else None
        last: dict[str, float] = {}
        if evaluator is not None and tc.eval_before and start == 0:
            if acc.is_main_process:
                row = {"step": 0, **evaluator(0)}
                append_jsonl(run_dir / "metrics.jsonl", [row])
                plugins.notify("on_step_end", run_dir=str(run_dir.resolve()), step=0, metrics=row)
            policy.sync_generation()  # lock-step: the others step with the main process
            acc.wait_for_everyone()
        with StepProgress(tc.steps, start, enabled=acc.is_main_process) as bar:
            for step in range(start + 1, tc.steps + 1):
                planned = plan(step)
                assert planned is not None
                out = step_fn(*planned, step, ahead)
                records = gather_records(acc, out.records)
                metrics = {"step": step, **out.metrics, **teacher_metrics(records, task)}
                if evaluator is not None and tc.eval_every and step % tc.eval_every == 0:
                    if acc.is_main_process:
                        metrics.update(evaluator(step))
                    policy.sync_generation()
                    acc.wait_for_everyone()
                finish_step(
                    run_dir, step, metrics, records=records, trainer=tc, last_step=tc.steps,
                    model=policy.model, optimizer=optimizer, scheduler=scheduler,
                    accelerator=acc, plugins=plugins,
                    state={"prompts_seen": step * tc.prompts_per_step},
                    pending=ahead.state if ahead is not None else None,
                )  # fmt: skip
                bar.update(step, metrics)
                last = metrics
        check_replicas_agree(policy.model, acc)
        final = save_final(run_dir, policy, acc)
    finally:
        if ahead is not None:
            ahead.close()
        policy.close()
        pool.close()
    return {"steps": tc.steps, "final_model": str(final) if final else None, "last_metrics": last}


def teacher_metrics(rows: list[dict[str, Any]], task: str) -> dict[str, float]:
    """The step's reference diagnostics (rates with counts) and how often the reference
    matched gold (audit only, like TTRL's label accuracy)."""
    records = parse_records(rows, "step records")
    out = step_diagnostics(records, task)
    judged = [
        rec.reference.correct
        for rec in records
        if rec.reference is not None and rec.reference.correct is not None
    ]
    if judged:
        out["reference/accuracy"] = sum(judged) / len(judged)
    return out


__all__ = ["run_train"]
