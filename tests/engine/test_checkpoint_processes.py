"""A checkpoint gets its name only when every process's part is in it. Under sharded weights
each process writes its own shards: one that died mid-write, or whose files went to another
directory of the same path (a run directory that is not shared between machines), must never
leave a ``step-*`` that a resume would pick. Two processes are two threads here, with a
barrier for accelerate's (the real 2-process kill and resume: test_placement_equivalence.py)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from cat_framework.engine import checkpoint as checkpoint_module
from cat_framework.engine.checkpoint import (
    CHECKPOINTS,
    check_checkpoint,
    latest_checkpoint,
    save_checkpoint,
    tidy_checkpoints,
)
from cat_framework.engine.fsdp import SHARDED
from cat_framework.errors import CatError
from tests.engine.test_checkpoint import make_training, step_names, thread_process


def two_processes(run_dirs: tuple[Path, Path], step: int) -> dict[int, Any]:
    """Both processes save ``step`` (process i into ``run_dirs[i]``): what each returned or
    raised. A process that raises breaks the barrier, as a dead process ends the launch."""
    barrier = threading.Barrier(2, timeout=60)
    outcome: dict[int, Any] = {}
    trainings = [make_training(seed=i) for i in (0, 1)]  # imports stay out of the threads

    def process(index: int) -> None:
        model, optimizer, scheduler = trainings[index]
        acc = thread_process(index, barrier)
        try:
            outcome[index] = save_checkpoint(
                run_dirs[index], step, model, optimizer, scheduler, acc, {}, 5, SHARDED
            )
        except BaseException as exc:  # the outcome under test
            barrier.abort()
            outcome[index] = exc

    threads = [threading.Thread(target=process, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return outcome


def test_a_sharded_checkpoint_holds_every_process_part(tmp_path):
    outcome = two_processes((tmp_path, tmp_path), 1)
    path = tmp_path / CHECKPOINTS / "step-000001"
    assert outcome == {0: path, 1: None}
    ckpt = check_checkpoint(path)
    assert ckpt.state["sharded"] is True and ckpt.state["processes"] == 2
    names = {p.name for p in path.iterdir()}
    assert {"trainable-0.safetensors", "trainable-1.safetensors", "rng-1.safetensors"} <= names


def test_files_written_to_another_machine_disk_leave_no_checkpoint(tmp_path):
    """Process 1 sees another directory at the same path (its machine's own disk): before the
    completeness check, the main process named a checkpoint without process 1's shards, and
    every later resume found it unusable."""
    run, elsewhere = tmp_path / "run", tmp_path / "other-machine"
    two_processes((run, run), 1)
    (elsewhere / CHECKPOINTS / ".tmp-step-000002").mkdir(parents=True)
    outcome = two_processes((run, elsewhere), 2)
    assert isinstance(outcome[0], CatError), outcome
    message = str(outcome[0])
    assert "checkpoint step-000002 is incomplete" in message
    assert "trainable-1.safetensors is missing" in message
    assert "filesystem all of them mount" in message
    assert step_names(run) == [".tmp-step-000002", "step-000001"]  # no step-000002
    assert latest_checkpoint(run).step == 1
    tidy_checkpoints(run)
    assert step_names(run) == ["step-000001"]


def test_a_process_that_dies_mid_write_leaves_no_checkpoint(tmp_path, monkeypatch):
    two_processes((tmp_path, tmp_path), 1)
    write = checkpoint_module.save_file

    def dies_on_its_shards(tensors, filename, *args, **kwargs):
        if Path(filename).name == "trainable-1.safetensors":
            Path(filename).write_bytes(b"half a file")
            raise OSError("killed mid-write")
        return write(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "save_file", dies_on_its_shards)
    outcome = two_processes((tmp_path, tmp_path), 2)
    assert isinstance(outcome[1], OSError)
    assert isinstance(outcome[0], threading.BrokenBarrierError)  # the launcher ends it
    assert "step-000002" not in step_names(tmp_path)
    assert latest_checkpoint(tmp_path).step == 1


def test_the_completeness_check_reads_the_step_it_is_given(tmp_path):
    two_processes((tmp_path, tmp_path), 1)
    path = tmp_path / CHECKPOINTS / "step-000001"
    moved = path.rename(path.with_name(".tmp-step-000001"))
    assert check_checkpoint(moved, step=1).step == 1
    with pytest.raises(CatError, match="does not say step 2"):
        check_checkpoint(moved, step=2)
