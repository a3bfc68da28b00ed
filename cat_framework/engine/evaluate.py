"""Test-time CaT (``mode: evaluate``): one set of rollouts, every aggregator, scored against gold.

For each batch of prompts the policy samples G rollouts once; each listed aggregator builds its
reference from the same rollouts; references are graded against gold (math: answer equivalence;
freeform: the ``eval.scorer`` reward deriver, e.g. physician rubrics). Records are appended per
batch, so an interrupted run keeps its work and ``--resume`` skips finished prompts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from cat_framework.answers import answers_equivalent, extract_answer
from cat_framework.components import Aggregator, Backend, Dataset, RewardDeriver, Roles
from cat_framework.engine.stats import bootstrap_ci, mean
from cat_framework.engine.teacher import explore
from cat_framework.pipeline import Pipeline
from cat_framework.pipeline.build import BackendPool, build_component, build_roles
from cat_framework.plugins import Plugins
from cat_framework.types import Completion, Prompt, Reference, RolloutGroup

log = structlog.get_logger("cat_framework.evaluate")


def labels_for(names: Sequence[str]) -> list[str]:
    """Column labels: the aggregator's name, numbered when a name appears more than once."""
    return [n if names.count(n) == 1 else f"{n}[{i}]" for i, n in enumerate(names)]


def load_prompts(dataset: Dataset, limit: int | None) -> list[Prompt]:
    """The dataset's prompts (first ``limit``), tagged with the task so templates can adapt."""
    prompts = dataset.load()[:limit] if limit else dataset.load()
    task = dataset.task_kind
    return [
        p
        if p.meta.get("task")
        else Prompt(p.id, p.messages, p.gold_answer, p.rubric, {**p.meta, "task": task})
        for p in prompts
    ]


class GoldScorer:
    """Grades texts against a prompt's gold data (evaluation only; the teacher never sees it)."""

    def __init__(self, task: str, scorer: RewardDeriver | None) -> None:
        self.task = task
        self.scorer = scorer

    def answer(self, text: str) -> str | None:
        return extract_answer(text) if self.task == "math" else None

    def score(
        self, prompts: Sequence[Prompt], refs: Sequence[Reference]
    ) -> tuple[list[float], list[dict[str, Any]]]:
        """One score per reference, plus the grading details (e.g. per-criterion verdicts)."""
        if self.task == "math" or self.scorer is None:
            scores = [
                float(answers_equivalent(r.answer or extract_answer(r.text), p.gold_answer))
                for p, r in zip(prompts, refs, strict=True)
            ]
            return scores, [{} for _ in scores]
        groups = [
            RolloutGroup(p, (Completion(text=r.text),)) for p, r in zip(prompts, refs, strict=True)
        ]
        rewards = self.scorer.derive(groups, refs)
        return [rw.values[0] for rw in rewards], [dict(rw.details[0]) for rw in rewards]


def _rollout_record(c: Completion, scorer: GoldScorer, gold: str | None) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "text": c.text,
        "finish_reason": c.finish_reason,
        "tokens": len(c.token_ids),
    }
    if scorer.task == "math":
        rec["answer"] = scorer.answer(c.text)
        rec["correct"] = answers_equivalent(rec["answer"], gold)
    return rec


def evaluate_batch(
    prompts: Sequence[Prompt],
    policy: Backend,
    aggregators: Sequence[tuple[str, Aggregator]],
    scorer: GoldScorer,
    pipeline: Pipeline,
    seed: int,
) -> list[dict[str, Any]]:
    """Rollouts once, every aggregator on them, graded: one JSON record per prompt."""
    t0 = time.perf_counter()
    groups = explore(policy, prompts, pipeline.config.rollouts, seed)
    timings = {"rollouts": time.perf_counter() - t0}
    refs: dict[str, list[Reference]] = {}
    scores: dict[str, list[float]] = {}
    grading: dict[str, list[dict[str, Any]]] = {}
    for label, agg in aggregators:
        t = time.perf_counter()
        refs[label] = agg.aggregate(groups)
        scores[label], grading[label] = scorer.score(prompts, refs[label])
        timings[label] = time.perf_counter() - t
    records = []
    for i, g in enumerate(groups):
        rollouts = [_rollout_record(c, scorer, g.prompt.gold_answer) for c in g.rollouts]
        record: dict[str, Any] = {
            "prompt_id": g.prompt.id,
            "messages": list(g.prompt.messages),
            "gold_answer": g.prompt.gold_answer,
            "rollouts": rollouts,
            "references": {
                label: {
                    **refs[label][i].to_dict(),
                    "score": scores[label][i],
                    "grading": grading[label][i],
                }
                for label in refs
            },
        }
        if scorer.task == "math":
            record["pass_at_g"] = any(r["correct"] for r in rollouts)
            record["rollout_accuracy"] = mean([float(r["correct"]) for r in rollouts])
        records.append(record)
    log.info(
        "evaluated batch",
        prompts=len(prompts),
        **{f"time/{k}": round(v, 2) for k, v in timings.items()},
    )
    return records


