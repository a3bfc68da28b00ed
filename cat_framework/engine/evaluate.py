"""Evaluation: test-time CaT (``mode: evaluate``) and a training run's periodic evaluation.

Test-time CaT (``mode: evaluate``): one set of rollouts, every aggregator, scored against gold.

For each batch of prompts the policy samples G rollouts once; each listed aggregator builds its
reference from the same rollouts; references are graded against gold (math: answer equivalence;
freeform: the ``eval.scorer`` reward deriver, e.g. physician rubrics). Records are appended per
batch, so an interrupted run keeps its work and ``--resume`` skips finished prompts; seeds and
batches depend only on (seed, prompt id) and the full prompt list, so a resumed evaluation, an
uninterrupted one and the trainer's step-0 evaluation sample the same rollouts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from cat_framework.answers import answers_equivalent
from cat_framework.components import Aggregator, Backend, RewardDeriver, Roles
from cat_framework.engine.diagnostics import (
    MajorityReading,
    majority_reading,
    reference_diagnostics,
)
from cat_framework.engine.eval_table import print_table
from cat_framework.engine.files import atomic_write_text
from cat_framework.engine.progress import phase, track
from cat_framework.engine.record_builder import build_record
from cat_framework.engine.schedule import derive_seed
from cat_framework.engine.split_prompts import split_prompts
from cat_framework.engine.stats import bootstrap_ci, mean
from cat_framework.engine.teacher import explore
from cat_framework.errors import CatError
from cat_framework.pipeline import Pipeline
from cat_framework.pipeline.build import BackendPool, build_roles
from cat_framework.plugins import Plugins
from cat_framework.records import parse_records, read_jsonl
from cat_framework.types import Completion, Prompt, Reference, RolloutGroup

log = structlog.get_logger("cat_framework.evaluate")


def labels_for(names: Sequence[str]) -> list[str]:
    """Column labels: the aggregator's name, numbered when a name appears more than once."""
    return [n if names.count(n) == 1 else f"{n}[{i}]" for i, n in enumerate(names)]


class GoldScorer:
    """Grades references against a prompt's gold data (evaluation only; the teacher never sees
    it). A math reference is graded on the answer it *committed* to (``Reference.answer``):
    its text is never searched for a last number. A freeform score may be ``None`` when the
    scorer could not grade it (an unscorable judge verdict): it is counted, never made 0."""

    def __init__(self, task: str, scorer: RewardDeriver | None) -> None:
        self.task = task
        self.scorer = scorer

    def score(
        self, prompts: Sequence[Prompt], refs: Sequence[Reference]
    ) -> tuple[list[float | None], list[dict[str, Any]]]:
        """One score per reference, plus the grading details (e.g. per-criterion verdicts)."""
        if self.task == "math" or self.scorer is None:
            scores: list[float | None] = [
                float(answers_equivalent(r.answer, p.gold_answer))
                for p, r in zip(prompts, refs, strict=True)
            ]
            return scores, [{} for _ in scores]
        groups = [
            RolloutGroup(p, (Completion(text=r.text),)) for p, r in zip(prompts, refs, strict=True)
        ]
        rewards = self.scorer.derive(groups, refs)
        return [rw.values[0] for rw in rewards], [dict(rw.details[0]) for rw in rewards]


