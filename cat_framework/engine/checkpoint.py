"""Checkpoints a crash cannot corrupt, whose loading never runs code, and resuming from the newest
valid one.

A checkpoint is ``checkpoints/step-NNNNNN/`` holding the *trainable* tensors (all weights, or
only the adapters), the optimizer and scheduler states, every process's RNG states and
``state.json``. Nothing in it is a pickle: a run directory may come from someone else, and
unpickling runs whatever code the file names. Each state is a safetensors file (see
:mod:`cat_framework.engine.safe_state`).

Writing: everything goes into ``.tmp-step-NNNNNN/``, is fsynced, and the directory is renamed
into place, so a ``step-*`` directory is always whole: its name is the completeness marker, for
a resume and for any other reader (a server reloading weights lists ``step-*`` only). Every
process writes its part, then waits for the others; only then does the main process write
``state.json``, check the directory exactly as a resume would (every process's files present and
readable) and rename it. A process that died mid-write never reaches that point (no name is
given; the others wait at most ``CAT_DIST_TIMEOUT``), and one whose files went elsewhere (a run
directory not shared between machines) fails the check: the run stops, naming the files.
Pruning first renames a doomed checkpoint to ``.trash-step-NNNNNN`` (atomic) and only then
deletes it, so a kill never leaves a half-deleted ``step-*``. Leftover ``.tmp-*``/``.trash-*``
directories are removed at the next save (and by :func:`tidy_checkpoints` at a resume).

How the trained state is laid out comes from the run's placement (a :class:`StateLayout`): with
sharded weights (``"sharded": true`` in ``state.json``) no process ever holds the whole model, so
each writes its own shards of the weights and optimizer states (``trainable-<rank>`` and
``optimizer-<rank>``, safetensors like the rest: torch's distributed checkpoint format pickles its
metadata) into the same temporary directory; the rename happens after all have written. Such a
checkpoint resumes with the same number of processes. A placement may also keep per-process
*extra slots* (plain JSON, named in ``state.json``'s ``"extra"``); this module knows no slot.

Reading: :func:`~cat_framework.engine.checkpoint_check.latest_checkpoint` validates a
checkpoint fully before choosing it, and falls back to the previous one.
"""

from __future__ import annotations

import random
import reprlib
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import structlog
import torch
from safetensors.torch import load_file, save_file

from cat_framework.confine import inside_run
from cat_framework.engine.checkpoint_check import (
    CHECKPOINTS,
    OPTIMIZER,
    PREFIX,
    SCHEDULER,
    SLOT_NAME,
    STATE,
    WEIGHTS,
    Checkpoint,
    InvalidCheckpoint,
    SlotCheck,
    check_checkpoint,
    checkpoint_dirs,
    extra_file,
    latest_checkpoint,
    load_extra,
    rng_file,
    shard_files,
    step_of,
)
from cat_framework.engine.files import atomic_write_json, fsync_dir, fsync_file, rewrite_jsonl
from cat_framework.engine.finite import refuse_nonfinite_weights
from cat_framework.engine.main_decides import main_decides
from cat_framework.engine.safe_state import load_state, save_state
from cat_framework.errors import CatError

log = structlog.get_logger("cat_framework.checkpoint")

TMP = ".tmp-"
TRASH = ".trash-"


class StateLayout(Protocol):
    """How the trained state sits on the processes (the placement says): whole on every
    process (the main one writes it) or sharded (each writes its own part)."""

    sharded: bool
    #: how a message names it (e.g. "whole weights")
    description: str

    def local(self, tensor: torch.Tensor) -> torch.Tensor:
        """This process's part of a parameter (the tensor itself when whole)."""
        ...

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]: ...

    def load_optimizer_state(self, optimizer: Any, state: dict[str, Any]) -> None: ...


class _Whole:
    """Every process holds the whole trained state: the main process writes it."""

    sharded = False
    description = "whole weights"

    def local(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        return optimizer.state_dict()

    def load_optimizer_state(self, optimizer: Any, state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state)


WHOLE: StateLayout = _Whole()


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors the optimizer changes, by parameter name (contiguous CPU copies)."""
    return {
        n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad
    }


def rng_state() -> dict[str, Any]:
    """This process's random streams as plain data (numpy's key array becomes a list of ints)."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy comes with torch's usual installs
        return state
    kind, key, pos, has_gauss, cached = np.random.get_state()
    state["numpy"] = [str(kind), [int(k) for k in key], int(pos), int(has_gauss), float(cached)]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        kind, key, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, np.asarray(key, dtype=np.uint32), pos, has_gauss, cached))


