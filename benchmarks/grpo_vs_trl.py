"""Side by side: one GRPO step of this framework against TRL's GRPOTrainer at matched settings.

    python benchmarks/grpo_vs_trl.py --setup                 # create the TRL venv only
    python benchmarks/grpo_vs_trl.py --quick                 # smoke: 2 steps, 16 tokens, G=4
    flock -x /tmp/heavy.lock python benchmarks/grpo_vs_trl.py            # full FT + LoRA

TRL is never a dependency of the project: it lives in its own venv (``--venv``, created with
``--system-site-packages`` so it reuses this machine's torch, transformers, accelerate and peft;
TRL is pinned to ``TRL_VERSION``). Each run is a separate process, A/B interleaved
(ours, TRL, ours, TRL, ... ``--repeats`` pairs per configuration) at the same settings: the
embedded SmolLM2-135M-Instruct (TRL loads the very folder our backend resolves it to), fp32,
``--g`` rollouts of ``--prompts`` arithmetic prompts per step, HF generation on both sides, and
the ``majority`` + ``programmatic`` reward on both (TRL calls our plugins; see
``grpo_vs_trl_trl_side.py``). Per step and phase: generation, reward, update, total; tokens; peak
RSS per process (``os.wait4``); load average before/after each run. The first step of each run
is a warm-up and is left out of the medians when a run has two or more steps.
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

import yaml

REPO = Path(__file__).resolve().parent.parent
TRL_VERSION = "1.16.0"
DEFAULT_VENV = Path.home() / ".cache" / "cat-framework" / "bench-trl-venv"
MODEL = "embedded:smollm2-135m-instruct"
PHASES = ("generation", "reward", "update", "step_total")
#: our metrics.jsonl keys for each phase
OURS_KEYS = {
    "generation": "time/rollouts",
    "reward": "time/teacher",
    "update": "time/training",
    "step_total": "time/step",
}


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def setup_venv(venv: Path) -> str:
    """Create the venv (reusing the system torch stack) and install the pinned TRL into it."""
    py = venv_python(venv)
    if not py.exists():
        subprocess.run(
            [sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True
        )
    probe = [str(py), "-c", "import trl; print(trl.__version__)"]
    found = subprocess.run(probe, capture_output=True, text=True)
    if found.returncode != 0 or found.stdout.strip() != TRL_VERSION:
        subprocess.run([str(py), "-m", "pip", "install", f"trl=={TRL_VERSION}"], check=True)
        found = subprocess.run(probe, capture_output=True, text=True, check=True)
    return found.stdout.strip()


def model_folder() -> str:
    """The cached safetensors folder our transformers backend loads for the embedded model."""
    from cat_plugins.backends.embedded import resolve_model_path

    return resolve_model_path(MODEL)


#: a token SmolLM2-Instruct never emits in these chats: the fixed-length copy's end of sequence
NEVER_TOKEN = "<empty_output>"


def fixed_length_folder(source: str, root: Path) -> str:
    """A copy of the model folder whose end-of-sequence token is one the model never samples, so
    both sides generate exactly ``max_new_tokens`` for every completion (equal work by
    construction). The weights are linked, not copied; only the EOS settings change."""
    folder = root / "fixed-length-model"
    folder.mkdir(parents=True, exist_ok=True)
    from transformers import AutoTokenizer

    for item in Path(source).iterdir():
        target = folder / item.name
        if not target.exists() and item.name not in ("generation_config.json", "config.json"):
            target.symlink_to(item)
    never = AutoTokenizer.from_pretrained(source).convert_tokens_to_ids(NEVER_TOKEN)
    for name in ("generation_config.json", "config.json"):
        cfg = json.loads((Path(source) / name).read_text())
        cfg["eos_token_id"] = never
        (folder / name).write_text(json.dumps(cfg, indent=1))
    (folder / "tokenizer_config.json").unlink()
    tok_cfg = json.loads((Path(source) / "tokenizer_config.json").read_text())
    tok_cfg["eos_token"] = NEVER_TOKEN
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=1))
    return str(folder)


def pipeline(s: dict[str, Any]) -> dict[str, Any]:
    """Our pipeline at the benchmark's settings."""
    trainer: dict[str, Any] = {
        "steps": s["steps"],
        "prompts_per_step": s["prompts_per_step"],
        "micro_batch_size": s["micro_batch_size"],
        "learning_rate": s["learning_rate"],
        "max_grad_norm": s["max_grad_norm"],
        "beta": 0.0,
        "epsilon": s["epsilon"],
        "loss_type": s["loss_type"],
        "scale_rewards": "group",
        "num_iterations": 1,
        "save_every": 0,
        "eval_every": 0,
    }
    if s["lora"]:
        trainer["lora"] = {"r": 16, "alpha": 32, "target_modules": "all-linear"}
    if s.get("amp"):  # bf16 autocast on both sides (TRL: bf16=True)
        trainer["mixed_precision"] = "bf16"
    if s.get("bf16_rollouts"):  # a lever of ours alone: TRL without vLLM has no counterpart
        trainer["rollout_dtype"] = "bfloat16"
        trainer["vllm_importance_sampling"] = True
    return {
        "name": "grpo-vs-trl",
        "mode": "train",
        "seed": s["seed"],
        # no role here samples from pi_0 (majority + programmatic), and TRL holds no pi_0 at
        # beta 0: `policy` keeps our run from holding a frozen copy it would never use
        "models": {
            "policy": {"backend": "transformers", "model": s["model"], "dtype": "float32"},
            "anchor": "policy",
        },
        "data": {
            "train": {
                "dataset": "arithmetic",
                "split": "train",
                "count": s["steps"] * s["prompts_per_step"],
            }
        },
        "rollouts": {
            "n": s["g"],
            "temperature": s["temperature"],
            "top_p": s["top_p"],
            "max_new_tokens": s["max_new_tokens"],
        },
        "aggregator": {"name": "majority", "fallback": "number"},
        "reward": {"name": "programmatic", "fallback": "number"},
        "trainer": trainer,
    }


