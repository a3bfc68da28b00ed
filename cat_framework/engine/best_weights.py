"""The trained tensors at the lowest validation loss, on disk, so early stopping can end with the
best model (the paper's "early stopping on lowest validation loss") even across a resume.

``checkpoints/best-NNNNNN/`` holds the *trainable* tensors (all weights, or only the adapters)
after step NNNNNN, laid out like a checkpoint's (the main process writes them whole, or every
process its shards). No optimizer state: training never continues from them. Writing goes
through ``.tmp-best-NNNNNN`` and a rename (a kill leaves it whole or absent; the checkpoint
module's tidying removes the leftover), and a folder is deleted only when neither the newest
best nor any checkpoint on disk names it, so whichever checkpoint a resume picks finds its best.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from cat_framework.confine import inside_run
from cat_framework.engine.checkpoint import TMP, TRASH, StateLayout, trainable_state
from cat_framework.engine.checkpoint_check import (
    CHECKPOINTS,
    MAX_STATE_BYTES,
    STATE,
    WEIGHTS,
    checkpoint_dirs,
    read_json,
    shard_files,
)
from cat_framework.engine.files import fsync_dir, fsync_file
from cat_framework.errors import CatError

PREFIX = "best-"
_NAME = re.compile(r"best-(\d{6,})")


def best_dir(run_dir: Path, step: int) -> Path:
    return inside_run(run_dir, CHECKPOINTS) / f"{PREFIX}{step:06d}"


def _file(layout: StateLayout, process_index: int) -> str:
    return shard_files(process_index)[0] if layout.sharded else WEIGHTS


def save_best(
    run_dir: Path, step: int, model: torch.nn.Module, layout: StateLayout, acc: Any
) -> None:
    """Write the trainable tensors after ``step`` (all processes call this)."""
    final = best_dir(run_dir, step)
    tmp = final.with_name(TMP + final.name)
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    if layout.sharded or acc.is_main_process:
        name = _file(layout, acc.process_index)
        tensors = (
            {n: layout.local(p).detach().to("cpu").contiguous()
             for n, p in model.named_parameters() if p.requires_grad}
            if layout.sharded else trainable_state(model)
        )  # fmt: skip
        save_file(tensors, str(tmp / name))
        fsync_file(tmp / name)
    acc.wait_for_everyone()
    if acc.is_main_process:
        fsync_dir(tmp)
        if final.exists():  # a resumed run redoing the step
            _discard(final)
        tmp.rename(final)
        fsync_dir(final.parent)
    acc.wait_for_everyone()


def restore_best(
    run_dir: Path, step: int, model: torch.nn.Module, layout: StateLayout, process_index: int
) -> None:
    """Copy the tensors saved after ``step`` back into ``model`` (this process's part)."""
    path = best_dir(run_dir, step) / _file(layout, process_index)
    if not path.is_file():
        raise CatError(
            f"{path} is missing: it holds the weights of step {step}, the lowest validation "
            "loss, which the run ends with. Was the run directory edited? Start a new run"
        )
    tensors = load_file(str(path))
    params = {n: layout.local(p) for n, p in model.named_parameters() if p.requires_grad}
    if set(tensors) != set(params):
        raise CatError(f"{path} does not fit this model's trainable parameters")
    with torch.no_grad():
        for name, tensor in tensors.items():
            if params[name].shape != tensor.shape:
                raise CatError(f"{path}: {name} has shape {tuple(tensor.shape)}, not "
                               f"{tuple(params[name].shape)}")  # fmt: skip
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))


def referenced_steps(run_dir: Path, named: Callable[[dict[str, Any]], int | None]) -> set[int]:
    """The best steps the checkpoints on disk name (``named(state)`` reads a ``state.json``);
    an unreadable one names none (a resume would skip it anyway)."""
    steps = set()
    for path in checkpoint_dirs(inside_run(run_dir, CHECKPOINTS)):
        try:
            state = read_json(path / STATE, MAX_STATE_BYTES)
        except (OSError, ValueError):
            continue
        step = named(state) if isinstance(state, dict) else None
        if step is not None:
            steps.add(step)
    return steps


def prune_best(run_dir: Path, keep: set[int]) -> None:
    """Delete every ``best-*`` folder whose step is not in ``keep`` (main process only)."""
    root = inside_run(run_dir, CHECKPOINTS)
    if not root.is_dir():
        return
    for path in sorted(root.iterdir()):
        match = _NAME.fullmatch(path.name)
        if match and path.is_dir() and not path.is_symlink() and int(match.group(1)) not in keep:
            _discard(path)


def _discard(path: Path) -> None:
    """Rename to ``.trash-*`` first (atomic), then delete: never half a ``best-*`` folder."""
    trash = path.with_name(TRASH + path.name)
    shutil.rmtree(trash, ignore_errors=True)
    path.rename(trash)
    fsync_dir(path.parent)
    shutil.rmtree(trash, ignore_errors=True)


__all__ = ["best_dir", "prune_best", "referenced_steps", "restore_best", "save_best"]
