"""The modes a pipeline runs in: each ``mode:`` value and the engine function that runs it.

A table of callables rather than of ``"module:function"`` strings, so that a renamed engine
function fails where it is named (type checks, the import-graph test), not at the end of a long
setup. Each entry imports its engine module only when called: every command, ``--help`` too,
imports the command line, which must stay free of torch and the model libraries.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from cat_framework.pipeline import Pipeline
    from cat_framework.pipeline.schema import Mode
    from cat_framework.plugins import Plugins


class ModeRunner(Protocol):
    """Runs one mode in a prepared run directory; returns the run's summary (``metrics``,
    ``final_model``...), which :func:`cat_framework.runner.run_pipeline` passes on."""

    def __call__(
        self, pipeline: Pipeline, run_dir: Path, plugins: Plugins, resume: str | None
    ) -> dict[str, Any]: ...


def evaluate(
    pipeline: Pipeline, run_dir: Path, plugins: Plugins, resume: str | None
) -> dict[str, Any]:
    """``mode: evaluate``: test-time CaT, each reference estimator scored."""
    from cat_framework.engine.evaluate import run_evaluate

    return run_evaluate(pipeline=pipeline, run_dir=run_dir, plugins=plugins, resume=resume)


def train(
    pipeline: Pipeline, run_dir: Path, plugins: Plugins, resume: str | None
) -> dict[str, Any]:
    """``mode: train``: CaT-RL, GRPO on rewards from synthesized references."""
    from cat_framework.engine.trainer import run_train

    return run_train(pipeline=pipeline, run_dir=run_dir, plugins=plugins, resume=resume)


def sft(pipeline: Pipeline, run_dir: Path, plugins: Plugins, resume: str | None) -> dict[str, Any]:
    """``mode: sft``: CaT-SFT, fine-tuning on the synthesized references."""
    from cat_framework.engine.sft import run_sft

    return run_sft(pipeline=pipeline, run_dir=run_dir, plugins=plugins, resume=resume)


#: every value of ``mode:`` (:data:`cat_framework.pipeline.schema.Mode`) -> how to run it
MODE_RUNNERS: dict[Mode, ModeRunner] = {"evaluate": evaluate, "train": train, "sft": sft}
