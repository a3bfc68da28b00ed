"""The mode table: every ``mode:`` a pipeline may name runs its engine function, imported late."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, get_args

import pytest

from cat_framework.modes import MODE_RUNNERS
from cat_framework.pipeline.schema import Mode

ENGINE = {
    "evaluate": "cat_framework.engine.evaluate.run_evaluate",
    "train": "cat_framework.engine.trainer.run_train",
    "sft": "cat_framework.engine.sft.run_sft",
}


def test_every_mode_a_pipeline_may_name_has_a_runner() -> None:
    assert set(MODE_RUNNERS) == set(get_args(Mode)) == set(ENGINE)


@pytest.mark.parametrize("mode", sorted(ENGINE))
def test_a_mode_runs_its_engine_function(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    def fake(**kwargs: Any) -> dict[str, Any]:
        calls.append(kwargs)
        return {"ran": mode}

    monkeypatch.setattr(ENGINE[mode], fake)
    args = {"pipeline": object(), "run_dir": Path("run"), "plugins": object(), "resume": None}
    assert MODE_RUNNERS[mode](**args) == {"ran": mode}  # type: ignore[arg-type]
    assert calls == [args]


def test_the_table_imports_no_engine_module() -> None:
    """The command line imports it for every command, ``--help`` too."""
    code = (
        "import sys, cat_framework.cli, cat_framework.modes, cat_framework.runner\n"
        "assert 'torch' not in sys.modules, 'torch'\n"
        "for mode in ('evaluate', 'trainer', 'sft'):\n"
        "    assert f'cat_framework.engine.{mode}' not in sys.modules, mode\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
