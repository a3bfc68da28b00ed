"""Checkpoints: bit-exact state round trip without pickles, planted pickles refused, fallback from
a damaged newest checkpoint, pruning and saving that a kill cannot leave half done."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from structlog.testing import capture_logs

from cat_framework.engine.checkpoint import (
    CHECKPOINTS,
    Checkpoint,
    InvalidCheckpoint,
    check_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    tidy_checkpoints,
)
from cat_framework.engine.checkpoint_check import rng_file, shard_files
from cat_framework.engine.safe_state import save_state
from cat_framework.errors import CatError


def make_training(seed: int = 0, width: int = 8):
    from transformers import get_scheduler

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.Linear(width, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=1, num_training_steps=20)
    return model, optimizer, scheduler


def train(model, optimizer, scheduler, steps: int) -> None:
    for _ in range(steps):
        x = torch.randn(4, model[0].in_features)
        loss = (model(x) ** 2).mean() + random.random() + float(np.random.rand())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()


def one_process() -> SimpleNamespace:
    return SimpleNamespace(
        is_main_process=True, process_index=0, num_processes=1, wait_for_everyone=lambda: None
    )


def save(run: Path, step: int, training, keep: int = 5, acc=None) -> Path | None:
    model, optimizer, scheduler = training
    return save_checkpoint(
        run, step, model, optimizer, scheduler, acc or one_process(), {"prompts_seen": step}, keep
    )


def draws(model) -> list:
    return [random.random(), float(np.random.rand()), torch.rand(3).tolist()] + [
        p.detach().clone() for p in model.parameters()
    ]


def test_resume_continues_bit_exactly_and_stores_no_pickle(tmp_path):
    straight = make_training()
    train(*straight, 3)
    save(tmp_path, 3, straight)
    train(*straight, 2)
    expected = draws(straight[0])

    resumed = make_training(seed=1)  # other weights, fresh optimizer and schedule
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt.step == 3 and ckpt.state["prompts_seen"] == 3
    load_checkpoint(ckpt, *resumed, process_index=0)
    train(*resumed, 2)
    got = draws(resumed[0])
    assert got[:3] == expected[:3]  # python, numpy and torch streams continue
    assert all(torch.equal(a, b) for a, b in zip(got[3:], expected[3:], strict=True))
    assert resumed[2].get_last_lr() == straight[2].get_last_lr()
    for file in ckpt.path.iterdir():  # no file in a checkpoint is a pickle
        if file.name != "state.json":
            safe_open(str(file), "pt").keys()


class Evil:
    """Unpickling this creates a marker file: proof that loading ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def resume(run: Path) -> None:
    """What ``--resume`` does with a run directory."""
    ckpt = latest_checkpoint(run)
    if ckpt is None:
        raise CatError("nothing to resume")
    load_checkpoint(ckpt, *make_training(), process_index=0)


@pytest.mark.parametrize(
    ("layout", "reason"),
    [
        ("in place", r"optimizer\.safetensors is damaged or not a safetensors file"),
        ("as .pt", r"holds optimizer\.pt instead of .* pickles are never loaded .* run arbitrary"),
    ],
)
def test_a_planted_pickle_is_never_loaded(tmp_path, layout, reason):
    training = make_training()
    train(*training, 1)
    step = save(tmp_path, 1, training)
    marker = tmp_path / "pwned"
    for file in step.iterdir():
        if file.name not in ("state.json", "trainable.safetensors"):
            if layout == "in place":  # the state files' own names, holding a pickle
                torch.save(Evil(marker), file)
            else:  # the optimizer.pt, scheduler.pt, rng-0.pt that torch.save would write
                file.unlink()
                torch.save(Evil(marker), file.with_suffix(".pt"))
    with pytest.raises(CatError, match=rf"no usable checkpoint .*step-000001: .*{reason}"):
        resume(tmp_path)
    assert not marker.exists()


