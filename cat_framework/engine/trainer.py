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
from cat_framework.engine.checkpoint import load_checkpoint
from cat_framework.engine.evaluate import (
    GoldScorer,
    evaluate_batch,
    flat_metrics,
    labels_for,
    load_prompts,
    summarize,
)
from cat_framework.engine.grpo_step import GRPOStep
from cat_framework.engine.policy import build_policy, build_training_roles, needs_frozen_copy
from cat_framework.engine.progress import StepProgress
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

log = structlog.get_logger("cat_framework.trainer")


class PeriodicEval:
    """``trainer.eval_every``: the evaluate machinery on ``data.eval`` with the current policy."""

    def __init__(self, pipeline: Pipeline, roles: Any, run_dir: Path) -> None:
        cfg = pipeline.config
        self.out = run_dir / "eval"
        dataset = build_component(pipeline, "data", "eval")
        assert isinstance(dataset, Dataset)
        self.pipeline, self.roles = pipeline, roles
        self.prompts = load_prompts(dataset, cfg.eval.limit)
        specs = [
            pipeline.component("eval", "aggregators", i) for i in range(len(cfg.eval.aggregators))
        ]
        self.labels = labels_for([s.name for s in specs if s is not None])
        self.aggregators = [
            (lab, s.build(roles=roles)) for lab, s in zip(self.labels, specs, strict=True) if s
        ]
        scorer = pipeline.component("eval", "scorer")
        self.scorer = GoldScorer(dataset.task_kind, scorer.build(roles=roles) if scorer else None)
        self.task = dataset.task_kind

    def __call__(self, step: int) -> dict[str, float]:
        cfg = self.pipeline.config
        records: list[dict[str, Any]] = []
        bs = cfg.eval.batch_size
        for start in range(0, len(self.prompts), bs):
            batch = self.prompts[start : start + bs]
            seed = derive_seed(cfg.seed, "eval", start)
            records += evaluate_batch(
                batch, self.roles.policy, self.aggregators, self.scorer, self.pipeline, seed
            )
        summary = summarize(
            records, self.labels, self.task, cfg.eval.bootstrap, cfg.eval.confidence
        )
        self.out.mkdir(exist_ok=True)
        name = f"step-{step:06d}"
        (self.out / f"{name}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
        )
        (self.out / f"{name}.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        scores = {k: round(v["score"], 4) for k, v in summary["aggregators"].items()}
        log.info("evaluated", step=step, **scores)
        return flat_metrics(summary)


def run_train(
    pipeline: Pipeline, run_dir: Path, plugins: Plugins, resume: str | None = None
) -> dict[str, Any]:
    cfg = pipeline.config
    tc = cfg.trainer
    acc, prompts = start_training(pipeline)
    pool = BackendPool()
    policy = build_policy(
        pipeline, plugins, pool, acc.device, need_frozen=needs_frozen_copy(pipeline)
    )
    try:
        roles = build_training_roles(pipeline, pool, policy)
        teacher = Teacher(
            build_component(pipeline, "aggregator", roles=roles),  # type: ignore[arg-type]
            build_component(pipeline, "reward", roles=roles),  # type: ignore[arg-type]
        )
        optimizer, scheduler = make_optimizer(policy.model, pipeline, tc.steps * tc.num_iterations)
        train_model, optimizer = acc.prepare(policy.model, optimizer)
        ckpt = resume_point(run_dir, resume, acc)
        start = 0
        if ckpt is not None:
            load_checkpoint(ckpt, policy.model, optimizer, scheduler, acc.process_index)
            start = ckpt.step
            if policy.pushes_weights:
                policy.sampler.update_weights(policy.trained_tensors())
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
            acc.wait_for_everyone()
        with StepProgress(tc.steps, start, enabled=acc.is_main_process) as bar:
            for step in range(start + 1, tc.steps + 1):
                order = step_prompts(len(prompts), tc.prompts_per_step, step, cfg.seed)
                mine = shard(list(range(len(order))), acc.process_index, acc.num_processes)
                seeds = [derive_seed(cfg.seed, "rollouts", step, k) for k in mine]
                out = step_fn([prompts[order[k]] for k in mine], seeds, step)
                records = gather_records(acc, out.records)
                metrics = {"step": step, **out.metrics, **_reference_accuracy(records)}
                if evaluator is not None and tc.eval_every and step % tc.eval_every == 0:
                    if acc.is_main_process:
                        metrics.update(evaluator(step))
                    acc.wait_for_everyone()
                finish_step(
                    run_dir, step, metrics, records=records, trainer=tc, last_step=tc.steps,
                    model=policy.model, optimizer=optimizer, scheduler=scheduler,
                    accelerator=acc, plugins=plugins,
                    state={"prompts_seen": step * tc.prompts_per_step},
                )  # fmt: skip
                bar.update(step, metrics)
                last = metrics
        check_replicas_agree(policy.model, acc)
        final = save_final(run_dir, policy, acc)
    finally:
        policy.close()
        pool.close()
    return {"steps": tc.steps, "final_model": str(final) if final else None, "last_metrics": last}


def _reference_accuracy(records: list[dict[str, Any]]) -> dict[str, float]:
    """How often the teacher's reference matched gold (audit only, like TTRL's label accuracy)."""
    judged = [r["reference_correct"] for r in records if "reference_correct" in r]
    return {"reference/accuracy": sum(judged) / len(judged)} if judged else {}


__all__ = ["run_train"]
