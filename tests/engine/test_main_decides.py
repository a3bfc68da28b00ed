"""A refusal on the main process stops every process with its message (no process is left
waiting at a barrier for one that stopped)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cat_framework.engine.main_decides import main_decides
from cat_framework.errors import CatError
from tests.helpers.openai_server import free_port

REPO = Path(__file__).resolve().parents[2]


def test_one_process_returns_or_raises_the_work():
    assert main_decides(lambda: 3, main=True, default=0) == 3
    assert main_decides(lambda: 3, main=False, default=0) == 0

    def refuse() -> int:
        raise CatError("run directory: no")

    with pytest.raises(CatError, match="run directory: no"):
        main_decides(refuse, main=True, default=0)


WORKER = textwrap.dedent("""\
    import json, os, sys
    from accelerate import PartialState
    from cat_framework.engine.main_decides import main_decides
    from cat_framework.engine.process_group import leave_process_group
    from cat_framework.errors import CatError

    state = PartialState(cpu=True)

    def refuse():
        raise CatError("refused on the main process")

    try:
        main_decides(refuse, main=state.is_main_process, default=None)
        outcome = "went on"
    except CatError as exc:
        outcome = str(exc)
    with open(os.path.join(sys.argv[1], f"{state.process_index}.json"), "w") as f:
        json.dump(outcome, f)
    leave_process_group()  # as the CLI does on its way out
    """)


@pytest.mark.timeout(300)
def test_every_process_raises_the_main_process_refusal(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", str(free_port()), str(script), str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outcomes = [json.loads((tmp_path / f"{i}.json").read_text()) for i in (0, 1)]
    assert outcomes == ["refused on the main process"] * 2


def test_the_command_line_leaves_the_process_group_on_every_way_out(tmp_path):
    """A gloo group left to the interpreter's exit-time destructor aborts now and then (SIGABRT
    after a finished run, and torchrun reports the launch failed): the CLI destroys it."""
    import torch.distributed as dist

    from cat_framework.cli import main

    store = dist.FileStore(str(tmp_path / "store"), 1)
    for argv, code in ((["--version"], 0), (["validate", str(tmp_path / "none.yaml")], 2)):
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)
        with pytest.raises(SystemExit) if code else contextlib.nullcontext():
            main(argv)
        assert not dist.is_initialized(), argv
