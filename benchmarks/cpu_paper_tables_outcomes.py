"""Per-problem outcomes of ``cpu_paper_tables.py``'s runs, the data check, and the paired tests.

Every comparison is paired: two estimators read the same G rollouts of the same problems, and
two training arms are evaluated on the same held-out problems, so each test works on per-item
differences (McNemar on right/wrong; paired bootstrap and sign-flip on per-problem rollout
accuracy) and each family of tests gets Holm's correction.
"""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path
from typing import Any

from cat_framework.engine.data_overlap import question_key
from cat_framework.engine.paired_stats import holm, mcnemar_exact, paired_bootstrap, sign_flip_p
from cat_framework.engine.stats import bootstrap_ci
from cat_framework.types import Prompt


def question(record: dict[str, Any]) -> str:
    """What the model was asked (the user turn), for a reader of the outcomes."""
    return " ".join(m["content"] for m in record["messages"] if m["role"] == "user").strip()


def same_question(record: dict[str, Any]) -> str:
    """The key under which two records ask the same question: the product's own definition
    (:func:`cat_framework.engine.data_overlap.question_key`), as a run's ``data.json`` uses."""
    return question_key(Prompt(id=record["prompt_id"], messages=tuple(record["messages"])))


def record_keys(path: Path) -> list[str]:
    """The question key of every record in a records file, in order (repeats kept)."""
    return [same_question(r) for r in _rows(path)]


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def problem_outcome(record: dict[str, Any]) -> dict[str, Any]:
    """One evaluated problem: each estimator right or wrong, and its rollouts' correctness."""
    rollouts = [bool(r.get("correct")) for r in record["rollouts"]]
    return {
        "problem": record["prompt_id"],
        "question": question(record),
        "gold": record["gold_answer"],
        "correct": {k: bool(v.get("correct")) for k, v in record["references"].items()},
        "answer": {k: v.get("answer") for k, v in record["references"].items()},
        "rollouts_correct": sum(rollouts),
        "rollouts": len(rollouts),
    }


def test_time_outcomes(run_dir: Path) -> list[dict[str, Any]]:
    return [problem_outcome(r) for r in _rows(run_dir / "records.jsonl")]


def eval_outcomes(run_dir: Path, step: int) -> list[dict[str, Any]]:
    """The held-out evaluation a training run made at ``step``."""
    return [problem_outcome(r) for r in _rows(run_dir / "eval" / f"step-{step:06d}.jsonl")]


def trained_questions(run_dir: Path) -> set[str]:
    """Every question GRPO trained on in a run (its training records)."""
    return {same_question(r) for r in _rows(run_dir / "records.jsonl") if r.get("mode") == "train"}


def data_check(evaluated: dict[str, list[str]], trained: set[str]) -> dict[str, Any]:
    """Checked, not assumed: duplicates within each evaluation set and overlap with training."""
    out: dict[str, Any] = {"trained_distinct": len(trained)}
    for name, questions in evaluated.items():
        out[name] = {
            "problems": len(questions),
            "distinct": len(set(questions)),
            "also_trained_on": len(set(questions) & trained),
        }
    return out


def accuracy(xs: list[float]) -> dict[str, float]:
    lo, hi = bootstrap_ci(xs, resamples=2000)
    return {"score": sum(xs) / len(xs), "ci_low": lo, "ci_high": hi, "n": len(xs)}


def versus_majority(outcomes: list[dict[str, Any]], labels: list[str]) -> dict[str, Any]:
    """Per estimator, computed here from the outcomes (the majority is the run's own majority
    estimator, which reads answers as the others do): how often its answer differs from the
    majority's, how often it is right then, and how often it is right when every rollout was
    wrong (only a reference that is not one of the rollouts' answers can be)."""
    from cat_framework.answers import answers_equivalent

    out = {}
    all_wrong = [o for o in outcomes if o["rollouts_correct"] == 0]
    for label in labels:
        differs = [
            o for o in outcomes
            if o["answer"][label] is None or o["answer"]["majority"] is None
            or not answers_equivalent(o["answer"][label], o["answer"]["majority"])
        ]  # fmt: skip
        out[label] = {
            "no_answer": sum(o["answer"][label] is None for o in outcomes),
            "disagrees": len(differs),
            "right_when_disagreeing": sum(o["correct"][label] for o in differs),
            "all_rollouts_wrong": len(all_wrong),
            "right_when_all_wrong": sum(o["correct"][label] for o in all_wrong),
            "problems": len(outcomes),
        }
    return out


