"""The paper's tables at CPU scale, on the arithmetic task the embedded model partly solves.

Runs, one after another, in this process (pin it: ``OMP_NUM_THREADS=1 taskset -c 1``):

1. test-time table (Fig. 6 analogue): single, majority, minPPL, Self-BoN and synthesis on the same
   G rollouts of each test problem, every estimator pair compared on the same problems
   (McNemar exact, paired bootstrap, Holm) (``arithmetic_test_time.yaml``);
2. training arms (Fig. 4 analogue), for each seed: CaT-RL (synthesis), TTRL (majority) and an
   oracle rewarded against gold labels (clearly an upper bound that uses labels), all from the
   same initial policy; the untrained arm is the CaT-RL run's step-0 evaluation. Every arm pair
   is compared on the same held-out problems, pooled over seeds.

Training problems come from the ``train`` split (a different draw per seed), evaluation problems
from ``test``: disjoint by construction, and checked here on the runs' own records
(``data_check`` in the results: duplicates within each evaluation set, overlap with every
question trained on). Writes ``results.json`` (every number, with machine and wall times),
``results.md`` (the tables), ``outcomes/*.jsonl`` (every problem's outcome per estimator, arm
and seed), ``compare.html`` (``cat-framework compare`` of all runs) and PNG plots to ``--out``.
Results are written after every stage, so an interrupted run leaves what finished.
``--quick`` is a tiny configuration for CI (a few minutes on 2 cores), checked for structure
only: its numbers mean nothing.

    python benchmarks/cpu_paper_tables.py                    # the committed experiment
    python benchmarks/cpu_paper_tables.py --quick --out /tmp/q --runs /tmp/q/runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cat_framework import Aggregator, Reference, RolloutGroup, hookimpl, load_plugins
from cat_framework.pipeline import load_pipeline
from cat_framework.report.load import load_run
from cat_framework.runner import run_pipeline

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # its sibling module, when loaded by path (tests) as when run
from cpu_paper_tables_outcomes import (  # noqa: E402
    arm_pairs,
    arm_table,
    data_check,
    estimator_pairs,
    eval_outcomes,
    record_keys,
    test_time_outcomes,
    trained_questions,
    versus_majority,
    write_jsonl,
)
from cpu_paper_tables_output import markdown, plots  # noqa: E402

PIPELINES = HERE / "cpu_experiments"
DEFAULT_OUT = HERE / "results" / "cpu_paper_tables"
ARMS = {"cat-rl": "arithmetic_cat_rl.yaml", "ttrl": "arithmetic_ttrl.yaml"}
ARMS["oracle (gold labels)"] = "arithmetic_oracle.yaml"
TEST_TIME = ["single", "majority", "minppl", "best_of_n", "synthesis"]

#: the untrained arm: the initial policy, evaluated as the CaT-RL run's step 0
UNTRAINED = "untrained"

#: the committed experiment: one-digit numbers, two operations ("What is 7 - 3 + 5?"), whose
#: splits hold 876 (train) and 872 (test) distinct problems, disjoint by construction
FULL = {
    "difficulty": {"digits": 1, "operations": 2},
    "test_time": {"problems": 300, "G": 4},
    "training": {"seeds": [0, 1, 2], "steps": 12, "G": 4, "prompts_per_step": 4,
                 "eval_problems": 100},
    "max_new_tokens": 64,
}  # fmt: skip
QUICK = {
    "difficulty": {"digits": 1, "operations": 2},
    "test_time": {"problems": 3, "G": 2},
    "training": {"seeds": [0, 1], "steps": 1, "G": 2, "prompts_per_step": 2,
                 "eval_problems": 2},
    "max_new_tokens": 12,
}  # fmt: skip


class GoldAggregator(Aggregator):
    """ORACLE, USES LABELS: the reference is the gold answer (the upper-bound arm only)."""

    name = "gold"
    tasks = frozenset({"math"})

    def aggregate(self, groups: Sequence[RolloutGroup]) -> list[Reference]:
        return [
            Reference(
                text=f"\\boxed{{{g.prompt.gold_answer}}}",
                method=self.name,
                answer=g.prompt.gold_answer,
            )
            for g in groups
        ]


class OraclePlugin:
    @hookimpl
    def register_aggregators(self, register: Any) -> None:
        register(GoldAggregator)


def machine() -> dict[str, Any]:
    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu": cpu,
        "cores_visible": os.cpu_count(),
        "cores_used": affinity,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def run(
    plugins: Any, pipeline: str, overrides: list[str], run_dir: Path, reuse: bool | str
) -> Path | None:
    """One pipeline run. With ``reuse``, a completed run already in ``run_dir`` is kept and an
    unfinished ``evaluate`` run is resumed (its finished prompts are not redone); with
    ``reuse="collect"`` nothing runs: None for a run that is not complete."""
    status = run_dir / "status.json"
    pipe = load_pipeline(PIPELINES / pipeline, overrides, plugins=plugins)
    if reuse and status.is_file() and json.loads(status.read_text()).get("status") == "completed":
        print(f"reusing {run_dir}", flush=True)
        return run_dir
    if reuse == "collect":
        print(f"not complete, left out: {run_dir}", flush=True)
        return None
    if reuse and pipe.config.mode == "evaluate" and (run_dir / "records.jsonl").is_file():
        # killed (no status.json) or failed: keep its finished prompts
        run_pipeline(pipe, plugins=plugins, resume=str(run_dir))
        return run_dir
    run_pipeline(pipe, plugins=plugins, run_dir=str(run_dir), overwrite=True)
    return run_dir


def run_wall(run_dir: Path) -> float | None:
    """Seconds from the run's first to its last log line (true also for a reused run)."""
    log = load_run(run_dir, max_prompts=0).log
    if log is None or not log.started or not log.ended:
        return None
    from datetime import datetime

    start, end = datetime.fromisoformat(log.started), datetime.fromisoformat(log.ended)
    return round((end - start).total_seconds(), 1)


