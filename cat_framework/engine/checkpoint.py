"""Checkpoints a crash cannot corrupt, whose loading never runs code, and resuming from the newest
valid one.

A checkpoint is ``checkpoints/step-NNNNNN/`` holding the *trainable* tensors (all weights, or only
the LoRA adapters), the optimizer and scheduler states, every process's RNG states and
``state.json``. Nothing in it is a pickle: a run directory may come from someone else, and
unpickling runs whatever code the file names. Each state is a safetensors file (see
:mod:`cat_framework.engine.safe_state`).

Writing: everything goes into ``.tmp-step-NNNNNN/``, is fsynced, and the directory is renamed
into place, so a ``step-*`` directory is always whole. Pruning first renames a doomed checkpoint
to ``.trash-step-NNNNNN`` (atomic) and only then deletes it, so a kill never leaves a
half-deleted ``step-*``. Leftover ``.tmp-*``/``.trash-*`` directories are removed at the next
save (and by :func:`tidy_checkpoints` at a resume).

Under FSDP2 (``"sharded": true`` in ``state.json``) no process ever holds the whole model, so
each writes its own shards of the weights and optimizer states (``trainable-<rank>`` and
``optimizer-<rank>``, safetensors like the rest: torch's distributed checkpoint format pickles its
metadata) into the same temporary directory; the rename happens after all have written. Such a
checkpoint resumes with the same number of processes.

Reading: :func:`latest_checkpoint` validates a checkpoint fully (state.json, every safetensors
header, every state file) before choosing it, and falls back to the previous one, with a
warning naming what it skipped and why.
"""

from __future__ import annotations

import random
import reprlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cat_framework.bounded import loads_json, read_capped
from cat_framework.confine import inside_run
from cat_framework.engine import fsdp
from cat_framework.engine.files import atomic_write_json, fsync_dir, fsync_file, rewrite_jsonl
from cat_framework.engine.finite import refuse_nonfinite_weights
from cat_framework.engine.safe_state import check_state, load_state, save_state
from cat_framework.errors import CatError

log = structlog.get_logger("cat_framework.checkpoint")

CHECKPOINTS = "checkpoints"
WEIGHTS = "trainable.safetensors"
STATE = "state.json"
OPTIMIZER = "optimizer.safetensors"
SCHEDULER = "scheduler.safetensors"
PREFIX = "step-"
TMP = ".tmp-"
TRASH = ".trash-"
#: the largest ``state.json`` read (the framework writes a few hundred bytes)
MAX_STATE_BYTES = 2**20
#: the largest pending-rollouts file read (it holds one step's rollouts of one process)
MAX_PENDING_BYTES = 2**30
#: the most processes a checkpoint may name (each names files to check)
MAX_PROCESSES = 65_536


def rng_file(process_index: int) -> str:
    return f"rng-{process_index}.safetensors"


def pending_file(process_index: int) -> str:
    """One process's rollouts sampled ahead for the next step (``trainer.async_rollouts``)."""
    return f"pending-rollouts-{process_index}.json"


def shard_files(process_index: int) -> tuple[str, str]:
    """The weights and optimizer files of one process in a sharded (FSDP2) checkpoint."""
    return f"trainable-{process_index}.safetensors", f"optimizer-{process_index}.safetensors"


@dataclass
class Checkpoint:
    path: Path
    step: int
    state: dict[str, Any]


class InvalidCheckpoint(CatError):
    """A checkpoint directory that cannot be resumed from (the message says why)."""


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


def step_of(path: Path) -> int | None:
    """The step a ``step-NNNNNN`` directory holds (None for any other name)."""
    digits = path.name.removeprefix(PREFIX)
    return int(digits) if path.name.startswith(PREFIX) and digits.isdigit() else None