@dataclass
class Evaluation:
    """Everything one evaluation needs; ``mode: evaluate`` and the trainer's periodic
    evaluation build it the same way, so step 0 of training reproduces ``mode: evaluate``."""

    pipeline: Pipeline
    policy: Backend
    aggregators: list[tuple[str, Aggregator]]
    scorer: GoldScorer
    labels: list[str]
    majority: MajorityReading  # the diagnostics' majority vote: the run's own

    @classmethod
    def build(cls, pipeline: Pipeline, roles: Roles, task: str) -> Evaluation:
        cfg = pipeline.config
        specs = [
            pipeline.component("eval", "aggregators", i) for i in range(len(cfg.eval.aggregators))
        ]
        if any(s is None for s in specs):
            raise CatError("eval.aggregators could not be resolved: run `cat-framework validate`")
        labels = labels_for([s.name for s in specs if s is not None])
        aggregators = [
            (lab, s.build(roles=roles)) for lab, s in zip(labels, specs, strict=True) if s
        ]
        scorer_comp = pipeline.component("eval", "scorer")
        scorer = GoldScorer(task, scorer_comp.build(roles=roles) if scorer_comp else None)
        majority = majority_reading(pipeline, evaluation=True)
        return cls(pipeline, roles.policy, aggregators, scorer, labels, majority)  # type: ignore[arg-type]

    @property
    def levels(self) -> dict[str, str | None]:
        """Each estimator's answer level (its ``fallback``; ``None`` for one without it)."""
        return {label: getattr(agg.params, "fallback", None) for label, agg in self.aggregators}

    def seeds(self, prompts: Sequence[Prompt]) -> list[int]:
        """Sampling seeds: a pure function of (seed, prompt id), never of a prompt's position
        in what is left to do, so a resumed evaluation samples what an uninterrupted one did."""
        return [derive_seed(self.pipeline.config.seed, "eval", p.id) for p in prompts]

    def batch(self, prompts: Sequence[Prompt]) -> list[dict[str, Any]]:
        """Rollouts once, every aggregator on them, graded: one record per prompt."""
        cfg = self.pipeline.config
        t0 = time.perf_counter()
        phase("rollouts")
        groups = explore(self.policy, prompts, cfg.rollouts, seeds=self.seeds(prompts))
        timings = {"rollouts": time.perf_counter() - t0}
        refs: dict[str, list[Reference]] = {}
        scores: dict[str, list[float | None]] = {}
        grading: dict[str, list[dict[str, Any]]] = {}
        for label, agg in self.aggregators:
            t = time.perf_counter()
            phase(f"reference {label}")
            refs[label] = agg.aggregate(groups)
            if len(refs[label]) != len(groups):
                raise CatError(
                    f"aggregator {label!r} returned {len(refs[label])} references for "
                    f"{len(groups)} prompts"
                )
            scores[label], grading[label] = self.scorer.score(prompts, refs[label])
            timings[label] = time.perf_counter() - t
        log.info(
            "evaluated batch",
            prompts=len(prompts),
            **{f"time/{k}": round(v, 2) for k, v in timings.items()},
        )
        return [
            build_record(
                "evaluate", 0, g, {lab: refs[lab][i] for lab in refs}, None,
                scores={lab: scores[lab][i] for lab in refs},
                grading={lab: grading[lab][i] for lab in refs},
                n_trained=cfg.rollouts.n, majority=self.majority,
            ).to_dict()
            for i, g in enumerate(groups)
        ]  # fmt: skip

    def batches(self, prompts: Sequence[Prompt], done: Set[str]) -> Iterator[list[Prompt]]:
        """The undone prompts, in the batches an uninterrupted run forms (``eval.batch_size``
        consecutive prompts of the full list), so batch composition is the same after resume."""
        bs = self.pipeline.config.eval.batch_size
        for start in range(0, len(prompts), bs):
            todo = [p for p in prompts[start : start + bs] if p.id not in done]
            if todo:
                yield todo


def summarize(
    records: Sequence[dict[str, Any]],
    labels: Sequence[str],
    task: str,
    resamples: int,
    confidence: float,
) -> dict[str, Any]:
    """Per-aggregator score with bootstrap CI, rollout accuracy and pass@G, and the reference
    diagnostics of every aggregator (whatever its name)."""
    parsed = parse_records(records, "records")
    out: dict[str, Any] = {"task": task, "prompts": len(parsed), "aggregators": {}}
    for label in labels:
        raw = [r.references[label].score for r in parsed if label in r.references]
        values = [float(v) for v in raw if v is not None]
        lo, hi = bootstrap_ci(values, resamples, confidence)
        score = mean(values)
        if task == "freeform":  # HealthBench: the benchmark mean is clipped to [0, 1]
            score, lo, hi = (min(1.0, max(0.0, x)) for x in (score, lo, hi))
        out["aggregators"][label] = {
            "score": score,
            "ci_low": lo,
            "ci_high": hi,
            "n": len(values),
            "unscorable": len(raw) - len(values),
        }
    if not parsed:
        return out
    out["diagnostics"] = {
        label: reference_diagnostics(parsed, label, task=task) for label in labels
    }
    if task != "math":
        return out
    # the policy's own accuracy over the G = n rollouts GRPO would train on (with
    # ``rollouts.reference_n`` the extra samples only feed the references)
    correct = [[bool(ro.correct) for ro in r.rollouts if ro.trained] for r in parsed]
    pass_g = [any(c) for c in correct]
    out["rollouts"] = {
        "accuracy": mean([mean([float(x) for x in c]) for c in correct if c]),
        "pass_at_g": mean([float(x) for x in pass_g]),
        "all_wrong": sum(not x for x in pass_g),
    }
    return out


