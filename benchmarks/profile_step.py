"""Where a GRPO step's time goes, on our side and TRL's, at the settings of ``grpo_vs_trl.py``.

    python benchmarks/profile_step.py [--config full-fixed] [--steps 2] [--out FILE]

Each side runs once under ``py-spy record --format raw`` (sampling its Python and native
stacks at ``--rate`` Hz, one process at a time), and every sample is put in the first bucket
whose frames it contains (the order of ``BUCKETS``). The table gives seconds per bucket (samples
/ rate) for each side and their ratio, so the difference between the two steps can be read
bucket by bucket: what both sides spend in the same model kernels, and what only one spends.
Needs ``py-spy`` and the TRL venv (``grpo_vs_trl.py --setup``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from grpo_vs_trl import (
    DEFAULT_VENV,
    MODEL,
    REPO,
    child_env,
    fixed_length_folder,
    machine,
    model_folder,
    pipeline,
    setup_venv,
    venv_python,
)

#: bucket -> frame substrings; a sample goes to the first bucket one of whose strings it holds
BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("generation: model forward", ("_generate_batch", "generate (")),
    ("update: backward", ("run_backward", "backward (")),
    ("update: optimizer", ("optim/adam", "_single_tensor_adam", "_multi_tensor_adam",
                           "_fused_adam", "clip_grad_norm")),
    ("update: training forward", ("completion_logps", "_get_per_token_logps", "compute_loss",
                                  "_compute_loss", "_logps (")),
    ("reward and teacher", ("_calculate_rewards", "teach (")),
    ("startup (imports, model load, save)", ("_find_and_load", "from_pretrained",
                                             "save_pretrained", "load_state_dict", "save_file")),
]  # fmt: skip


def bucket(stack: str) -> str:
    for name, needles in BUCKETS:
        if any(n in stack for n in needles):
            return name
    return "other"


def profile(cmd: list[str], out: Path, rate: int, env: dict[str, str]) -> Counter[str]:
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    full = [spy, "record", "-r", str(rate), "--format", "raw", "--native", "-o", str(out), "--"]
    proc = subprocess.run([*full, *cmd], env=env, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed under py-spy:\n{proc.stderr[-2000:]}")
    counts: Counter[str] = Counter()
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if n.isdigit():
            counts[bucket(stack)] += int(n)
    return counts


def settings(config: str, steps: int, model: str) -> dict[str, Any]:
    parts = config.split("-")
    return {
        "steps": steps, "prompts_per_step": 2, "g": 8, "max_new_tokens": 128,
        "micro_batch_size": 8, "temperature": 0.7, "top_p": 1.0, "learning_rate": 1e-6,
        "max_grad_norm": 1.0, "epsilon": 0.2, "loss_type": "grpo", "seed": 0,
        "lora": parts[0] == "lora", "fixed_length": "fixed" in parts,
        "bf16_rollouts": "bf16" in parts, "amp": "amp" in parts, "model": model,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="full-fixed")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rate", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--out", type=Path, default=None, help="write .json and .md here")
    parser.add_argument("--raw", type=Path, default=None, help="keep py-spy's stacks here")
    args = parser.parse_args(argv)
    trl_version = setup_venv(args.venv)
    env = child_env(args.threads)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="profile-step-") as tmp:
        work = Path(tmp)
        fixed = "fixed" in args.config.split("-")
        model = fixed_length_folder(model_folder(), work) if fixed else MODEL
        s = settings(args.config, args.steps, model)
        (work / "pipeline.yaml").write_text(yaml.safe_dump(pipeline(s), sort_keys=False))
        ours_cmd = [sys.executable, "-m", "cat_framework", "run", str(work / "pipeline.yaml"),
                    "--run-dir", str(work / "run")]  # fmt: skip
        ours = profile(ours_cmd, work / "ours.txt", args.rate, env)
        trl_settings = {**s, "model_path": model_folder() if model == MODEL else model,
                        "workdir": str(work / "trl")}  # fmt: skip
        (work / "settings.json").write_text(json.dumps(trl_settings))
        side = REPO / "benchmarks" / "grpo_vs_trl_trl_side.py"
        trl_cmd = [str(venv_python(args.venv)), str(side), str(work / "settings.json"),
                   str(work / "trl.json")]  # fmt: skip
        trl = profile(trl_cmd, work / "trl.txt", args.rate, env)
        if args.raw is not None:
            args.raw.mkdir(parents=True, exist_ok=True)
            for side in ("ours", "trl"):
                shutil.copy(work / f"{side}.txt", args.raw / f"{side}.txt")
    result = {"config": args.config, "steps": args.steps, "rate": args.rate,
              "command": " ".join(["python", "benchmarks/profile_step.py", *(argv or sys.argv[1:])]),
              "machine": machine(args.threads, trl_version), "load_start": load_start,
              "load_end": os.getloadavg(), "ours": dict(ours), "trl": dict(trl)}  # fmt: skip
    text = markdown(result)
    print(text)
    if args.out is not None:
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
        args.out.with_suffix(".md").write_text(text)


def markdown(r: dict[str, Any]) -> str:
    rate, m = r["rate"], r["machine"]
    names = [n for n, _ in BUCKETS] + ["other"]
    lines = [
        f"# Where a GRPO step's time goes: ours vs TRL ({r['config']}, {r['steps']} steps)",
        "",
        f"Command: `{r['command']}`; py-spy samples at {rate} Hz, seconds = samples / rate, "
        "whole process (startup included, its own row).",
        "",
        f"Machine: {m['cores']}-core CPU ({m['cpu']}), torch {m['torch']}, transformers "
        f"{m['transformers']}, TRL {m['trl']}; {m['threads_per_process']} threads per process, one process at "
        f"a time; load average {r['load_start'][0]:.1f} at the start, {r['load_end'][0]:.1f} "
        "at the end.",
        "",
        "| bucket | ours s | TRL s | ours/TRL |",
        "|---|---|---|---|",
    ]
    for name in names:
        o, t = r["ours"].get(name, 0) / rate, r["trl"].get(name, 0) / rate
        ratio = f"{o / t:.2f}x" if t else "-"
        lines.append(f"| {name} | {o:.1f} | {t:.1f} | {ratio} |")
    o_all = sum(r["ours"].values()) / rate
    t_all = sum(r["trl"].values()) / rate
    lines.append(f"| **all** | {o_all:.1f} | {t_all:.1f} | {o_all / t_all:.2f}x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