def run_child(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, float, int]:
    """Run ``cmd``; return (wall seconds, peak RSS GiB of the process tree, exit code)."""
    start = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - start, usage.ru_maxrss / 2**20, proc.returncode


def run_ours(s: dict[str, Any], work: Path, env: dict[str, str]) -> dict[str, Any]:
    cfg = work / "pipeline.yaml"
    cfg.write_text(yaml.safe_dump(pipeline(s), sort_keys=False))
    run_dir = work / "run"
    cmd = [sys.executable, "-m", "cat_framework", "run", str(cfg), "--run-dir", str(run_dir)]
    wall, rss, rc = run_child(cmd, env, work / "ours.log")
    if rc != 0:
        raise SystemExit(f"our run failed (exit {rc}); see {work / 'ours.log'}")
    steps = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        m = row.get("metrics", row)
        if "time/step" not in m:
            continue
        step = {phase: float(m[key]) for phase, key in OURS_KEYS.items()}
        n = float(m["completions/mean_length"]) * s["g"] * s["prompts_per_step"]
        steps.append({"step": row.get("step"), **step, "tokens": n})
    return {"steps": steps, "wall_s": wall, "peak_rss_gib": rss}


def run_trl(s: dict[str, Any], work: Path, env: dict[str, str], venv: Path) -> dict[str, Any]:
    model = model_folder() if s["model"] == MODEL else s["model"]
    settings = {**s, "model_path": model, "workdir": str(work / "trl")}
    (work / "settings.json").write_text(json.dumps(settings))
    out = work / "trl.json"
    side = REPO / "benchmarks" / "grpo_vs_trl_trl_side.py"
    cmd = [str(venv_python(venv)), str(side), str(work / "settings.json"), str(out)]
    wall, rss, rc = run_child(cmd, env, work / "trl.log")
    if rc != 0:
        raise SystemExit(f"the TRL run failed (exit {rc}); see {work / 'trl.log'}")
    result = json.loads(out.read_text())
    return {
        "steps": result["steps"],
        "wall_s": wall,
        "peak_rss_gib": rss,
        "trl": result["trl"],
        "threads": result["threads"],
    }


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    path = [str(REPO), str(REPO / "plugins"), env.get("PYTHONPATH", "")]
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=os.pathsep.join(p for p in path if p),
    )
    return env