def cell(row: dict[str, float], label: str) -> dict[str, float | None]:
    return {k: row.get(f"eval/{label}/{k}") for k in ("score", "ci_low", "ci_high", "n")}


def lenient_scores(run_dir: Path) -> dict[str, dict[str, float]]:
    """POST-HOC, NOT THE FRAMEWORK'S RULE: each reference's text read at the ``number`` level
    (its last number counts as its answer), as ``single`` reads a rollout. The framework reads a
    reference at most at ``phrase``; a 135M anchor rarely commits ("3 - 1 = 2"), so this shows
    how much of a gap is answer commitment rather than the choice of reference."""
    from cat_framework.answers import answers_equivalent, extract_answer
    from cat_framework.engine.stats import bootstrap_ci

    hits: dict[str, list[float]] = {}
    for line in (run_dir / "records.jsonl").read_text().splitlines():
        rec = json.loads(line)
        for label, ref in rec["references"].items():
            answer = extract_answer(ref["text"], fallback="number")
            ok = answer is not None and answers_equivalent(answer, rec["gold_answer"])
            hits.setdefault(label, []).append(float(ok))
    out = {}
    for label, xs in hits.items():
        lo, hi = bootstrap_ci(xs)
        out[label] = {"score": sum(xs) / len(xs), "ci_low": lo, "ci_high": hi, "n": len(xs)}
    return out


def test_time_numbers(run_dir: Path) -> dict[str, Any]:
    summary = json.loads((run_dir / "metrics.json").read_text())
    return {
        "estimators": summary["aggregators"],
        "diagnostics": summary.get("diagnostics", {}),
        "rollouts": summary.get("rollouts", {}),
        "estimators_read_at_number_level": lenient_scores(run_dir),
    }


def write_outputs(out: Path, results: dict[str, Any], run_dirs: list[Path]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results))
    if run_dirs:
        from cat_framework.report.compare_page import write_compare

        write_compare(run_dirs, out / "compare.html")
    plots(out, results)


def difficulty(cfg: dict[str, Any], section: str) -> list[str]:
    return [f"data.{section}.{k}={v}" for k, v in cfg["difficulty"].items()]


def test_time_stage(
    plugins: Any, cfg: dict, args: Any, reuse: bool | str, results: dict
) -> Path | None:
    tt = cfg["test_time"]
    overrides = [f"data.eval.limit={tt['problems']}", f"rollouts.n={tt['G']}",
                 f"rollouts.max_new_tokens={cfg['max_new_tokens']}", *difficulty(cfg, "eval")]  # fmt: skip
    d = run(plugins, "arithmetic_test_time.yaml", overrides, args.runs / "test-time", reuse)
    if d is None:
        results["missing"].append("test-time")
        return None
    outcomes = test_time_outcomes(d)
    write_jsonl(args.out / "outcomes" / "test_time.jsonl", outcomes)
    results["test_time"] = {
        **test_time_numbers(d),
        "pairs": estimator_pairs(outcomes, TEST_TIME),
        "versus_majority": versus_majority(outcomes, TEST_TIME),
    }
    results["wall_s"]["test-time"] = run_wall(d)
    return d