def corrupt(step: Path, how: str) -> None:
    if how == "truncated weights":
        data = (step / "trainable.safetensors").read_bytes()
        (step / "trainable.safetensors").write_bytes(data[: len(data) // 2])
    elif how == "bad state.json":
        (step / "state.json").write_text('{"step": 2, "prompts_')
    elif how == "missing optimizer":
        (step / "optimizer.safetensors").unlink()
    elif how == "truncated optimizer":
        data = (step / "optimizer.safetensors").read_bytes()
        (step / "optimizer.safetensors").write_bytes(data[:-10])


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("truncated weights", "trainable.safetensors is damaged"),
        ("bad state.json", "state.json is not readable JSON"),
        ("missing optimizer", "optimizer.safetensors is missing"),
        ("truncated optimizer", "optimizer.safetensors is damaged"),
    ],
)
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_and_says_so(tmp_path, how, reason):
    training = make_training()
    save(tmp_path, 1, training)
    train(*training, 1)
    corrupt(save(tmp_path, 2, training), how)
    with capture_logs() as logs:
        ckpt = latest_checkpoint(tmp_path)
    assert ckpt.step == 1
    (skip,) = [e for e in logs if e["event"] == "skipping an unusable checkpoint"]
    assert skip["checkpoint"].endswith("step-000002") and reason in skip["reason"]
    assert skip["log_level"] == "warning"
    load_checkpoint(ckpt, *make_training(), process_index=0)  # the fallback loads


def test_no_valid_checkpoint_is_one_clear_error(tmp_path):
    training = make_training()
    for step in (1, 2):
        corrupt(save(tmp_path, step, training), "missing optimizer")
    with pytest.raises(CatError) as err:
        latest_checkpoint(tmp_path)
    message = str(err.value)
    assert "step-000002: optimizer.safetensors is missing" in message
    assert "step-000001: optimizer.safetensors is missing" in message
    assert "without --resume" in message
    assert latest_checkpoint(tmp_path / "elsewhere") is None  # no checkpoint at all: not an error


def thread_process(index: int, barrier: threading.Barrier) -> SimpleNamespace:
    """What the checkpoint code reads of an accelerator, for process ``index`` of two played
    by threads (``barrier`` stands for the launch's barrier)."""
    return SimpleNamespace(
        is_main_process=index == 0,
        process_index=index,
        num_processes=2,
        wait_for_everyone=barrier.wait,
        device="cpu",
        reduce=lambda t, reduction: t,  # the weights' finiteness: both replicas are finite
    )