def tidy_checkpoints(run_dir: Path) -> None:
    """Finish what a killed save or prune left: delete ``.trash-*`` (already doomed) and
    ``.tmp-*`` (never completed) directories. Main process only, while no save is running."""
    root = inside_run(run_dir, CHECKPOINTS)  # a linked folder's entries are not the run's
    if not root.is_dir():
        return
    for path in root.iterdir():
        if path.name.startswith((TMP, TRASH)):
            shutil.rmtree(path, ignore_errors=True)


def _discard(paths: list[Path]) -> None:
    """Delete checkpoint directories so that a kill at any moment leaves each either whole under
    its name or gone: rename all to ``.trash-*`` first, then delete."""
    trashed = []
    for path in paths:
        trash = path.with_name(TRASH + path.name)
        shutil.rmtree(trash, ignore_errors=True)
        path.rename(trash)
        trashed.append(trash)
    if trashed:
        fsync_dir(paths[0].parent)
    for trash in trashed:
        shutil.rmtree(trash, ignore_errors=True)


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    accelerator: Any,
    state: dict[str, Any],
    keep: int,
    layout: StateLayout = WHOLE,
    extra: Mapping[str, Any] | None = None,
) -> Path | None:
    """Write ``step-NNNNNN`` atomically (all processes call this: each writes its RNG streams,
    its shards under a sharded ``layout``, and its ``extra`` slots: name -> plain JSON data,
    the same names on every process); prune to the ``keep`` newest. Checkpoints of later steps are dropped too: they belong to
    the timeline a resume abandoned.

    Returns the checkpoint path on the main process, None elsewhere."""
    root = run_dir / CHECKPOINTS
    final = root / f"{PREFIX}{step:06d}"
    refuse_nonfinite_weights(model, accelerator, f"checkpoint {final.name}")  # before any write
    tmp = root / f"{TMP}{final.name}"
    if accelerator.is_main_process:
        tidy_checkpoints(run_dir)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    save_state(tmp / rng_file(accelerator.process_index), rng_state())
    for name in extra or {}:  # a bad name would make every later resume skip this checkpoint
        if not SLOT_NAME.fullmatch(name):
            raise ValueError(f"checkpoint slot name {name!r} must match {SLOT_NAME.pattern}")
    for name, data in (extra or {}).items():
        atomic_write_json(tmp / extra_file(name, accelerator.process_index), data)
    sharded = layout.sharded
    if sharded:  # every process writes its shards
        weights, optim = shard_files(accelerator.process_index)
        local = {n: layout.local(p).detach().to("cpu").contiguous()
                 for n, p in model.named_parameters() if p.requires_grad}  # fmt: skip
        save_file(local, str(tmp / weights))
        fsync_file(tmp / weights)
        save_state(tmp / optim, layout.optimizer_state(optimizer))
    if accelerator.is_main_process:
        if not sharded:
            save_file(trainable_state(model), str(tmp / WEIGHTS))
            fsync_file(tmp / WEIGHTS)
            save_state(tmp / OPTIMIZER, optimizer.state_dict())
        save_state(tmp / SCHEDULER, scheduler.state_dict())
    accelerator.wait_for_everyone()  # every process has written (and fsynced) its part
    meta = {
        "step": step,
        "processes": accelerator.num_processes,
        **({"sharded": True} if sharded else {}),
        **({"extra": sorted(extra)} if extra else {}),
    }

    def publish() -> Path:
        atomic_write_json(tmp / STATE, {**meta, **state})
        fsync_dir(tmp)
        _require_complete(tmp, step)
        if final.exists():  # a resumed run redoing a step: replace it
            _discard([final])
        tmp.rename(final)  # the name is the completeness marker
        fsync_dir(root)
        prune_checkpoints(run_dir, step, keep)
        return final

    # the main process names it; its refusal (a part missing) stops every process
    return main_decides(publish, main=accelerator.is_main_process, default=None)


def _require_complete(tmp: Path, step: int) -> None:
    """Before a checkpoint gets its name, every process's part must be in it, checked as a
    resume checks it: a process whose files went elsewhere (a run directory that is not the same
    on every machine) would otherwise leave a named checkpoint no resume can use."""
    try:
        check_checkpoint(tmp, step=step)
    except InvalidCheckpoint as e:
        raise CatError(
            f"checkpoint {tmp.name.removeprefix(TMP)} is incomplete after every process wrote "
            f"its part ({e}), so it is not kept. Every process must write into the same run "
            "directory: on several machines, put --run-dir on a filesystem all of them mount "
            "(NFS, Lustre, ...), then resume with --resume"
        ) from None