class PeriodicEval:
    """``trainer.eval_every`` / ``eval_before`` and CaT-SFT's final evaluation:
    :class:`Evaluation` (the very computation of ``mode: evaluate``) on ``data.eval`` with the
    current policy, written to ``eval/step-NNNNNN.{jsonl,json}``."""

    def __init__(self, pipeline: Pipeline, roles: Roles, run_dir: Path) -> None:
        self.out = run_dir / "eval"
        dataset, self.prompts = split_prompts(pipeline, "eval")
        self.pipeline = pipeline
        self.task = dataset.task_kind
        self.evaluation = Evaluation.build(pipeline, roles, self.task)

    def __call__(self, step: int) -> dict[str, float]:
        """Evaluate now (main process only) and return the summary as flat metrics."""
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
        print_table(summary, cfg.eval.confidence, self.evaluation.levels, step=step)
        return flat_metrics(summary)

    def everywhere(
        self, step: int, accelerator: Any, settle: Callable[[], None]
    ) -> dict[str, float]:
        """Every process calls this: the main one evaluates while the others ``settle`` (keep
        lock-step generation going until it is done); the main one's metrics, ``{}`` elsewhere."""
        metrics = self(step) if accelerator.is_main_process else {}
        settle()
        accelerator.wait_for_everyone()
        return metrics


def run_evaluate(
    pipeline: Pipeline, run_dir: Path, plugins: Plugins, resume: str | None = None
) -> dict[str, Any]:
    cfg = pipeline.config
    dataset, prompts = split_prompts(pipeline, "eval")
    if not prompts:
        raise CatError(f"data.eval ({dataset.name}) has no prompts to evaluate")
    records_path = run_dir / "records.jsonl"
    done: dict[str, dict[str, Any]] = {}
    if resume:
        rows = read_jsonl(records_path)
        for rec, row in zip(parse_records(rows, str(records_path)), rows, strict=True):
            known = rec.to_dict()  # fields this release does not know (a plugin's) are kept
            done[rec.prompt_id] = {**{k: v for k, v in row.items() if k not in known}, **known}
        # drop a line a crash may have cut, atomically: a kill here never loses a record
        atomic_write_text(records_path, "".join(json.dumps(r) + "\n" for r in done.values()))
    pool = BackendPool()
    try:
        roles: Roles = build_roles(pipeline, pool)
        evaluation = Evaluation.build(pipeline, roles, dataset.task_kind)
        todo = sum(p.id not in done for p in prompts)
        log.info("evaluate", prompts=len(prompts), todo=todo, aggregators=evaluation.labels)
        with records_path.open("a" if resume else "w", encoding="utf-8") as f:
            for batch in track(evaluation.batches(prompts, set(done)), "evaluate"):
                for rec in evaluation.batch(batch):
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    done[rec["prompt_id"]] = rec
                f.flush()
    finally:
        pool.close()
    ordered = [done[p.id] for p in prompts if p.id in done]
    summary = summarize(
        ordered, evaluation.labels, dataset.task_kind, cfg.eval.bootstrap, cfg.eval.confidence
    )
    atomic_write_text(run_dir / "metrics.json", json.dumps(summary, indent=2))
    print_table(summary, cfg.eval.confidence, evaluation.levels)
    plugins.notify(
        "on_step_end", run_dir=str(run_dir.resolve()), step=0, metrics=flat_metrics(summary)
    )
    return {"metrics": str(run_dir / "metrics.json"), "records": str(records_path)}


def flat_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """A :func:`summarize` result as flat ``eval/...`` scalars (observers, ``metrics.jsonl``)."""
    flat: dict[str, float] = {}
    for label, s in summary["aggregators"].items():
        for key in ("score", "ci_low", "ci_high", "n", "unscorable"):
            if key in s:
                flat[f"eval/{label}/{key}"] = float(s[key])
    for key, value in summary.get("rollouts", {}).items():
        flat[f"eval/rollouts/{key}"] = float(value)
    for label, diag in summary.get("diagnostics", {}).items():
        for key, value in diag.items():
            flat[f"eval/{label}/{key}"] = float(value)
    return flat
