"""Choosing a checkpoint to resume from: every file a resume will read is validated first, and
an unusable checkpoint is skipped (with a warning naming it and why) for the one before it.

A run directory may come from someone else: every count in ``state.json`` is type- and
range-checked before it names files, JSON files are read bounded, tensors files only through
their safetensors headers, and a pickle is never loaded. Every process checks every file, so all
processes skip the same checkpoints and none waits at a barrier for one that failed.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from safetensors import safe_open

from cat_framework.bounded import loads_json, read_capped
from cat_framework.engine.safe_state import check_state
from cat_framework.errors import CatError

log = structlog.get_logger("cat_framework.checkpoint")

CHECKPOINTS = "checkpoints"
WEIGHTS = "trainable.safetensors"
STATE = "state.json"
OPTIMIZER = "optimizer.safetensors"
SCHEDULER = "scheduler.safetensors"
PREFIX = "step-"
#: the largest ``state.json`` read (the framework writes a few hundred bytes)
MAX_STATE_BYTES = 2**20
#: the largest extra-slot file read (e.g. one step's rollouts sampled ahead by one process)
MAX_EXTRA_BYTES = 2**30
#: the most processes a checkpoint may name (each names files to check)
MAX_PROCESSES = 65_536
#: what an extra slot may be called (it names files inside the checkpoint)
SLOT_NAME = re.compile(r"[a-z][a-z0-9-]{0,63}")

#: slots an older version marked with a boolean in ``state.json`` instead of naming them in
#: ``"extra"`` (``{flag: slot}``; each slot's owner adds its own): such a checkpoint resumes
#: with that slot, its files checked like any other's
FLAG_SLOTS: dict[str, str] = {}

#: a slot's content check: what is wrong with it (None: nothing)
SlotCheck = Callable[[Any], "str | None"]


@dataclass
class Checkpoint:
    path: Path
    step: int
    state: dict[str, Any]

    @property
    def extra(self) -> list[str]:
        """The names of the extra per-process slots it holds."""
        return list(self.state.get("extra", []))


class InvalidCheckpoint(CatError):
    """A checkpoint directory that cannot be resumed from (the message says why)."""


def rng_file(process_index: int) -> str:
    return f"rng-{process_index}.safetensors"


def extra_file(name: str, process_index: int) -> str:
    """One process's file of the extra slot ``name`` (plain JSON)."""
    return f"{name}-{process_index}.json"


def shard_files(process_index: int) -> tuple[str, str]:
    """The weights and optimizer files of one process in a sharded checkpoint."""
    return f"trainable-{process_index}.safetensors", f"optimizer-{process_index}.safetensors"


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


def read_json(file: Path, limit: int) -> Any:
    """A JSON run file, bounded (:mod:`cat_framework.bounded`): ``OSError`` when it cannot be
    read (a FIFO or device is refused before reading), ``ValueError`` when it is not JSON."""
    return loads_json(read_capped(file, limit))


def _read_state(path: Path, expected_step: int | None) -> dict[str, Any]:
    """``state.json``, with every count a resume uses range-checked before it is used: a
    hostile ``"processes": 10**12`` would otherwise name 10^12 files to check."""
    try:
        state = read_json(path / STATE, MAX_STATE_BYTES)
    except FileNotFoundError:
        raise InvalidCheckpoint(f"{STATE} is missing") from None
    except OSError as e:
        raise InvalidCheckpoint(f"{STATE} cannot be read ({e.strerror or e})") from None
    except ValueError as e:
        raise InvalidCheckpoint(f"{STATE} is not readable JSON ({e})") from None
    step = state.get("step") if isinstance(state, dict) else None
    if type(step) is not int or step != expected_step:  # True == 1: bools are no steps
        raise InvalidCheckpoint(f"{STATE} does not say step {expected_step}")
    processes = state.get("processes", 1)
    if type(processes) is not int or not 1 <= processes <= MAX_PROCESSES:
        raise InvalidCheckpoint(
            f"{STATE} has an invalid 'processes' ({reprlib.repr(processes)}): a whole number "
            f"from 1 to {MAX_PROCESSES:,} is expected"
        )
    if type(state.get("sharded", False)) is not bool:
        raise InvalidCheckpoint(
            f"{STATE}: 'sharded' is {reprlib.repr(state['sharded'])}, not a boolean"
        )
    for flag, slot in FLAG_SLOTS.items():
        if flag in state and type(state[flag]) is not bool:
            raise InvalidCheckpoint(
                f"{STATE}: {flag!r} is {reprlib.repr(state[flag])}, not a boolean"
            )
        if state.get(flag) and "extra" not in state:
            state["extra"] = [slot]
    extra = state.get("extra", [])
    if not isinstance(extra, list) or not all(
        isinstance(n, str) and SLOT_NAME.fullmatch(n) for n in extra
    ):
        raise InvalidCheckpoint(
            f"{STATE}: 'extra' is {reprlib.repr(extra)}, not a list of slot names "
            "(lower-case letters, digits and '-')"
        )
    return state


