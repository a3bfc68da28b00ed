"""CaT-RL (``mode: train``): the GRPO loop on accelerate, with checkpoints, resume and periodic
evaluation.

Per step: this process's share of the step's prompts (whole groups) -> G rollouts each ->
teacher (frozen anchor builds the reference, the reward deriver scores rollouts) -> GRPO updates
(:mod:`cat_framework.engine.grpo_step`). The same script runs unchanged under
``accelerate launch`` (DDP or FSDP2, on CPU or GPU); only the main process writes files.
Everything but the step itself is the shared skeleton (:mod:`cat_framework.engine.training_run`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog

from cat_framework.engine.accelerator import gather_records
from cat_framework.engine.diagnostics import majority_reading, teacher_metrics
from cat_framework.engine.evaluate import PeriodicEval
from cat_framework.engine.grpo_step import GRPOStep
from cat_framework.engine.placement import needs_frozen_copy, training_roles
from cat_framework.engine.progress import StepProgress
from cat_framework.engine.teacher import Teacher
from cat_framework.engine.training_run import TrainingRun, training_run
from cat_framework.pipeline import Pipeline
from cat_framework.pipeline.build import build_component
from cat_framework.plugins import Plugins
from cat_framework.records import parse_records

log = structlog.get_logger("cat_framework.trainer")


def run_train(
    pipeline: Pipeline, run_dir: Path, plugins: Plugins, resume: str | None = None
) -> dict[str, Any]:
    tc = pipeline.config.trainer
    need_frozen = needs_frozen_copy(pipeline)
    with training_run(pipeline, run_dir, plugins, resume, need_frozen=need_frozen) as run:
        roles = training_roles(pipeline, run.pool, run.placement)
        fallback = pipeline.component("trainer", "reference_fallback")
        teacher = Teacher(
            build_component(pipeline, "aggregator", roles=roles),  # type: ignore[arg-type]
            build_component(pipeline, "reward", roles=roles),  # type: ignore[arg-type]
            fallback.build(roles=roles) if fallback else None,  # type: ignore[arg-type]
        )
        start = run.prepare(tc.steps * tc.num_iterations, ("metrics.jsonl", "records.jsonl"))
        step_fn = GRPOStep(
            run.placement, run.updater, teacher, pipeline.config.rollouts, tc,
            majority=majority_reading(pipeline, evaluation=False),
        )  # fmt: skip
        wants_eval = (tc.eval_every or tc.eval_before) and pipeline.config.data.eval
        evaluator = PeriodicEval(pipeline, roles, run_dir) if wants_eval else None
        if evaluator is not None and tc.eval_before and start == 0:
            row = {"step": 0, **evaluator.everywhere(0, run.acc, run.placement.settle)}
            if run.acc.is_main_process:
                run.log_metrics(0, row)
        last = _steps(run, step_fn, evaluator, start)
        final = run.finish()
    return {"steps": tc.steps, "final_model": str(final) if final else None, "last_metrics": last}


def _steps(
    run: TrainingRun, step_fn: GRPOStep, evaluator: PeriodicEval | None, start: int
) -> dict[str, float]:
    """The step loop from ``start + 1``; the last step's metrics."""
    tc, acc = run.cfg.trainer, run.acc
    task = str(run.prompts[0].meta.get("task", "math"))
    last: dict[str, float] = {}
    with StepProgress(tc.steps, start, enabled=acc.is_main_process) as bar:
        for step in range(start + 1, tc.steps + 1):
            planned = run.plan(step)
            assert planned is not None
            out = step_fn(*planned, step)
            records = gather_records(acc, out.records)
            teacher = teacher_metrics(parse_records(records, "step records"), task)
            metrics = {"step": step, **out.metrics, **teacher}
            if evaluator is not None and tc.eval_every and step % tc.eval_every == 0:
                metrics.update(evaluator.everywhere(step, acc, run.placement.settle))
            run.finish_step(step, metrics, records, tc.steps)
            bar.update(step, metrics)
            last = metrics
    return last


__all__ = ["run_train"]
