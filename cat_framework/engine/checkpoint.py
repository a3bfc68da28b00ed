"""Checkpoints a crash cannot corrupt, and resuming from the latest one.

A checkpoint is ``checkpoints/step-NNNNNN/`` holding the *trainable* tensors (all weights, or only
the LoRA adapters), the optimizer and scheduler states, every process's RNG states and
``state.json``. It is written under a temporary name and renamed into place once complete, so the
latest ``step-*`` directory is always whole; ``state.json`` is written last and marks it valid.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from cat_framework.errors import CatError

CHECKPOINTS = "checkpoints"
WEIGHTS = "trainable.safetensors"
STATE = "state.json"


@dataclass
class Checkpoint:
    path: Path
    step: int
    state: dict[str, Any]


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors the optimizer changes, by parameter name (contiguous CPU copies)."""
    return {
        n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad
    }


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:  # pragma: no cover - numpy comes with torch's usual installs
        pass
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    accelerator: Any,
    state: dict[str, Any],
    keep: int,
) -> Path | None:
    """Write ``step-NNNNNN`` atomically (all processes call this); prune to ``keep`` newest.

    Returns the checkpoint path on the main process, None elsewhere."""
    root = run_dir / CHECKPOINTS
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        save_file(trainable_state(model), str(tmp / WEIGHTS))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return None
    (tmp / STATE).write_text(json.dumps({"step": step, **state}, indent=2), encoding="utf-8")
    if final.exists():  # a resumed run redoing a step: replace it
        shutil.rmtree(final)
    tmp.rename(final)
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def latest_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The newest complete checkpoint (temporary directories and ones without state are ignored)."""
    root = run_dir / CHECKPOINTS
    for path in sorted(root.glob("step-*"), reverse=True):
        try:
            state = json.loads((path / STATE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if (path / WEIGHTS).exists():
            return Checkpoint(path, int(state["step"]), state)
    return None


def load_checkpoint(
    ckpt: Checkpoint, model: torch.nn.Module, optimizer: Any, scheduler: Any, process_index: int
) -> None:
    """Restore weights, optimizer, scheduler and this process's RNG streams."""
    tensors = load_file(str(ckpt.path / WEIGHTS))
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors))[:3], sorted(set(tensors) - expected)[:3]
        raise CatError(
            f"checkpoint {ckpt.path} does not fit this model (missing {missing}, unexpected "
            f"{extra}): was the pipeline's model or LoRA setting changed since?"
        )
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))
    optimizer.load_state_dict(torch.load(ckpt.path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(ckpt.path / "scheduler.pt", weights_only=False))
    rng = ckpt.path / f"rng-{process_index}.pt"
    if rng.exists():
        set_rng_state(torch.load(rng, weights_only=False))


def truncate_jsonl(path: Path, max_step: int) -> None:
    """Keep the lines of steps <= ``max_step`` (the rest are redone after a resume); a line cut
    by a crash is dropped."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and int(row.get("step", 0)) <= max_step:
            kept.append(line + "\n")
    path.write_text("".join(kept), encoding="utf-8")


__all__ = [
    "Checkpoint",
    "latest_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "trainable_state",
    "truncate_jsonl",
]