def summarize(
    records: Sequence[dict[str, Any]],
    labels: Sequence[str],
    task: str,
    resamples: int,
    confidence: float,
) -> dict[str, Any]:
    """Per-aggregator score with bootstrap CI, rollout pass@G, and synthesis diagnostics."""
    out: dict[str, Any] = {"task": task, "prompts": len(records), "aggregators": {}}
    for label in labels:
        values = [float(r["references"][label]["score"]) for r in records]
        lo, hi = bootstrap_ci(values, resamples, confidence)
        score = mean(values)
        if task == "freeform":  # HealthBench: the benchmark mean is clipped to [0, 1]
            score, lo, hi = (min(1.0, max(0.0, x)) for x in (score, lo, hi))
        out["aggregators"][label] = {"score": score, "ci_low": lo, "ci_high": hi, "n": len(values)}
    if task != "math" or not records:
        return out
    all_wrong = [r for r in records if not r["pass_at_g"]]
    out["rollouts"] = {
        "accuracy": mean([r["rollout_accuracy"] for r in records]),
        "pass_at_g": mean([float(r["pass_at_g"]) for r in records]),
        "all_wrong": len(all_wrong),
    }
    diag: dict[str, Any] = {
        label: {
            "right_when_all_rollouts_wrong": sum(r["references"][label]["score"] for r in all_wrong)
        }
        for label in labels
    }
    if "synthesis" in labels and "majority" in labels:
        disagree = [
            r
            for r in records
            if not answers_equivalent(
                r["references"]["synthesis"].get("answer"),
                r["references"]["majority"].get("answer"),
            )
        ]
        diag["synthesis_vs_majority"] = {
            "disagree": len(disagree),
            "disagree_rate": len(disagree) / len(records),
            "synthesis_right": sum(r["references"]["synthesis"]["score"] for r in disagree),
            "majority_right": sum(r["references"]["majority"]["score"] for r in disagree),
        }
    out["diagnostics"] = diag
    return out


def print_table(summary: dict[str, Any], confidence: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"test-time CaT: {summary['prompts']} prompts ({summary['task']})")
    table.add_column("aggregator")
    table.add_column("score", justify="right")
    table.add_column(f"{confidence:.0%} CI", justify="right")
    for label, s in summary["aggregators"].items():
        table.add_row(label, f"{s['score']:.3f}", f"[{s['ci_low']:.3f}, {s['ci_high']:.3f}]")
    console = Console(stderr=True)
    console.print(table)
    if "rollouts" in summary:
        r = summary["rollouts"]
        console.print(f"rollout accuracy {r['accuracy']:.3f}, pass@G {r['pass_at_g']:.3f}")


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a crash: that prompt is redone
            continue
    return out


def run_evaluate(
    pipeline: Pipeline, run_dir: Path, plugins: Plugins, resume: str | None = None
) -> dict[str, Any]:
    cfg = pipeline.config
    dataset = build_component(pipeline, "data", "eval")
    assert isinstance(dataset, Dataset)
    prompts = load_prompts(dataset, cfg.eval.limit)
    records_path = run_dir / "records.jsonl"
    done = {r["prompt_id"]: r for r in read_records(records_path)} if resume else {}
    if resume:  # drop a line a crash may have cut, so appended records start on a fresh line
        records_path.write_text(
            "".join(json.dumps(r) + "\n" for r in done.values()), encoding="utf-8"
        )
    todo = [p for p in prompts if p.id not in done]
    pool = BackendPool()
    try:
        roles: Roles = build_roles(pipeline, pool)
        specs = [
            pipeline.component("eval", "aggregators", i) for i in range(len(cfg.eval.aggregators))
        ]
        labels = labels_for([s.name for s in specs if s is not None])
        aggregators = [
            (lab, s.build(roles=roles)) for lab, s in zip(labels, specs, strict=True) if s
        ]
        scorer_comp = pipeline.component("eval", "scorer")
        scorer = GoldScorer(
            dataset.task_kind, scorer_comp.build(roles=roles) if scorer_comp else None
        )
        log.info("evaluate", prompts=len(prompts), todo=len(todo), aggregators=labels)
        bs = cfg.eval.batch_size
        mode = "a" if resume else "w"
        with records_path.open(mode, encoding="utf-8") as f:
            for start in range(0, len(todo), bs):
                batch = todo[start : start + bs]
                for rec in evaluate_batch(
                    batch, roles.policy, aggregators, scorer, pipeline, cfg.seed + start
                ):
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    done[rec["prompt_id"]] = rec
                f.flush()
    finally:
        pool.close()
    ordered = [done[p.id] for p in prompts if p.id in done]
    summary = summarize(ordered, labels, dataset.task_kind, cfg.eval.bootstrap, cfg.eval.confidence)
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print_table(summary, cfg.eval.confidence)
    plugins.notify(
        "on_step_end", run_dir=str(run_dir.resolve()), step=0, metrics=flat_metrics(summary)
    )
    return {"metrics": str(run_dir / "metrics.json"), "records": str(records_path)}


def flat_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """A :func:`summarize` result as flat ``eval/...`` scalars (observers, ``metrics.jsonl``)."""
    flat: dict[str, float] = {}
    for label, s in summary["aggregators"].items():
        for key in ("score", "ci_low", "ci_high", "n"):
            flat[f"eval/{label}/{key}"] = float(s[key])
    for key, value in summary.get("rollouts", {}).items():
        flat[f"eval/rollouts/{key}"] = float(value)
    return flat