def prune_checkpoints(run_dir: Path, step: int, keep: int) -> None:
    """Keep the ``keep`` newest checkpoints up to ``step`` and drop any later one (the timeline
    a resume abandoned, or a damaged one a resume skipped). Run after every save and when a run
    resumes, so what a kill during a prune left is removed even if no save follows."""
    root = inside_run(run_dir, CHECKPOINTS)
    kept = [p for p in checkpoint_dirs(root) if (step_of(p) or 0) <= step]
    later = [p for p in checkpoint_dirs(root) if (step_of(p) or 0) > step]
    _discard(kept[:-keep] + later)


def load_checkpoint(
    ckpt: Checkpoint,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    process_index: int,
    layout: StateLayout = WHOLE,
) -> None:
    """Restore weights, optimizer, scheduler and this process's RNG streams (no file is
    unpickled). A sharded checkpoint restores this process's shards."""
    sharded = _check_layout(ckpt, layout, process_index)
    weights, optim = shard_files(process_index) if sharded else (WEIGHTS, OPTIMIZER)
    tensors = load_file(str(ckpt.path / weights))
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors))[:3], sorted(set(tensors) - expected)[:3]
        raise CatError(
            f"checkpoint {ckpt.path} does not fit this model (missing {missing}, unexpected "
            f"{extra}): was the pipeline's model, or which of its parameters train (adapters), changed since?"
        )
    params = {n: layout.local(p) for n, p in model.named_parameters()}
    with torch.no_grad():
        for name, tensor in tensors.items():
            if params[name].shape != tensor.shape:
                raise CatError(
                    f"checkpoint {ckpt.path}: {name} has shape {tuple(tensor.shape)} here but "
                    f"{tuple(params[name].shape)} in the model (was the process count changed?)"
                )
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))
    layout.load_optimizer_state(optimizer, load_state(ckpt.path / optim))
    scheduler.load_state_dict(load_state(ckpt.path / SCHEDULER))
    rng = ckpt.path / rng_file(process_index)
    if rng.exists():
        set_rng_state(load_state(rng))
    else:
        log.warning(
            "no random state for this process in the checkpoint (was the process count "
            "changed?): it keeps its seeded streams",
            checkpoint=str(ckpt.path),
            process=process_index,
        )


def _check_layout(ckpt: Checkpoint, layout: StateLayout, process_index: int) -> bool:
    """Whether ``ckpt`` is sharded; refuses a layout this run cannot restore."""
    sharded = bool(ckpt.state.get("sharded"))
    if sharded != layout.sharded:
        written = "sharded weights" if sharded else "whole weights"
        raise CatError(
            f"checkpoint {ckpt.path} was written with {written} but this run trains with "
            f"{layout.description}: resume with the accelerate config the run was started with"
        )
    if sharded and process_index >= ckpt.state.get("processes", 1):
        raise CatError(
            f"checkpoint {ckpt.path} holds shards of {ckpt.state.get('processes')} processes: "
            "resume with that many processes"
        )
    return sharded


def truncate_jsonl(
    path: Path, max_step: int, check: Callable[[dict[str, Any]], Any] | None = None
) -> None:
    """Keep the lines of steps <= ``max_step`` (the rest are redone after a resume), atomically;
    a last line cut by a crash is dropped. ``check(row)`` may refuse a line with a
    :class:`CatError` (the message gets the file and line)."""

    def keep(row: dict[str, Any]) -> bool:
        if check is not None:
            check(row)
        step = row.get("step", 0)
        if not isinstance(step, int) or isinstance(step, bool):
            raise CatError(f"'step' is {reprlib.repr(step)}, not an integer")
        return step <= max_step

    rewrite_jsonl(path, keep)


__all__ = [
    "CHECKPOINTS",
    "WHOLE",
    "Checkpoint",
    "InvalidCheckpoint",
    "SlotCheck",
    "StateLayout",
    "check_checkpoint",
    "latest_checkpoint",
    "load_checkpoint",
    "load_extra",
    "prune_checkpoints",
    "save_checkpoint",
    "step_of",
    "tidy_checkpoints",
    "trainable_state",
    "truncate_jsonl",
]
