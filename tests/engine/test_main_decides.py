"""A refusal on the main process stops every process with its message (no process is left
waiting at a barrier for one that stopped)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cat_framework.engine.main_decides import main_decides
from cat_framework.errors import CatError

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
    """)


@pytest.mark.timeout(300)
def test_every_process_raises_the_main_process_refusal(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", "29531", str(script), str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outcomes = [json.loads((tmp_path / f"{i}.json").read_text()) for i in (0, 1)]
    assert outcomes == ["refused on the main process"] * 2
