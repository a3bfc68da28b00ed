"""A run directory for the teacher's side of a TRL run, so ``cat-framework report`` and
``compare`` read it like one of ours.

It holds what the teacher knows: ``config.yaml`` (the resolved pipeline, secrets masked), the
``run.json`` marker, ``records.jsonl`` (one :class:`~cat_framework.records.RunRecord` per prompt
per step: rollouts, reference, rewards and their details; no advantages, which TRL computes
after the reward), ``metrics.jsonl`` (the step's teacher diagnostics) and ``status.json``. TRL
owns the rest (its checkpoints and logs live in its ``output_dir``). Under ``accelerate
launch`` every process's records are gathered and the main process alone writes.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

import yaml

from cat_framework.engine.checkpoint import truncate_jsonl
from cat_framework.engine.diagnostics import teacher_metrics
from cat_framework.engine.files import (
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
)
from cat_framework.engine.main_decides import main_decides
from cat_framework.errors import CatError
from cat_framework.pipeline import Pipeline
from cat_framework.records import check_schema, parse_records
from cat_framework.rundir import (
    MARKER,
    check_name_lengths,
    check_run_links,
    holds_run,
    is_run_dir,
    new_marker,
    redact,
)
from cat_framework.version import __version__


def is_main_process() -> bool:
    """Rank 0, or no launcher."""
    return os.environ.get("RANK", "0") == "0"


class TeacherRunDir:
    """Writes the teacher's records and diagnostics of a TRL run under ``path``.

    A new run needs a new or empty folder. ``resume=True`` continues a folder this class wrote
    (after resuming TRL from a checkpoint): the lines of the steps TRL redoes are dropped at the
    first write, as ``cat-framework run --resume`` does."""

    def __init__(self, path: str | os.PathLike[str], pipeline: Pipeline, *, resume: bool) -> None:
        self.path = Path(path)
        self.resume = resume
        self._trimmed = not resume
        main_decides(lambda: self._prepare(pipeline), main=is_main_process(), default=None)

    def _prepare(self, pipeline: Pipeline) -> None:
        path = self.path
        check_name_lengths(path)
        if self.resume:
            if not is_run_dir(path):
                raise CatError(
                    f"run_dir {path}: resume=True continues a run directory, and this holds none "
                    "(no config.yaml with records): drop resume=True to start one"
                )
            check_run_links(path)
            return
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            what = "a run" if holds_run(path) else "files that are not a run's"
            raise CatError(
                f"run_dir {path} is not empty (it holds {what}): a new run needs a new or empty "
                "folder. Pass resume=True to continue that run after resuming TRL from a "
                "checkpoint, or choose another run_dir"
            )
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path / MARKER, new_marker(__version__))
        config = redact(pipeline.resolved())
        atomic_write_text(path / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    def append(
        self, step: int, rows: list[dict[str, Any]], task: str, extra: dict[str, float]
    ) -> None:
        """Every process's ``rows`` (record dicts) of ``step`` and their diagnostics."""
        rows = _gather(rows)

        def write() -> None:
            if not self._trimmed:
                self._drop_from(step)
            metrics = teacher_metrics(parse_records(rows, "teacher records"), task)
            append_jsonl(self.path / "records.jsonl", rows)
            append_jsonl(self.path / "metrics.jsonl", [{"step": step, **metrics, **extra}])

        main_decides(write, main=is_main_process(), default=None)
        self._trimmed = True

    def _drop_from(self, step: int) -> None:
        """Drop the lines of ``step`` and later: TRL redoes them after its checkpoint (a record
        of a newer schema is refused, never kept and appended to)."""
        truncate_jsonl(self.path / "records.jsonl", step - 1, check_schema)
        truncate_jsonl(self.path / "metrics.jsonl", step - 1)

    def finish(self, status: str, error: str | None = None) -> None:
        """``status.json``: how the run ended (main process only)."""
        if not is_main_process():
            return
        row: dict[str, Any] = {"status": status, "finished": _dt.datetime.now().isoformat()}
        if error:
            row["error"] = error
        atomic_write_text(self.path / "status.json", json.dumps(row, indent=2))


def _gather(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every process's rows, in process order (a collective under ``accelerate launch``)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return rows
    from accelerate.utils import gather_object

    return list(gather_object(rows))


__all__ = ["TeacherRunDir", "is_main_process"]