def _require_file(file: Path) -> None:
    """Refuse a FIFO or device before a reader blocks on it or reads it without end."""
    if file.exists() and not file.is_file():
        raise InvalidCheckpoint(f"{file.name} is not a regular file")


def _check_weights(path: Path, weights: list[str]) -> None:
    for weight in weights:
        _require_file(path / weight)
        try:
            with safe_open(str(path / weight), "pt"):
                pass
        except FileNotFoundError:
            raise InvalidCheckpoint(f"{weight} is missing") from None
        except Exception as e:  # SafetensorError: truncated or not a safetensors file
            raise InvalidCheckpoint(f"{weight} is damaged ({e})") from None


def _check_extra(path: Path, names: list[str], processes: int, checks: Mapping[str, SlotCheck]):
    for name in names:
        for i in range(processes):
            file = extra_file(name, i)
            try:
                data = read_json(path / file, MAX_EXTRA_BYTES)
            except FileNotFoundError:
                raise InvalidCheckpoint(f"{file} is missing") from None
            except (OSError, ValueError) as e:
                raise InvalidCheckpoint(f"{file} is not readable JSON ({e})") from None
            check = checks.get(name)
            if check is not None and (fault := check(data)) is not None:
                raise InvalidCheckpoint(f"{file}: {fault}")


def _check_states(path: Path, names: list[str]) -> None:
    for name in names:
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


def check_checkpoint(
    path: Path, checks: Mapping[str, SlotCheck] | None = None, step: int | None = None
) -> Checkpoint:
    """Validate everything a resume will read, without loading the tensors: ``state.json``, the
    weights' safetensors header, every process's state files and every extra slot's files
    (``checks``: per slot name, what is wrong with a file's content). ``step``: the step it must
    hold (default: the one its ``step-NNNNNN`` name says; a save checks its temporary directory
    before naming it). Raises :class:`InvalidCheckpoint`."""
    state = _read_state(path, step_of(path) if step is None else step)
    processes = state.get("processes", 1)
    if state.get("sharded"):
        weights = [shard_files(i)[0] for i in range(processes)]
        states = [shard_files(i)[1] for i in range(processes)]
    else:
        weights, states = [WEIGHTS], [OPTIMIZER]
    _check_weights(path, weights)
    _check_extra(path, state.get("extra", []), processes, checks or {})
    _check_states(path, [*states, SCHEDULER, *(rng_file(i) for i in range(processes))])
    return Checkpoint(path, state["step"], state)


def latest_checkpoint(
    run_dir: Path, checks: Mapping[str, SlotCheck] | None = None
) -> Checkpoint | None:
    """The newest valid checkpoint (:func:`check_checkpoint`); None when there is none at all.
    Invalid ones are skipped with a warning naming each and why; if every checkpoint is
    invalid, a :class:`CatError`."""
    root = run_dir / CHECKPOINTS
    skipped: list[str] = []
    for path in reversed(checkpoint_dirs(root)):
        try:
            ckpt = check_checkpoint(path, checks)
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


def load_extra(ckpt: Checkpoint, name: str, process_index: int) -> tuple[Any, Path] | None:
    """This process's content of the extra slot ``name`` (plain JSON, validated by its owner)
    and the file it came from; None when the checkpoint holds no such slot."""
    if name not in ckpt.extra:
        return None
    file = ckpt.path / extra_file(name, process_index)
    try:
        return read_json(file, MAX_EXTRA_BYTES), file
    except (OSError, ValueError) as e:
        raise CatError(
            f"checkpoint {ckpt.path}: {file.name} cannot be read ({e}): resume from an earlier "
            "checkpoint (move this one away), or start the run again"
        ) from None


__all__ = [
    "CHECKPOINTS",
    "FLAG_SLOTS",
    "Checkpoint",
    "InvalidCheckpoint",
    "SlotCheck",
    "check_checkpoint",
    "checkpoint_dirs",
    "extra_file",
    "latest_checkpoint",
    "load_extra",
    "step_of",
]