def test_every_process_saves_its_random_streams_and_all_are_required(tmp_path):
    training = make_training()
    barrier = threading.Barrier(2)
    results: dict[int, Path | None] = {}

    def process(index: int) -> None:
        acc = thread_process(index, barrier)
        results[index] = save(tmp_path, 1, training, acc=acc)

    threads = [threading.Thread(target=process, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    path = tmp_path / CHECKPOINTS / "step-000001"
    assert results == {0: path, 1: None}
    assert json.loads((path / "state.json").read_text())["processes"] == 2
    check_checkpoint(path)
    (path / "rng-1.safetensors").unlink()
    with pytest.raises(CatError, match=r"rng-1\.safetensors is missing"):
        check_checkpoint(path)


def step_names(run: Path) -> list[str]:
    return sorted(p.name for p in (run / CHECKPOINTS).iterdir())


def test_pruning_keeps_the_newest_and_drops_an_abandoned_future(tmp_path):
    training = make_training()
    for step in (1, 2, 3, 4):
        save(tmp_path, step, training, keep=2)
    assert step_names(tmp_path) == ["step-000003", "step-000004"]
    save(tmp_path, 3, training, keep=2)  # a resume from step 2 redoing step 3
    assert step_names(tmp_path) == ["step-000003"]


CHILD = textwrap.dedent("""\
    import os, resource, signal, shutil, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    from test_checkpoint import make_training, save, train
    import cat_framework.engine.checkpoint as checkpoint

    run, where = Path(sys.argv[1]), sys.argv[2]
    training = make_training(width=64)
    for step in (1, 2, 3):
        save(run, step, training, keep=3)
    train(*training, 1)
    if where == "prune":
        def rmtree(path, ignore_errors=False):  # deletes one file, then the process is killed
            if Path(path).is_dir():
                next(Path(path).iterdir()).unlink()
                os.kill(os.getpid(), signal.SIGKILL)
        checkpoint.shutil.rmtree = rmtree
    else:  # writing: the kernel kills the process once a file would pass 28 kB (the optimizer state)
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (28_000, 28_000))
    save(run, 4, training, keep=2)
    print("finished")
    """)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and resource limits")
@pytest.mark.parametrize(
    ("where", "survivors", "leftover", "signum"),
    [
        (
            "prune",
            ["step-000003", "step-000004"],
            [".trash-step-000001", ".trash-step-000002"],
            signal.SIGKILL,
        ),
        (
            "write",
            ["step-000001", "step-000002", "step-000003"],
            [".tmp-step-000004"],
            signal.SIGXFSZ,
        ),
    ],
)
def test_a_kill_while_saving_or_pruning_leaves_only_whole_checkpoints(
    tmp_path, where, survivors, leftover, signum
):
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(run), where, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert proc.returncode == -signum, proc.stderr[-2000:]
    assert "finished" not in proc.stdout
    steps = [p for p in (run / CHECKPOINTS).iterdir() if p.name.startswith("step-")]
    assert sorted(p.name for p in steps) == survivors  # never more than keep, never half
    for path in steps:
        check_checkpoint(path)
    assert latest_checkpoint(run).step == int(survivors[-1][-1])
    leftovers = [n for n in step_names(run) if n.startswith(".")]
    assert leftovers == leftover
    tidy_checkpoints(run)  # what a resume does first
    assert step_names(run) == survivors


def test_pruning_converges_when_a_killed_prune_left_extra_checkpoints(tmp_path):
    """A kill during the last step's prune leaves more than ``keep``; resuming that finished run
    (nothing left to train, so no save that would prune) still ends with ``keep``."""
    from cat_framework.engine.training_run import resume_point

    training = make_training()
    for step in (1, 2, 3, 4):
        save(tmp_path, step, training, keep=4)  # what the kill left (keep is 2)
    (tmp_path / CHECKPOINTS / "step-000001").rename(tmp_path / CHECKPOINTS / ".trash-step-000001")
    ckpt = resume_point(tmp_path, str(tmp_path), one_process(), files=(), keep=2)
    assert ckpt.step == 4
    assert step_names(tmp_path) == ["step-000003", "step-000004"]


def sharded_checkpoint(root, processes: int = 2, skip: str | None = None):
    path = root / "checkpoints" / "step-000002"
    path.mkdir(parents=True)
    (path / "state.json").write_text(
        json.dumps({"step": 2, "processes": processes, "sharded": True})
    )
    for rank in range(processes):
        weights, optim = shard_files(rank)
        save_file({"w": torch.zeros(2)}, str(path / weights))
        save_state(path / optim, {"state": {}, "param_groups": []})
        save_state(path / rng_file(rank), {"torch": torch.get_rng_state()})
    save_state(path / "scheduler.safetensors", {"last_epoch": 2})
    if skip:
        (path / skip).unlink()
    return path


def test_a_sharded_checkpoint_needs_every_process_shards(tmp_path):
    assert check_checkpoint(sharded_checkpoint(tmp_path / "whole")).state["sharded"] is True
    for missing in ("trainable-1.safetensors", "optimizer-0.safetensors"):
        with pytest.raises(InvalidCheckpoint, match=f"{missing} is missing"):
            check_checkpoint(sharded_checkpoint(tmp_path / missing, skip=missing))


def test_a_sharded_checkpoint_is_not_loaded_into_a_whole_model(tmp_path):
    path = sharded_checkpoint(tmp_path)
    model = torch.nn.Linear(2, 2)
    ckpt = Checkpoint(path, 2, json.loads((path / "state.json").read_text()))
    with pytest.raises(
        CatError, match=r"written with sharded weights but this run trains with whole weights"
    ):
        load_checkpoint(ckpt, model, None, None, 0)
