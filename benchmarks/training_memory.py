"""Training memory: what sharing pi_0 saves (DESIGN.md section 2), measured side by side.

One CaT-RL step on the embedded SmolLM2-135M, each configuration in its own process, peak RSS
read from the OS (``ru_maxrss`` of the finished child):

- ``lora-shared``: LoRA; anchor and KL reference are the base weights with adapters disabled;
- ``full-frozen-copy``: all weights trained; one frozen copy is anchor and KL reference;
- ``full-no-pi0``: all weights trained, beta=0 and ``anchor: policy``: no pi_0 at all (the floor).

    python benchmarks/training_memory.py [--out benchmarks/results/training_memory.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

CONFIGS = {
    "lora-shared": ("initial-policy", "beta: 0.001, lora: {r: 16, alpha: 32}"),
    "full-frozen-copy": ("initial-policy", "beta: 0.001"),
    "full-no-pi0": ("policy", "beta: 0.0"),
}

PIPELINE = """\
name: memory-{name}
mode: train
models:
  policy: {{backend: transformers, model: embedded:smollm2-135m-instruct, dtype: float32}}
  anchor: {anchor}
data:
  train: {{dataset: gsm8k, split: test, limit: 4}}
rollouts: {{n: 4, temperature: 0.7, max_new_tokens: {tokens}}}
aggregator: single
reward: {{name: programmatic, fallback: number}}
trainer: {{steps: 1, prompts_per_step: 2, micro_batch_size: 8, learning_rate: 1.0e-5, {trainer}}}
"""

CHILD = """
import json, resource, sys, time
from cat_framework import load_plugins
from cat_framework.runner import run_pipeline
from cat_framework.pipeline import load_pipeline
plugins = load_plugins(entry_points=False)
t = time.perf_counter()
summary = run_pipeline(load_pipeline(sys.argv[1], plugins=plugins), plugins=plugins,
                       run_dir=sys.argv[2])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
print(json.dumps({"seconds": time.perf_counter() - t, "peak_kib": peak}))
"""


def measure(name: str, tokens: int, tmp: Path) -> dict[str, float]:
    anchor, trainer = CONFIGS[name]
    path = tmp / f"{name}.yaml"
    path.write_text(PIPELINE.format(name=name, anchor=anchor, tokens=tokens, trainer=trainer))
    env = {**os.environ, "CAT_TENSORBOARD": "0"}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(tmp / name)],
        capture_output=True, text=True, env=env, cwd=REPO, check=False,
    )  # fmt: skip
    if proc.returncode:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    step = json.loads((tmp / name / "metrics.jsonl").read_text().splitlines()[-1])
    return {
        "peak_rss_gib": child["peak_kib"] / 2**20,
        "run_seconds": child["seconds"],
        "step_seconds": step["time/step"],
        "training_seconds": step["time/training"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/training_memory.json"))
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    for name in CONFIGS:  # each in a fresh process: its peak RSS is its own
        with tempfile.TemporaryDirectory() as tmp:
            results[name] = measure(name, args.max_new_tokens, Path(tmp))
        print(name, json.dumps({k: round(v, 3) for k, v in results[name].items()}), flush=True)
    floor = results["full-no-pi0"]["peak_rss_gib"]
    out = {
        "benchmark": "training_memory",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "settings": {
            "model": "SmolLM2-135M-Instruct fp32",
            "G": 4,
            "prompts_per_step": 2,
            "max_new_tokens": args.max_new_tokens,
        },
        "results": results,
        "ratios": {
            "frozen_copy_over_floor": results["full-frozen-copy"]["peak_rss_gib"] / floor,
            "lora_shared_over_floor": results["lora-shared"]["peak_rss_gib"] / floor,
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(textwrap.indent(json.dumps(out["ratios"], indent=2), "  "))


if __name__ == "__main__":
    main()