def checkpoint_dirs(root: Path) -> list[Path]:
    """The ``step-*`` directories under ``root``, oldest first (by step number, not by name)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and step_of(p) is not None]
    return sorted(found, key=lambda p: step_of(p) or 0)


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
    pending: Any = None,
) -> Path | None:
    """Write ``step-NNNNNN`` atomically (all processes call this: each writes its RNG streams
    and, under one-step-off rollouts, the ``pending`` rollouts it sampled for the next step);
    prune to the ``keep`` newest. Checkpoints of later steps are dropped too: they belong to
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
    if pending is not None:
        atomic_write_json(tmp / pending_file(accelerator.process_index), pending)
    sharded = fsdp.is_fsdp2(accelerator)
    if sharded:  # every process writes its shards
        weights, optim = shard_files(accelerator.process_index)
        local = {n: fsdp.local_tensor(p).detach().to("cpu").contiguous()
                 for n, p in fsdp.sharded_params(model)}  # fmt: skip
        save_file(local, str(tmp / weights))
        fsync_file(tmp / weights)
        save_state(tmp / optim, fsdp.local_optimizer_state(optimizer))
    if accelerator.is_main_process:
        if not sharded:
            save_file(trainable_state(model), str(tmp / WEIGHTS))
            fsync_file(tmp / WEIGHTS)
            save_state(tmp / OPTIMIZER, optimizer.state_dict())
        save_state(tmp / SCHEDULER, scheduler.state_dict())
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return None
    meta = {
        "step": step,
        "processes": accelerator.num_processes,
        **({"sharded": True} if sharded else {}),
        **({"pending_rollouts": True} if pending is not None else {}),
    }
    atomic_write_json(tmp / STATE, {**meta, **state})
    fsync_dir(tmp)
    if final.exists():  # a resumed run redoing a step: replace it
        _discard([final])
    tmp.rename(final)
    fsync_dir(root)
    prune_checkpoints(run_dir, step, keep)
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(run_dir: Path, step: int, keep: int) -> None:
    """Keep the ``keep`` newest checkpoints up to ``step`` and drop any later one (the timeline
    a resume abandoned, or a damaged one a resume skipped). Run after every save and when a run
    resumes, so what a kill during a prune left is removed even if no save follows."""
    root = inside_run(run_dir, CHECKPOINTS)
    kept = [p for p in checkpoint_dirs(root) if (step_of(p) or 0) <= step]
    later = [p for p in checkpoint_dirs(root) if (step_of(p) or 0) > step]
    _discard(kept[:-keep] + later)


def _read_json(file: Path, limit: int) -> Any:
    """A JSON run file, bounded (:mod:`cat_framework.bounded`): ``OSError`` when it cannot be
    read (a FIFO or device is refused before reading), ``ValueError`` when it is not JSON."""
    return loads_json(read_capped(file, limit))


def _read_state(path: Path) -> dict[str, Any]:
    """``state.json``, with every count a resume uses range-checked before it is used: a
    hostile ``"processes": 10**12`` would otherwise name 10^12 files to check."""
    try:
        state = _read_json(path / STATE, MAX_STATE_BYTES)
    except FileNotFoundError:
        raise InvalidCheckpoint(f"{STATE} is missing") from None
    except OSError as e:
        raise InvalidCheckpoint(f"{STATE} cannot be read ({e.strerror or e})") from None
    except ValueError as e:
        raise InvalidCheckpoint(f"{STATE} is not readable JSON ({e})") from None
    step = state.get("step") if isinstance(state, dict) else None
    if type(step) is not int or step != step_of(path):  # True == 1: bools are no steps
        raise InvalidCheckpoint(f"{STATE} does not say step {step_of(path)}")
    processes = state.get("processes", 1)
    if type(processes) is not int or not 1 <= processes <= MAX_PROCESSES:
        raise InvalidCheckpoint(
            f"{STATE} has an invalid 'processes' ({reprlib.repr(processes)}): a whole number "
            f"from 1 to {MAX_PROCESSES:,} is expected"
        )
    for flag in ("sharded", "pending_rollouts"):
        if type(state.get(flag, False)) is not bool:
            raise InvalidCheckpoint(
                f"{STATE}: {flag!r} is {reprlib.repr(state[flag])}, not a boolean"
            )
    return state


def _require_file(file: Path) -> None:
    """Refuse a FIFO or device before a reader blocks on it or reads it without end."""
    if file.exists() and not file.is_file():
        raise InvalidCheckpoint(f"{file.name} is not a regular file")


def check_checkpoint(
    path: Path, check_pending: Callable[[Any], str | None] | None = None
) -> Checkpoint:
    """Validate everything a resume will read, without loading the tensors: ``state.json``, the
    weights' safetensors header and every state file; ``check_pending`` says what is wrong with
    a pending-rollouts file's values (None: nothing). Every process checks every file, so all
    skip the same checkpoints. Raises :class:`InvalidCheckpoint`."""
    state = _read_state(path)
    processes = state.get("processes", 1)
    if state.get("sharded"):
        weights = [shard_files(i)[0] for i in range(processes)]
        states = [shard_files(i)[1] for i in range(processes)]
    else:
        weights, states = [WEIGHTS], [OPTIMIZER]
    for weight in weights:
        _require_file(path / weight)
        try:
            with safe_open(str(path / weight), "pt"):
                pass
        except FileNotFoundError:
            raise InvalidCheckpoint(f"{weight} is missing") from None
        except Exception as e:  # SafetensorError: truncated or not a safetensors file
            raise InvalidCheckpoint(f"{weight} is damaged ({e})") from None
    for i in range(processes) if state.get("pending_rollouts") else ():
        try:
            data = _read_json(path / pending_file(i), MAX_PENDING_BYTES)
        except FileNotFoundError:
            raise InvalidCheckpoint(f"{pending_file(i)} is missing") from None
        except (OSError, ValueError) as e:
            raise InvalidCheckpoint(f"{pending_file(i)} is not readable JSON ({e})") from None
        if check_pending is not None and (fault := check_pending(data)) is not None:
            raise InvalidCheckpoint(f"{pending_file(i)}: {fault}")
    for name in (*states, SCHEDULER, *(rng_file(i) for i in range(processes))):
        file = path / name
        if not file.exists():
            pickle = file.with_suffix(".pt")
            if pickle.exists():
                raise InvalidCheckpoint(
                    f"it holds {pickle.name} instead of {name}: a pickle (written by an older "
                    "version, or planted), and pickles are never loaded because loading one "
                    "can run arbitrary code"
                )
            raise InvalidCheckpoint(f"{name} is missing")
        _require_file(file)
        try:
            check_state(file)
        except CatError as e:
            raise InvalidCheckpoint(str(e)) from None
    return Checkpoint(path, state["step"], state)


