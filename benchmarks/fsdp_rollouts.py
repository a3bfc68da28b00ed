"""Rollouts from sharded weights: the gathered generation copy vs lock-step generation, FSDP2 with
2 processes on CPU (gloo), full-parameter CaT-RL on the random Llama of ``fsdp_memory.py``.

``trainer.fsdp_gather_for_generation: true`` keeps a whole generation copy per process (refilled
after every step, freed during the update); ``false`` generates on the sharded module, every
forward all-gathering the weights layer by layer and all processes stepping together. Each run
reports the peak RSS of each process over the whole run and over the rollout phase (the
kernel's high-water mark, reset before each rollout), and, per step, the rollout time (``time/rollouts``) and the
step time. Runs alternate A B B A (``--repeats`` pairs) so a changing machine load hits both; the
load average is recorded before and after.

    python benchmarks/fsdp_rollouts.py [--layers 12 --hidden 1024 --max-new-tokens 32]
"""

from __future__ import annotations

import argparse
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

MODES = {"gathered": "true", "lockstep": "false"}

#: runs the pipeline in one process and writes its peaks: the whole run's and, per step, the
#: rollout phase's (the kernel's high-water mark is reset before each rollout and read after it)
CHILD = """
import json, os, sys
import cat_framework.engine.grpo_step as step
from cat_framework import load_plugins
from cat_framework.runner import run_pipeline
from cat_framework.pipeline import load_pipeline

def hwm_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

peak, rollout_peaks, explore = [0], [], step.explore
def measured_explore(*args, **kwargs):
    peak[0] = max(peak[0], hwm_kib())
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    out = explore(*args, **kwargs)
    rollout_peaks.append(hwm_kib())
    return out
step.explore = measured_explore
plugins = load_plugins(entry_points=False)
run_pipeline(load_pipeline(sys.argv[1], plugins=plugins), plugins=plugins, run_dir=sys.argv[2])
rank = os.environ.get("RANK", "0")
with open(os.path.join(sys.argv[3], f"peak-{rank}.json"), "w") as f:
    json.dump({"peak_kib": max(peak[0], hwm_kib()), "rollout_peak_kib": rollout_peaks}, f)
"""


def run_one(work: Path, name: str, mode: str, model: Path, data: Path, args: Any) -> dict:
    pipeline = work / f"{name}.yaml"
    pipeline.write_text(
        tiny_pipeline(
            "fsdp-rollouts",
            model,
            data,
            f"beta: 0.01, fsdp_gather_for_generation: {MODES[mode]}",
            tokens=args.max_new_tokens,
            steps=args.steps,
        )
    )
    child = work / "child.py"
    child.write_text(CHILD)
    out = work / name
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CAT_TENSORBOARD": "0"}
    env["MALLOC_MMAP_THRESHOLD_"] = "131072"  # RSS tracks live tensors (fsdp_memory.py says why)
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(LAUNCH["fsdp2"]),
    ]
    cmd += [str(child), str(pipeline), str(out / "run"), str(out)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO, timeout=3600)
    if proc.returncode:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    reports = [json.loads((out / f"peak-{r}.json").read_text()) for r in (0, 1)]
    peaks = [r["peak_kib"] for r in reports]
    rollout_peaks = [max(r["rollout_peak_kib"]) for r in reports]
    lines = (out / "run" / "metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(line) for line in lines]
    return {
        "mode": mode,
        "peak_rss_gib_per_process": [round(p / 2**20, 3) for p in peaks],
        "peak_rss_gib_max": round(max(peaks) / 2**20, 3),
        "rollout_peak_rss_gib_per_process": [round(p / 2**20, 3) for p in rollout_peaks],
        "rollout_peak_rss_gib_max": round(max(rollout_peaks) / 2**20, 3),
        "rollout_seconds_per_step": [round(m["time/rollouts"], 2) for m in metrics],
        "step_seconds": [round(m["time/step"], 2) for m in metrics],
        "rollout_tokens": [m["completions/mean_length"] * 8 for m in metrics],
        "seconds": round(time.perf_counter() - t, 1),
    }


def summary(runs: list[dict], mode: str) -> dict[str, float]:
    mine = [r for r in runs if r["mode"] == mode]
    return {
        "peak_rss_gib_max": max(r["peak_rss_gib_max"] for r in mine),
        "rollout_peak_rss_gib_max": max(r["rollout_peak_rss_gib_max"] for r in mine),
        "rollout_seconds_median": round(
            statistics.median(s for r in mine for s in r["rollout_seconds_per_step"]), 2
        ),
        "step_seconds_median": round(
            statistics.median(s for r in mine for s in r["step_seconds"]), 2
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="A B B A pairs")
    parser.add_argument("--out", default="benchmarks/results/fsdp_rollouts-cpu-2proc.json")
    args = parser.parse_args()
    load_before = os.getloadavg()
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = work / "model"
        n_params = build_model(model, args.layers, args.hidden)
        data = work / "toy.jsonl"
        write_toy_data(data)
        order = ["gathered", "lockstep", "lockstep", "gathered"] * args.repeats
        for k, mode in enumerate(order):
            runs.append(run_one(work, f"{k}-{mode}", mode, model, data, args))
            print(runs[-1], flush=True)
    result = {mode: summary(runs, mode) for mode in MODES}
    ratios = {
        "lockstep_over_gathered_peak_rss": round(
            result["lockstep"]["peak_rss_gib_max"] / result["gathered"]["peak_rss_gib_max"], 3
        ),
        "lockstep_over_gathered_rollout_peak_rss": round(
            result["lockstep"]["rollout_peak_rss_gib_max"]
            / result["gathered"]["rollout_peak_rss_gib_max"],
            3,
        ),
        "lockstep_over_gathered_rollout_time": round(
            result["lockstep"]["rollout_seconds_median"]
            / result["gathered"]["rollout_seconds_median"],
            2,
        ),
        "lockstep_over_gathered_step_time": round(
            result["lockstep"]["step_seconds_median"] / result["gathered"]["step_seconds_median"],
            2,
        ),
    }
    report = {
        "benchmark": "fsdp_rollouts",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "cpu": platform.machine(),
            "cores": os.cpu_count(),
            "gpu": None,
            "load_average_1_5_15_before": [round(x, 2) for x in load_before],
            "load_average_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": {
            "model": f"random Llama, {args.layers} layers, hidden {args.hidden}, fp32",
            "parameters": n_params,
            "processes": 2,
            "launch": "pipelines/accelerate/fsdp2_cpu_2proc.yaml",
            "steps": args.steps,
            "G": 4,
            "prompts_per_step": 2,
            "max_new_tokens": args.max_new_tokens,
            "pi_0": "KL reference only (anchor: policy, beta 0.01): sharded in both modes",
            "malloc": "MALLOC_MMAP_THRESHOLD_=131072",
            "order": "A B B A (gathered, lockstep, lockstep, gathered) per repeat",
        },
        "runs": runs,
        "summary": result,
        "ratios": ratios,
        "note": "Peak RSS is per process (whole process): over the run (the update's peak, "
        "when the gathered copy is freed) and over the rollout phase (where the copy lives); "
        "rollout time is the main process's "
        "time/rollouts per step (sampling only; the gathered copy's refill is in the step time).",
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({**result, **ratios}, indent=2))


if __name__ == "__main__":
    main()
