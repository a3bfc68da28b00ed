"""Thread discipline on CPU: a 2-process DDP run (accelerate launch, gloo) with each process taking
its share of the cores (``threads: auto``) vs each taking every core (``threads: <usable cores>``,
what torch does in a process started without a launcher: oversubscription).

Full-parameter CaT-RL on a random Llama (``fsdp_memory.build_model``); per step the trainer's
``time/step`` and ``time/rollouts``; each run's ``threads`` log event is recorded so the arms are
what they claim. Runs alternate A B B A (``--repeats`` pairs) so a changing machine load hits both
arms alike; the load average is recorded before and after. Run it on a quiet machine:

    python benchmarks/threads.py            # ~5 min on 2 cores
    python benchmarks/threads.py --quick    # smoke: tiny model, 1 step, one pair, nothing written
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.fsdp_memory import LAUNCH, build_model, tiny_pipeline, write_toy_data  # noqa: E402
from cat_framework.engine.threads import usable_cores  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "threads-cpu-2proc"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_one(work: Path, name: str, threads: str, model: Path, data: Path, args: Any) -> dict:
    pipeline = work / f"{name}.yaml"
    pipeline.write_text(
        tiny_pipeline(
            "threads",
            model,
            data,
            "beta: 0.01, save_every: 0",
            tokens=args.max_new_tokens,
            steps=args.steps,
            micro=4,
            top=f"threads: {threads}",
        )
    )
    # no thread variables: accelerate launch writes OMP_NUM_THREADS=1, which is not a choice
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["CAT_TENSORBOARD"] = "0"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(LAUNCH["ddp"])]
    cmd += ["-m", "cat_framework", "run", str(pipeline), "--run-dir", str(work / name)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO, timeout=1800)
    if proc.returncode:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    metrics = read_jsonl(work / name / "metrics.jsonl")
    events = [e for e in read_jsonl(work / name / "log.jsonl") if e["event"] == "threads"]
    return {
        "arm": threads,
        "threads_events": [
            {k: e[k] for k in ("torch", "cores", "local_processes", "helpers", "source")}
            for e in events
        ],
        "step_seconds": [round(m["time/step"], 2) for m in metrics],
        "rollout_seconds": [round(m["time/rollouts"], 2) for m in metrics],
        "seconds": round(time.perf_counter() - t, 1),
    }


def median_steps(runs: list[dict], arm: str, key: str) -> float:
    """Median over the runs' steps, the first (warm-up) step left out when there are more."""
    values = [s for r in runs if r["arm"] == arm for s in (r[key][1:] or r[key])]
    return round(statistics.median(values), 2)


def versions() -> dict[str, str]:
    names = ("torch", "transformers", "accelerate")
    return {"python": platform.python_version(), **{n: md.version(n) for n in names}}


def write_markdown(report: dict, path: Path) -> None:
    s, r, m = report["settings"], report["ratios"], report["machine"]
    rows = "\n".join(
        f"| {k} | {run['arm']} | {run['threads_events'][0]['torch']} | "
        f"{', '.join(map(str, run['step_seconds']))} | "
        f"{', '.join(map(str, run['rollout_seconds']))} | {run['seconds']} |"
        for k, run in enumerate(report["runs"])
    )
    text = f"""# Thread discipline: 2-process CPU DDP, `threads: auto` vs every core per process

{report["when"]}; {m["cores_usable"]} usable cores ({m["cpu"]}), load average (1/5/15 min)
before {m["load_average_1_5_15_before"]}, after {m["load_average_1_5_15_after"]};
{", ".join(f"{k} {v}" for k, v in report["versions"].items())}.

Setting: {s["model"]} ({s["parameters"]:,} parameters), full-parameter CaT-RL, {s["steps"]} steps,
2 prompts x G=4 per step, {s["max_new_tokens"]} new tokens, `accelerate launch` with
`{s["launch"]}` (DDP, gloo), no OMP_NUM_THREADS (accelerate writes 1, which the discipline treats
as the launcher's default). Arm `auto`: each process takes usable cores // 2 threads. Arm
`{s["oversubscribed_arm"]}`: each process takes every core, as torch does by default.
Runs in order (A B B A); step 1 is warm-up and left out of the medians.

| run | threads | torch threads per process | step s | rollout s | wall s |
|---|---|---|---|---|---|
{rows}

| median | step s | rollout s |
|---|---|---|
| auto | {report["auto"]["step_seconds_median"]} | {report["auto"]["rollout_seconds_median"]} |
| oversubscribed | {report["oversubscribed"]["step_seconds_median"]} | \
{report["oversubscribed"]["rollout_seconds_median"]} |

**Step time auto / oversubscribed: {r["auto_over_oversubscribed_step_time"]}x** (rollouts
{r["auto_over_oversubscribed_rollout_time"]}x).
"""
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1, help="A B B A groups")
    parser.add_argument("--quick", action="store_true", help="smoke run; writes nothing")
    args = parser.parse_args()
    if args.quick:
        args.layers, args.hidden, args.max_new_tokens, args.steps = 2, 128, 8, 1
    cores = usable_cores()
    over = str(cores)
    load_before = os.getloadavg()
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        n_params = build_model(work / "model", args.layers, args.hidden)
        data = work / "toy.jsonl"
        write_toy_data(data)
        order = ["auto", over, over, "auto"] * args.repeats
        for k, arm in enumerate(order):
            runs.append(run_one(work, f"{k}-{arm}", arm, work / "model", data, args))
            print(runs[-1], flush=True)
    result = {
        name: {
            "step_seconds_median": median_steps(runs, arm, "step_seconds"),
            "rollout_seconds_median": median_steps(runs, arm, "rollout_seconds"),
        }
        for name, arm in (("auto", "auto"), ("oversubscribed", over))
    }
    a, o = result["auto"], result["oversubscribed"]
    report = {
        "benchmark": "threads",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "cpu": platform.machine(),
            "cores": os.cpu_count(),
            "cores_usable": cores,
            "gpu": None,
            "load_average_1_5_15_before": [round(x, 2) for x in load_before],
            "load_average_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
        },
        "versions": versions(),
        "settings": {
            "model": f"random Llama, {args.layers} layers, hidden {args.hidden}, fp32",
            "parameters": n_params,
            "processes": 2,
            "launch": "pipelines/accelerate/cpu_2proc.yaml",
            "steps": args.steps,
            "max_new_tokens": args.max_new_tokens,
            "oversubscribed_arm": f"threads: {over}",
        },
        "runs": runs,
        **result,
        "ratios": {
            "auto_over_oversubscribed_step_time": round(
                a["step_seconds_median"] / o["step_seconds_median"], 2
            ),
            "auto_over_oversubscribed_rollout_time": round(
                a["rollout_seconds_median"] / o["rollout_seconds_median"], 2
            ),
        },
    }
    print(json.dumps({k: report[k] for k in ("auto", "oversubscribed", "ratios")}, indent=1))
    if args.quick:
        return
    OUT.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, OUT.with_suffix(".md"))


if __name__ == "__main__":
    main()
