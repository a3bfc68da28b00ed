"""Peak memory of one GRPO update at long completions: ours (fused LM head, and plain logits)
against TRL's GRPOTrainer, on the same rows.

A random Llama with a realistic 49,152-token vocabulary (SmolLM2's) is built once; each arm is a
fresh process that loads it, builds the same ``--rows`` rows (a 64-token prompt and exactly C
completion tokens each, no padding: equal work by construction), and runs one forward and
backward of the GRPO loss with the per-token entropy, as the first pass of an update does:

- ``ours``: ``completion_logps`` with the default ``trainer.logprob_chunk`` + ``grpo_loss``;
- ``ours-plain``: the same with ``logprob_chunk: 0`` (full ``[B,T,V]`` logits, before the change);
- ``trl``: ``GRPOTrainer._compute_loss`` (TRL's fused LM head, ``add_fused_lm_head``), run in the
  TRL venv of ``grpo_vs_trl.py`` (TRL is never a dependency).

Memory is what the update adds on top of the loaded model and inputs: on CUDA
``max_memory_allocated`` minus the allocation before; on CPU the process's peak RSS (``VmHWM``,
reset through ``/proc/self/clear_refs``) minus its RSS before, with glibc's mmap threshold fixed
so RSS tracks live tensors. fp32, beta 0 (no reference model), loss ``grpo`` on both sides.

    python benchmarks/long_completion_memory.py [--lengths 1024,2048,4096] [--rows 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ARMS = ("ours", "ours-plain", "trl")
PROMPT = 64
VOCAB = 49152


def build_model(path: Path, hidden: int, layers: int) -> None:
    from benchmarks.random_llama import build_random_llama

    build_random_llama(
        path, hidden=hidden, layers=layers, vocab=VOCAB, tie=True, max_positions=8192
    )


# --------------------------------------------------------------------------- one arm (a child)


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class Meter:
    """What the block adds to the process's memory at its peak (CUDA allocations, or RSS)."""

    def __enter__(self) -> Meter:
        import torch

        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
            self.before = rss_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.before
        else:
            self.peak = rss_kib("VmHWM") * 1024 - self.before


def rows_of(rows: int, length: int, device: Any) -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(1)
    return {
        "prompt_ids": torch.randint(3, VOCAB, (rows, PROMPT), generator=g).to(device),
        "prompt_mask": torch.ones(rows, PROMPT, dtype=torch.long, device=device),
        "completion_ids": torch.randint(3, VOCAB, (rows, length), generator=g).to(device),
        "completion_mask": torch.ones(rows, length, dtype=torch.long, device=device),
        "advantages": torch.linspace(-1, 1, rows, device=device),
    }


def default_chunk() -> int:
    from cat_framework.pipeline.schema import Trainer

    return int(Trainer.model_fields["logprob_chunk"].default)


def ours(model: Any, inputs: dict[str, Any], chunk: int) -> float:
    import torch

    from cat_framework.engine import grpo
    from cat_framework.engine.sequences import TokenBatch, completion_logps

    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    batch = TokenBatch(ids, mask, inputs["completion_mask"], PROMPT)
    logp, _ = completion_logps(model, batch, 1.0, entropy=True, chunk=chunk)
    out = grpo.grpo_loss(logp, logp.detach(), inputs["advantages"], batch.completion_mask.float())
    out.loss.backward()
    return float(out.loss)


def trl(model: Any, inputs: dict[str, Any], folder: str, work: str) -> float:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    rows, length = inputs["completion_ids"].shape
    config = GRPOConfig(
        output_dir=work,
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        fp16=False,
        per_device_train_batch_size=rows,
        num_generations=rows,
        max_completion_length=length,
        beta=0.0,
        loss_type="grpo",
        report_to=[],
        logging_steps=1,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[lambda completions, **_: [0.0] * len(completions)],
        args=config,
        train_dataset=Dataset.from_list([{"prompt": "x"}] * rows),
        processing_class=AutoTokenizer.from_pretrained(folder),
    )
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by train(); one micro-batch here
    with Meter() as meter:
        loss = trainer._compute_loss(trainer.model, inputs)
        loss.backward()
    child.peak = meter.peak  # type: ignore[attr-defined]
    return float(loss)


def child(arm: str, folder: str, length: int, rows: int, out: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device).train()
    inputs = rows_of(rows, length, device)
    start = time.perf_counter()
    if arm == "trl":
        with tempfile.TemporaryDirectory() as work:
            loss = trl(model, inputs, folder, work)
        peak = child.peak  # type: ignore[attr-defined]
    else:
        with Meter() as meter:
            loss = ours(model, inputs, default_chunk() if arm == "ours" else 0)
        peak = meter.peak
    result = {"peak_gib": round(peak / 2**30, 3), "loss": loss, "device": device}
    result["seconds"] = round(time.perf_counter() - start, 1)
    Path(out).write_text(json.dumps(result))


# --------------------------------------------------------------------------------- the driver


def run_arm(arm: str, folder: Path, length: int, rows: int, python: str) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [python, str(Path(__file__).resolve()), "--child", arm, str(folder)]
        cmd += [str(length), str(rows), out.name]
        # a fixed mmap threshold, so freed tensors leave RSS and it tracks live memory (glibc's
        # dynamic threshold would keep freed blocks in the heap: benchmarks/fsdp_memory.py)
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=1800, env=env)
        if proc.returncode:
            return {"error": (proc.stdout + proc.stderr).strip()[-1500:]}
        return json.loads(Path(out.name).read_text())


def main() -> None:
    if len(sys.argv) == 7 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="1024,2048,4096")
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--trl-python", default=None, help="the TRL venv's python")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    from benchmarks.grpo_vs_trl import DEFAULT_VENV, venv_python

    trl_python = args.trl_python or str(venv_python(DEFAULT_VENV))
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        build_model(folder, args.hidden, args.layers)
        for length in map(int, args.lengths.split(",")):
            for arm in args.arms.split(","):  # one process per arm, one at a time
                python = trl_python if arm == "trl" else sys.executable
                results[f"{arm}@{length}"] = run_arm(arm, folder, length, args.rows, python)
                print(arm, length, results[f"{arm}@{length}"], flush=True)
    report = {
        "benchmark": "long_completion_memory",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "cpu": platform.machine(),
            "cores": os.cpu_count(),
            "load_before": os.getloadavg(),
        },
        "settings": {
            "model": f"random Llama, {args.layers} layers, hidden {args.hidden}, "
            f"vocab {VOCAB}, fp32",
            "rows": args.rows,
            "prompt_tokens": PROMPT,
        },
        "results": results,
    }
    text = json.dumps(report, indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