def measured(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Steps after the warm-up (the first), when there are at least two."""
    return steps[1:] if len(steps) >= 2 else steps


def summarize(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Medians over every measured step of every run of one side; RSS: the max over runs."""
    steps = [st for r in runs for st in measured(r["steps"])]
    out = {p: statistics.median(st[p] for st in steps) for p in (*PHASES, "tokens")}
    for phase in ("generation", "update", "step_total"):
        out[f"s_per_token_{phase}"] = statistics.median(
            st[phase] / max(st["tokens"], 1.0) for st in steps
        )
    out["peak_rss_gib"] = max(r["peak_rss_gib"] for r in runs)
    return out


def benchmark(s: dict[str, Any], repeats: int, venv: Path, threads: int) -> dict[str, Any]:
    env = child_env(threads)
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "trl": []}
    for rep in range(repeats):
        for side in ("ours", "trl"):
            with tempfile.TemporaryDirectory(prefix=f"grpo-vs-trl-{side}-") as tmp:
                load_before = os.getloadavg()
                if side == "ours":
                    result = run_ours(s, Path(tmp), env)
                else:
                    result = run_trl(s, Path(tmp), env, venv)
                result.update(repeat=rep, load_before=load_before, load_after=os.getloadavg())
            runs[side].append(result)
            step = statistics.median(st["step_total"] for st in measured(result["steps"]))
            print(
                f"  {side:4s} repeat {rep}: step {step:.1f} s, wall {result['wall_s']:.0f} s, "
                f"RSS {result['peak_rss_gib']:.2f} GiB, load {load_before[0]:.1f}",
                flush=True,
            )
    ours, trl = summarize(runs["ours"]), summarize(runs["trl"])
    ratio = {k: ours[k] / trl[k] if trl[k] else None for k in ours}
    return {"settings": s, "runs": runs, "ours": ours, "trl": trl, "ratio_ours_over_trl": ratio}


def machine(threads: int, trl_version: str) -> dict[str, Any]:
    import peft
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "trl": trl_version,
        "threads_per_process": threads,
    }


def main(argv: list[str] | None = None) -> None:
    from grpo_vs_trl_report import markdown

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", action="store_true", help="create the TRL venv and exit")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--quick", action="store_true", help="smoke: 2 steps, 16 tokens, G=4")
    parser.add_argument("--repeats", type=int, default=2, help="A/B pairs per configuration")
    parser.add_argument("--steps", type=int, default=3, help="steps per run (first = warm-up)")
    parser.add_argument("--prompts", type=int, default=2, help="prompts per step")
    parser.add_argument("--g", type=int, default=8, help="rollouts per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="OMP threads per process")
    parser.add_argument(
        "--configs",
        default="full,lora,full-fixed",
        help="comma-separated: full (fine-tuning), lora, and either with -fixed: every "
        "completion exactly max_new_tokens long on both sides (equal work), and/or -bf16: ours "
        "samples from a bfloat16 copy (trainer.rollout_dtype), TRL unchanged, and/or -amp: "
        "bf16 autocast on both sides (ours mixed_precision: bf16, TRL bf16=True)",
    )
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "grpo_vs_trl-cpu-2core"
    )
    parser.add_argument(
        "--render", type=Path, default=None, help="rewrite the .md from this .json and exit"
    )
    args = parser.parse_args(argv)
    if args.render is not None:
        result = json.loads(args.render.read_text())
        args.render.with_suffix(".md").write_text(markdown(result))
        return
    trl_version = setup_venv(args.venv)
    if args.setup:
        print(f"TRL {trl_version} in {args.venv}")
        return
    if args.quick:
        args.steps, args.max_new_tokens, args.g, args.repeats = 2, 16, 4, 1
        args.micro_batch_size = min(args.micro_batch_size, args.g)
    base = {
        "steps": args.steps,
        "prompts_per_step": args.prompts,
        "g": args.g,
        "max_new_tokens": args.max_new_tokens,
        "micro_batch_size": args.micro_batch_size,
        "temperature": 0.7,
        "top_p": 1.0,
        "learning_rate": 1e-6,
        "max_grad_norm": 1.0,
        "epsilon": 0.2,
        "loss_type": "grpo",
        "seed": 0,
    }
    result: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/grpo_vs_trl.py", *(argv or sys.argv[1:])]),
        "machine": machine(args.threads, trl_version),
        "model_folder": model_folder(),
        "load_start": os.getloadavg(),
        "configs": {},
    }
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="grpo-vs-trl-model-") as models:
        fixed = fixed_length_folder(model_folder(), Path(models))
        for name in args.configs.split(","):
            print(f"{name}:", flush=True)
            parts = name.split("-")
            s = {**base, "lora": parts[0] == "lora", "fixed_length": "fixed" in parts,
                 "bf16_rollouts": "bf16" in parts, "amp": "amp" in parts}  # fmt: skip
            s["model"] = fixed if s["fixed_length"] else MODEL
            result["configs"][name] = benchmark(s, args.repeats, args.venv, args.threads)
    result["wall_s"] = time.perf_counter() - start
    result["load_end"] = os.getloadavg()
    out = args.out.with_name(args.out.name + "-quick") if args.quick else args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    text = markdown(result)
    out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