def latest_checkpoint(
    run_dir: Path, check_pending: Callable[[Any], str | None] | None = None
) -> Checkpoint | None:
    """The newest valid checkpoint (:func:`check_checkpoint`); None when there is none at all.
    Invalid ones are skipped with a warning naming each and why; if every checkpoint is
    invalid, a :class:`CatError`."""
    root = run_dir / CHECKPOINTS
    skipped: list[str] = []
    for path in reversed(checkpoint_dirs(root)):
        try:
            ckpt = check_checkpoint(path, check_pending)
        except InvalidCheckpoint as e:
            log.warning("skipping an unusable checkpoint", checkpoint=str(path), reason=str(e))
            skipped.append(f"{path.name}: {e}")
            continue
        if skipped:
            log.warning(
                "resuming from an older checkpoint", checkpoint=str(path), skipped=len(skipped)
            )
        return ckpt
    if skipped:
        raise CatError(
            f"no usable checkpoint in {root}: " + "; ".join(skipped) + ". Start the run again "
            "without --resume (that replaces this directory's checkpoints), or restore a "
            "checkpoint from a copy."
        )
    return None


def load_checkpoint(
    ckpt: Checkpoint, model: torch.nn.Module, optimizer: Any, scheduler: Any, process_index: int
) -> None:
    """Restore weights, optimizer, scheduler and this process's RNG streams (no file is
    unpickled). A sharded checkpoint restores this process's shards."""
    sharded = _check_layout(ckpt, model, process_index)
    weights, optim = shard_files(process_index) if sharded else (WEIGHTS, OPTIMIZER)
    tensors = load_file(str(ckpt.path / weights))
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors))[:3], sorted(set(tensors) - expected)[:3]
        raise CatError(
            f"checkpoint {ckpt.path} does not fit this model (missing {missing}, unexpected "
            f"{extra}): was the pipeline's model or LoRA setting changed since?"
        )
    params = {n: fsdp.local_tensor(p) for n, p in model.named_parameters()}
    with torch.no_grad():
        for name, tensor in tensors.items():
            if params[name].shape != tensor.shape:
                raise CatError(
                    f"checkpoint {ckpt.path}: {name} has shape {tuple(tensor.shape)} here but "
                    f"{tuple(params[name].shape)} in the model (was the process count changed?)"
                )
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))
    if sharded:
        fsdp.load_local_optimizer_state(optimizer, load_state(ckpt.path / optim))
    else:
        optimizer.load_state_dict(load_state(ckpt.path / optim))
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


def load_pending(ckpt: Checkpoint, process_index: int) -> tuple[Any, Path] | None:
    """This process's rollouts sampled ahead for the step after ``ckpt`` (plain JSON, validated
    by the caller), and the file they came from; None when the checkpoint holds none."""
    if not ckpt.state.get("pending_rollouts"):
        return None
    file = ckpt.path / pending_file(process_index)
    try:
        return _read_json(file, MAX_PENDING_BYTES), file
    except (OSError, ValueError) as e:
        raise CatError(
            f"checkpoint {ckpt.path}: {file.name} cannot be read ({e}): resume from an earlier "
            "checkpoint (move this one away), or start the run again"
        ) from None


def _check_layout(ckpt: Checkpoint, model: torch.nn.Module, process_index: int) -> bool:
    """Whether ``ckpt`` is sharded; refuses a layout this run cannot restore."""
    sharded = bool(ckpt.state.get("sharded"))
    model_sharded = any(fsdp.local_tensor(p) is not p for p in model.parameters())
    if sharded != model_sharded:
        written = "FSDP2 (sharded)" if sharded else "without FSDP2"
        now = "under FSDP2" if model_sharded else "without FSDP2"
        raise CatError(
            f"checkpoint {ckpt.path} was written {written} but this run trains {now}: resume "
            "with the accelerate config the run was started with"
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
    "Checkpoint",
    "InvalidCheckpoint",
    "check_checkpoint",
    "latest_checkpoint",
    "load_checkpoint",
    "load_pending",
    "prune_checkpoints",
    "save_checkpoint",
    "tidy_checkpoints",
    "trainable_state",
    "truncate_jsonl",
]