def estimator_pairs(outcomes: list[dict[str, Any]], labels: list[str]) -> list[dict[str, Any]]:
    """Every estimator pair on the same problems: McNemar exact, paired bootstrap of the
    accuracy difference, Holm-adjusted over the family."""
    rows = []
    for a, b in combinations(labels, 2):
        xa = [o["correct"][a] for o in outcomes]
        xb = [o["correct"][b] for o in outcomes]
        test = mcnemar_exact(xa, xb)
        diff, lo, hi = paired_bootstrap([float(x) for x in xa], [float(x) for x in xb])
        rows.append({"a": a, "b": b, "a_only": test.a_only, "b_only": test.b_only,
                     "diff": diff, "ci_low": lo, "ci_high": hi, "p": test.p})  # fmt: skip
    for row, adjusted in zip(rows, holm([r["p"] for r in rows]), strict=True):
        row["p_holm"] = adjusted
    return rows


def arm_table(per_arm: dict[str, dict[int, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Per arm: each seed's accuracies (one sample, majority, rollouts) and their mean."""
    out = {}
    for arm, seeds in per_arm.items():
        by_seed = {}
        for seed, outcomes in seeds.items():
            by_seed[seed] = {
                "single": accuracy([float(o["correct"]["single"]) for o in outcomes]),
                "majority": accuracy([float(o["correct"]["majority"]) for o in outcomes]),
                "rollouts": accuracy([o["rollouts_correct"] / o["rollouts"] for o in outcomes]),
            }
        out[arm] = {
            "seeds": by_seed,
            "mean": {
                k: sum(s[k]["score"] for s in by_seed.values()) / len(by_seed)
                for k in ("single", "majority", "rollouts")
            },
        }
    return out


def arm_pairs(per_arm: dict[str, dict[int, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """Every arm pair on the same held-out problems, pooled over seeds.

    Rollout accuracy: each problem's share of right rollouts averaged over the seeds (G x seeds
    samples a problem), compared per problem (paired bootstrap, sign-flip test). Majority: right
    or wrong per (problem, seed), McNemar exact. Holm within each of the two families.
    """
    rows = []
    for a, b in combinations(per_arm, 2):
        seeds = sorted(set(per_arm[a]) & set(per_arm[b]))
        ra, rb = _per_problem_rollouts(per_arm[a], seeds), _per_problem_rollouts(per_arm[b], seeds)
        problems = sorted(set(ra) & set(rb))
        xa, xb = [ra[p] for p in problems], [rb[p] for p in problems]
        diff, lo, hi = paired_bootstrap(xa, xb)
        ma, mb = _majority_pairs(per_arm[a], per_arm[b], seeds)
        test = mcnemar_exact(ma, mb)
        rows.append({
            "a": a, "b": b, "seeds": seeds, "problems": len(problems),
            "rollouts": {"diff": diff, "ci_low": lo, "ci_high": hi, "p": sign_flip_p(xa, xb)},
            "majority": {"a_only": test.a_only, "b_only": test.b_only, "pairs": len(ma),
                         "diff": (sum(ma) - sum(mb)) / len(ma), "p": test.p},
        })  # fmt: skip
    for family in ("rollouts", "majority"):
        for row, adjusted in zip(rows, holm([r[family]["p"] for r in rows]), strict=True):
            row[family]["p_holm"] = adjusted
    return rows


def _per_problem_rollouts(seeds: dict[int, list[dict[str, Any]]], use: list[int]) -> dict:
    right: dict[str, list[float]] = {}
    for seed in use:
        for o in seeds[seed]:
            right.setdefault(o["problem"], []).append(o["rollouts_correct"] / o["rollouts"])
    return {p: sum(v) / len(v) for p, v in right.items() if len(v) == len(use)}


def _majority_pairs(a: dict, b: dict, seeds: list[int]) -> tuple[list[bool], list[bool]]:
    xa, xb = [], []
    for seed in seeds:
        other = {o["problem"]: o for o in b[seed]}
        for o in a[seed]:
            if o["problem"] in other:
                xa.append(o["correct"]["majority"])
                xb.append(other[o["problem"]]["correct"]["majority"])
    return xa, xb


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