def held_out_keys(dirs: list[Path], steps: int) -> list[str]:
    """The held-out questions as evaluated (repeats kept, so duplicates show); every arm and
    seed must have evaluated the same ones, or the pairing would be void."""
    found = [record_keys(d / "eval" / f"step-{steps:06d}.jsonl") for d in dirs]
    if any(sorted(f) != sorted(found[0]) for f in found):
        raise SystemExit("the training runs did not evaluate the same held-out problems")
    return found[0] if found else []


def training_stage(
    plugins: Any, cfg: dict, args: Any, reuse: bool | str, results: dict
) -> list[Path]:
    """Each seed: the three arms from the same initial policy; the untrained arm is the CaT-RL
    run's step-0 evaluation. Training prompts differ by seed; the held-out problems do not."""
    tc, dirs = cfg["training"], []
    per_arm: dict[str, dict[int, list[dict[str, Any]]]] = {UNTRAINED: {}, **{a: {} for a in ARMS}}
    rows: list[dict[str, Any]] = []
    trained: set[str] = set()
    for seed in args.seeds or tc["seeds"]:
        for arm, pipeline in ARMS.items():
            overrides = [
                f"seed={seed}", f"data.train.seed={seed}", f"data.eval.limit={tc['eval_problems']}",
                f"trainer.steps={tc['steps']}", f"trainer.eval_every={tc['steps']}",
                f"trainer.eval_before={'true' if arm == 'cat-rl' else 'false'}",
                f"rollouts.n={tc['G']}", f"trainer.prompts_per_step={tc['prompts_per_step']}",
                f"rollouts.max_new_tokens={cfg['max_new_tokens']}",
                *difficulty(cfg, "train"), *difficulty(cfg, "eval"),
            ]  # fmt: skip
            d = run(plugins, pipeline, overrides, args.runs / f"{arm.split()[0]}-seed{seed}", reuse)
            if d is None:
                results["missing"].append(f"training {arm} seed {seed}")
                continue
            dirs.append(d)
            trained |= trained_questions(d)
            results["wall_s"][f"training {arm} seed {seed}"] = run_wall(d)
            evaluated = {arm: eval_outcomes(d, tc["steps"])}
            if arm == "cat-rl":
                evaluated[UNTRAINED] = eval_outcomes(d, 0)
            for name, outcomes in evaluated.items():
                per_arm[name][seed] = outcomes
                rows += [{"arm": name, "seed": seed, **o} for o in outcomes]
    write_jsonl(args.out / "outcomes" / "training.jsonl", rows)
    per_arm = {a: s for a, s in per_arm.items() if s}
    held_out = held_out_keys(dirs, tc["steps"])
    results["training"] = {"arms": arm_table(per_arm), "pairs": arm_pairs(per_arm)}
    results["data_check"] = {"held_out": held_out, "trained": trained}
    return dirs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny CI configuration")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where results go")
    ap.add_argument("--runs", type=Path, default=Path("runs/cpu_paper_tables"), help="run dirs")
    ap.add_argument("--stages", default="test-time,training", help="which, in order")
    ap.add_argument("--reuse", action="store_true", help="reuse completed run directories")
    ap.add_argument(
        "--seeds",
        type=lambda text: [int(x) for x in text.split(",")],
        help="training seeds to run here (e.g. 2 in a second process); default: all",
    )
    ap.add_argument(
        "--collect", action="store_true", help="run nothing: tabulate the completed runs only"
    )
    args = ap.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(stages) - {"test-time", "training"}
    if unknown:
        ap.error(f"--stages: unknown {sorted(unknown)}; use test-time, training")
    plugins = load_plugins(extra=[("cpu_paper_tables", OraclePlugin())])
    results: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "settings": cfg,
        # --collect tabulates runs made earlier, maybe by other processes: not this one's threads
        "machine": {**machine(), "tabulated_only": True} if args.collect else machine(),
        "wall_s": {},
        "missing": [],
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
    }
    run_dirs: list[Path] = []
    reuse: bool | str = "collect" if args.collect else args.reuse
    checked: dict[str, list[str]] = {}
    trained: set[str] = set()
    for stage in stages:
        if stage == "test-time":
            d = test_time_stage(plugins, cfg, args, reuse, results)
            if d is not None:
                run_dirs.append(d)
                checked["test_time"] = record_keys(d / "records.jsonl")
        else:
            run_dirs += training_stage(plugins, cfg, args, reuse, results)
            found = results.pop("data_check")
            checked["held_out"], trained = found["held_out"], found["trained"]
        results["data_check"] = data_check(checked, trained)
        write_outputs(args.out, results, run_dirs)
    print(f"results: {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
