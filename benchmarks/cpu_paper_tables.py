"""The paper's tables at CPU scale, on the arithmetic task the embedded model partly solves.

Runs, one after another, in this process (pin it: ``OMP_NUM_THREADS=1 taskset -c 1``):

1. test-time table (Fig. 6 analogue): single, majority, minPPL, Self-BoN and synthesis on the same
   G rollouts, bootstrap CIs, reference diagnostics (``arithmetic_test_time.yaml``);
2. training arms (Fig. 4 analogue), same seed and prompts: CaT-RL (synthesis), TTRL (majority)
   and an oracle rewarded against gold labels (clearly an upper bound that uses labels); the
   untrained arm is their step-0 evaluation;
3. G-scaling (Fig. 7 analogue): majority and synthesis for each G.

Writes ``results.json`` (every number, with machine and wall times), ``results.md`` (the
tables), ``compare.html`` (``cat-framework compare`` of all runs) and PNG plots to ``--out``.
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
from cpu_paper_tables_output import markdown, plots  # noqa: E402

PIPELINES = HERE / "cpu_experiments"
DEFAULT_OUT = HERE / "results" / "cpu_paper_tables"
ARMS = {"cat-rl": "arithmetic_cat_rl.yaml", "ttrl": "arithmetic_ttrl.yaml"}
ARMS["oracle (gold labels)"] = "arithmetic_oracle.yaml"
TEST_TIME = ["single", "majority", "minppl", "best_of_n", "synthesis"]

#: the committed experiment, sized for ~90 minutes of a 2-core CPU (two processes, one core each)
FULL = {
    "test_time": {"problems": 200, "G": 8},
    "g_scaling": {"problems": 40, "Gs": [1, 2, 4, 8, 16]},
    "training": {"steps": 8, "eval_every": 4, "eval_problems": 40, "G": 4, "prompts_per_step": 4},
    "max_new_tokens": 64,
}
QUICK = {
    "test_time": {"problems": 3, "G": 2},
    "g_scaling": {"problems": 2, "Gs": [1, 2]},
    "training": {"steps": 1, "eval_every": 1, "eval_problems": 2, "G": 2, "prompts_per_step": 2},
    "max_new_tokens": 12,
}


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


def training_numbers(run_dir: Path) -> dict[str, Any]:
    """Held-out evaluation before (step 0) and after (last evaluation), per aggregator."""
    rows = [r for r in load_run(run_dir, max_prompts=0).metrics if "eval/rollouts/accuracy" in r]
    if not rows:
        return {"evaluations": []}
    labels = sorted({k.split("/")[1] for k in rows[0] if k.endswith("/score")})
    evals = [
        {
            "step": int(r["step"]),
            "rollout_accuracy": r.get("eval/rollouts/accuracy"),
            **{label: cell(r, label) for label in labels},
        }
        for r in rows
    ]
    return {"before": evals[0], "after": evals[-1], "evaluations": evals}


def write_outputs(out: Path, results: dict[str, Any], run_dirs: list[Path]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results))
    if run_dirs:
        from cat_framework.report.compare_page import write_compare

        write_compare(run_dirs, out / "compare.html")
    plots(out, results)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny CI configuration")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where results go")
    ap.add_argument("--runs", type=Path, default=Path("runs/cpu_paper_tables"), help="run dirs")
    ap.add_argument("--stages", default="test-time,training,g-scaling", help="which, in order")
    ap.add_argument("--reuse", action="store_true", help="reuse completed run directories")
    ap.add_argument(
        "--collect", action="store_true", help="run nothing: tabulate the completed runs only"
    )
    args = ap.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(stages) - {"test-time", "training", "g-scaling"}
    if unknown:
        ap.error(f"--stages: unknown {sorted(unknown)}; use test-time, training, g-scaling")
    plugins = load_plugins(extra=[("cpu_paper_tables", OraclePlugin())])
    mnt = cfg["max_new_tokens"]
    results: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "settings": cfg,
        # --collect tabulates runs made earlier, maybe by other processes: not this one's threads
        "machine": {**machine(), "tabulated_only": True} if args.collect else machine(),
        "wall_s": {},
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
    }
    run_dirs: list[Path] = []
    reuse: bool | str = "collect" if args.collect else args.reuse
    missing: list[str] = results.setdefault("missing", [])
    for stage in stages:
        if stage == "test-time":
            tt = cfg["test_time"]
            d = run(
                plugins,
                "arithmetic_test_time.yaml",
                [
                    f"eval.limit={tt['problems']}",
                    f"rollouts.n={tt['G']}",
                    f"rollouts.max_new_tokens={mnt}",
                ],
                args.runs / "test-time",
                reuse,
            )
            if d is None:
                missing.append("test-time")
                continue
            results["test_time"] = test_time_numbers(d)
            results["wall_s"]["test-time"] = run_wall(d)
            run_dirs.append(d)
        elif stage == "training":
            tc = cfg["training"]
            results["training"] = {}
            for arm, pipeline in ARMS.items():
                d = run(
                    plugins,
                    pipeline,
                    [
                        f"trainer.steps={tc['steps']}",
                        f"trainer.eval_every={tc['eval_every']}",
                        f"data.eval.limit={tc['eval_problems']}",
                        f"rollouts.n={tc['G']}",
                        f"trainer.prompts_per_step={tc['prompts_per_step']}",
                        f"rollouts.max_new_tokens={mnt}",
                    ],
                    args.runs / arm.split()[0],
                    reuse,
                )
                if d is None:
                    missing.append(f"training {arm}")
                    continue
                results["training"][arm] = training_numbers(d)
                run_dirs.append(d)
                results["wall_s"][f"training {arm}"] = run_wall(d)
                write_outputs(args.out, results, run_dirs)
        else:
            gc = cfg["g_scaling"]
            results["g_scaling"] = []
            for g in gc["Gs"]:
                d = run(
                    plugins,
                    "arithmetic_test_time.yaml",
                    [
                        f"eval.limit={gc['problems']}",
                        f"rollouts.n={g}",
                        f"rollouts.max_new_tokens={mnt}",
                        f"output.run_name=g{g}",
                        "eval.aggregators=[{name: majority, fallback: number}, {name: synthesis, max_new_tokens: 96}]",
                    ],
                    args.runs / f"g-scaling-G{g}",
                    reuse,
                )
                if d is None:
                    missing.append(f"g-scaling G={g}")
                    continue
                n = test_time_numbers(d)
                results["g_scaling"].append(
                    {
                        "G": g,
                        **n["estimators"],
                        "rollout_accuracy": n["rollouts"].get("accuracy"),
                        "read_at_number_level": n["estimators_read_at_number_level"],
                    }
                )
                results["wall_s"][f"g-scaling G={g}"] = run_wall(d)
                write_outputs(args.out, results, run_dirs)
        write_outputs(args.out, results, run_dirs)
    print(f"results: {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
