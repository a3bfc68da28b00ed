"""Peak memory per process: DDP vs FSDP2, 2 processes on CPU (gloo), full-parameter CaT-RL.

The same pipeline and random Llama (no download) run under ``pipelines/accelerate/cpu_2proc.yaml``
(DDP) and ``fsdp2_cpu_2proc.yaml`` (FSDP2); each process reports its peak RSS (``ru_maxrss``)
at the end of the run. Two pi_0 setups: ``kl-only`` (``anchor: policy``, beta > 0: pi_0 is only
the KL reference, sharded under FSDP2) and ``no-pi0`` (beta = 0). Under FSDP2 each process also
holds the whole generation copy, which is what keeps the ratio above 1/2 with 2 processes.

Memory is read as RSS, so the C allocator matters: glibc raises its mmap threshold after large
frees, after which FSDP2's per-layer gather buffers (freed after every layer) are carved from
the heap and kept, and RSS grows past what is live. By default both launches run with a fixed
threshold (``MALLOC_MMAP_THRESHOLD_=131072``) so RSS tracks live tensors; ``--malloc default``
measures glibc's default behaviour.

    python benchmarks/fsdp_memory.py [--layers 12 --hidden 1024] [--malloc fixed|default]
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LAUNCH = {
    "ddp": REPO / "pipelines" / "accelerate" / "cpu_2proc.yaml",
    "fsdp2": REPO / "pipelines" / "accelerate" / "fsdp2_cpu_2proc.yaml",
}
SETUPS = {"kl-only": "beta: 0.01", "no-pi0": "beta: 0.0"}

#: the CaT-RL pipeline the CPU benchmarks run on a random Llama (majority vote + programmatic
#: reward: no model in the reward; pi_0 only where the trainer line asks for a KL term)
PIPELINE = """\
name: {name}
mode: train
seed: 0
{top}models:
  policy: {{backend: transformers, model: "{model}", device: cpu}}
  anchor: policy
data:
  train: {{dataset: jsonl, path: "{data}", answer_field: answer, id_field: id}}
rollouts: {{n: 4, temperature: 1.0, max_new_tokens: {tokens}}}
aggregator: {{name: majority, fallback: number}}
reward: {{name: programmatic, fallback: number}}
trainer: {{steps: {steps}, prompts_per_step: 2, micro_batch_size: {micro}, learning_rate: 1.0e-4,
  {trainer}}}
"""


def tiny_pipeline(
    name: str,
    model: Path,
    data: Path,
    trainer: str,
    *,
    tokens: int = 8,
    steps: int = 2,
    micro: int = 8,
    top: str = "",
) -> str:
    """:data:`PIPELINE` filled in; ``trainer``: the trainer keys beyond steps, batch and lr;
    ``top``: top-level lines (e.g. ``threads: 2``)."""
    return PIPELINE.format(
        name=name, model=model, data=data, trainer=trainer, tokens=tokens, steps=steps,
        micro=micro, top=top + "\n" if top else "",
    )  # fmt: skip


def write_toy_data(path: Path) -> Path:
    """Four toy sums as a JSON-lines dataset."""
    rows = [{"id": f"q{i}", "question": f"What is {i} + {i}?", "answer": str(2 * i)}
            for i in range(4)]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


CHILD = """
import json, os, resource, sys
from cat_framework import load_plugins
from cat_framework.runner import run_pipeline
from cat_framework.pipeline import load_pipeline
plugins = load_plugins(entry_points=False)
run_pipeline(load_pipeline(sys.argv[1], plugins=plugins), plugins=plugins, run_dir=sys.argv[2])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
rank = os.environ.get("RANK", "0")
with open(os.path.join(sys.argv[3], f"peak-{rank}.json"), "w") as f:
    json.dump({"rank": int(rank), "peak_kib": peak}, f)
"""


def build_model(path: Path, layers: int, hidden: int) -> int:
    from benchmarks.random_llama import build_random_llama

    return build_random_llama(path, hidden=hidden, layers=layers, max_positions=256)


def run_one(
    work: Path, launch: str, setup: str, model: Path, data: Path, malloc: str
) -> dict[str, object]:
    name = f"{launch}-{setup}"
    pipeline = work / f"{name}.yaml"
    pipeline.write_text(tiny_pipeline("fsdp-memory", model, data, SETUPS[setup]))
    child = work / "child.py"
    child.write_text(CHILD)
    out = work / name
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CAT_TENSORBOARD": "0"}
    if malloc == "fixed":
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(LAUNCH[launch])]
    cmd += [str(child), str(pipeline), str(out / "run"), str(out)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO, timeout=1800)
    if proc.returncode:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    peaks = [json.loads((out / f"peak-{r}.json").read_text())["peak_kib"] for r in (0, 1)]
    return {
        "peak_rss_gib_per_process": [round(p / 2**20, 3) for p in peaks],
        "peak_rss_gib_max": round(max(peaks) / 2**20, 3),
        "seconds": round(time.perf_counter() - t, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--malloc", choices=["fixed", "default"], default="fixed")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    suffix = "" if args.malloc == "fixed" else "-default-malloc"
    out = args.out or f"benchmarks/results/fsdp_memory-cpu-2proc{suffix}.json"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = work / "model"
        n_params = build_model(model, args.layers, args.hidden)
        data = work / "toy.jsonl"
        write_toy_data(data)
        results: dict[str, dict[str, object]] = {}
        for setup in SETUPS:
            for launch in LAUNCH:
                results[f"{launch}-{setup}"] = run_one(
                    work, launch, setup, model, data, args.malloc
                )
                print(f"{launch}-{setup}", results[f"{launch}-{setup}"], flush=True)
    ratios = {
        setup: round(
            float(results[f"fsdp2-{setup}"]["peak_rss_gib_max"])  # type: ignore[arg-type]
            / float(results[f"ddp-{setup}"]["peak_rss_gib_max"]),  # type: ignore[arg-type]
            3,
        )
        for setup in SETUPS
    }
    report = {
        "benchmark": "fsdp_memory",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpu": platform.machine(), "cores": os.cpu_count(), "gpu": None},
        "settings": {
            "model": f"random Llama, {args.layers} layers, hidden {args.hidden}, fp32",
            "parameters": n_params,
            "processes": 2,
            "steps": 2,
            "G": 4,
            "prompts_per_step": 2,
            "malloc": "MALLOC_MMAP_THRESHOLD_=131072"
            if args.malloc == "fixed"
            else "glibc default (dynamic mmap threshold)",
        },
        "results": results,
        "fsdp2_over_ddp_peak": ratios,
        "note": textwrap.dedent("""\
            Peak RSS per process (whole process: Python, torch, the tokenizer, activations).
            FSDP2 holds 1/2 of weights, gradients and AdamW states plus the whole generation
            copy; DDP holds a full replica, gradient buckets and (kl-only) a whole pi_0.""")
        .replace("\n", " ")
        .strip(),
    }
    Path(out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()
