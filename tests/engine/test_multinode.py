"""Multi-node training, run for real on one box: the FSDP2 trainer launched as 2 machines of 1
process each (``accelerate launch --num_machines 2 --machine_rank 0|1 --main_process_ip
127.0.0.1``, gloo on CPU) trains like one process, as the 2-process FSDP2 tests do
(tolerances: placement_runs.py). And a machine that never comes ends the launch within a
bounded time: a missing machine at the launcher's rendezvous (``--rdzv_conf timeout=N``), a
process that died before joining at the framework's join (``CAT_DIST_TIMEOUT``), the latter
with a message naming this process, the address and what to do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from cat_framework.engine.process_group import (
    DEFAULT_TIMEOUT_S,
    TIMEOUT_ENV,
    dist_timeout,
    join_failure,
)
from cat_framework.errors import CatError
from tests.engine.placement_runs import CONFIG, TRAINER, assert_same_final, assert_same_run
from tests.engine.test_trainer import read_jsonl, run, write_pipeline
from tests.helpers.openai_server import free_port

REPO = Path(__file__).resolve().parents[2]


def machine(
    rank: int, port: int, args: list[str], rendezvous_s: int = 120, **env: str
) -> subprocess.Popen[str]:
    """``accelerate launch`` as machine ``rank`` of 2 (1 process each) meeting at ``port``."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG),
           "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank),
           "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
           "--rdzv_conf", f"timeout={rendezvous_s}", *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CAT_TENSORBOARD": "0", **env}
    return subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(proc: subprocess.Popen[str], timeout: float) -> tuple[int, str]:
    """Its exit code and output (stopped, as its launcher stops its workers, past ``timeout``)."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the launcher forwards it to its workers
        out, _ = proc.communicate(timeout=60)
        return -999, out
    return proc.returncode, out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_machines_train_like_one_process(tmp_path, tiny_policy, toy_data):
    pipeline = write_pipeline(tmp_path, tiny_policy, toy_data, TRAINER)
    pipeline.write_text(pipeline.read_text().replace("models:\n", "models:\n  anchor: policy\n"))
    args = ["-m", "cat_framework", "run", str(pipeline), "--run-dir", str(tmp_path / "two")]
    port = free_port()
    machines = [machine(rank, port, args) for rank in (0, 1)]
    outcomes = [finish(m, 420) for m in machines]
    for rank, (code, out) in enumerate(outcomes):
        assert code == 0, f"machine {rank}: {out[-3000:]}"
    run(pipeline, tmp_path / "one")
    two, one = tmp_path / "two", tmp_path / "one"
    log = read_jsonl(two / "log.jsonl")
    assert len([e for e in log if e["event"] == "fsdp2 on cpu"]) == 2  # one process per machine
    assert_same_run(two, one, [1, 2, 3])
    assert_same_final(two, one, tiny_policy, lora=False)
    state = json.loads((two / "checkpoints" / "step-000003" / "state.json").read_text())
    assert state["sharded"] is True and state["processes"] == 2


@pytest.mark.timeout(240)
def test_a_missing_machine_ends_the_launch_at_the_rendezvous(tmp_path):
    """Only machine 0 starts: its launcher waits ``--rdzv_conf timeout`` for the other, then
    fails saying how many machines came (torch's default wait: 600 s)."""
    script = tmp_path / "never.py"
    script.write_text("raise SystemExit('a worker started: the rendezvous did not wait')\n")
    start = time.monotonic()
    code, out = finish(machine(0, free_port(), [str(script)], rendezvous_s=8), 180)
    assert code not in (0, -999), out[-3000:]
    assert "1/2 clients joined" in out, out[-3000:]
    assert "a worker started" not in out
    assert time.monotonic() - start < 150


@pytest.mark.timeout(300)
def test_a_process_that_never_joins_ends_the_run_with_a_clear_message(
    tmp_path, tiny_policy, toy_data
):
    """Both launchers meet, but machine 1's process ends before joining the group (as one that
    crashed while importing): machine 0's process stops after CAT_DIST_TIMEOUT, saying so."""
    pipeline = write_pipeline(tmp_path, tiny_policy, toy_data, TRAINER)
    dead = tmp_path / "dead.py"
    dead.write_text("print('machine 1: a process that ends before joining')\n")
    port = free_port()
    start = time.monotonic()
    args = ["-m", "cat_framework", "run", str(pipeline), "--run-dir", str(tmp_path / "run")]
    main = machine(0, port, args, **{TIMEOUT_ENV: "10"})
    other = machine(1, port, [str(dead)])
    code, out = finish(main, 200)
    finish(other, 60)
    assert code not in (0, -999), out[-3000:]
    assert time.monotonic() - start < 200
    for part in ("error: process 0 of 2 (machine rank 0", "waited 10 s", "127.0.0.1:",
                 "--machine_rank", f"{TIMEOUT_ENV} (seconds)"):  # fmt: skip
        assert part in out, (part, out[-3000:])


def test_the_wait_is_configurable_and_checked(monkeypatch):
    monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    assert dist_timeout() == timedelta(seconds=DEFAULT_TIMEOUT_S)
    monkeypatch.setenv(TIMEOUT_ENV, "90")
    assert dist_timeout() == timedelta(seconds=90)
    for bad in ("soon", "0", "-5", "inf", "nan"):
        monkeypatch.setenv(TIMEOUT_ENV, bad)
        with pytest.raises(CatError, match=f"{TIMEOUT_ENV}=.*positive number"):
            dist_timeout()


def test_a_failed_join_names_both_sides_and_what_to_do(monkeypatch):
    env = {"RANK": "1", "WORLD_SIZE": "16", "GROUP_RANK": "1", "MASTER_ADDR": "10.0.0.1",
           "MASTER_PORT": "29500"}  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    cause = RuntimeError("wait timeout after 60000ms, keys: /default_pg/0//cpu//0/1\nmore")
    message = join_failure(timedelta(seconds=60), cause)
    assert message.startswith("process 1 of 16 (machine rank 1, host ")
    assert "waited 60 s for the other processes to join at 10.0.0.1:29500" in message
    assert "(wait timeout after 60000ms, keys: /default_pg/0//cpu//0/1)" in message
    assert "--machine_rank" in message and f"{TIMEOUT_ENV} (seconds)" in message
