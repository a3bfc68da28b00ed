"""The run's data, checked at its start before any model loads: duplicate questions within each
split the run uses and overlap between ``data.train`` and ``data.eval`` (:mod:`.data_overlap`),
logged, written to the run's ``data.json``, and refused under ``data.disjoint: true``."""

from __future__ import annotations

from pathlib import Path

import structlog

from cat_framework.engine.data_overlap import DataReport, data_report, overlap_error
from cat_framework.engine.files import atomic_write_json
from cat_framework.pipeline import Pipeline
from cat_framework.types import Prompt

log = structlog.get_logger("cat_framework.data")

#: what a run writes the report to (one of ``rundir.RUN_FILES``)
DATA_FILE = "data.json"


def run_splits(pipeline: Pipeline) -> tuple[list[Prompt] | None, list[Prompt] | None]:
    """The prompts of each split the pipeline names, as the engine loads them: all of
    ``data.train``, the first ``eval.limit`` of ``data.eval``. In ``mode: evaluate`` a named
    ``data.train`` is loaded for this check alone (the overlap of what was trained on)."""
    from cat_framework.engine.split_prompts import split_prompts  # what the run's mode reads

    data = pipeline.config.data
    train = split_prompts(pipeline, "train")[1] if data.train is not None else None
    eval_ = split_prompts(pipeline, "eval")[1] if data.eval is not None else None
    return train, eval_


def check_run_data(pipeline: Pipeline, run_dir: Path | None, *, main: bool = True) -> DataReport:
    """Load the run's splits, report duplicates and overlap (a warning when there are any; on
    the ``main`` process, which also writes ``run_dir/data.json``), then refuse overlap if
    ``data.disjoint`` asks so. Every process decides alike: they load the same data."""
    report = data_report(*run_splits(pipeline))
    if main:
        _log(report)
        if run_dir is not None:
            atomic_write_json(run_dir / DATA_FILE, report.to_dict())
    if pipeline.config.data.disjoint and report.overlap and report.overlap.in_train:
        raise overlap_error(report.overlap)
    return report


def _log(report: DataReport) -> None:
    for name, dup in report.splits.items():
        if dup.duplicates:
            log.warning(
                "duplicate questions",
                split=f"data.{name}",
                duplicates=dup.duplicates,
                repeated=dup.repeated,
                prompts=dup.prompts,
                examples=[list(ids) for ids in dup.examples],
            )
    overlap = report.overlap
    if overlap is not None and overlap.in_train:
        log.warning(
            "eval questions occur in train",
            in_train=overlap.in_train,
            eval_prompts=overlap.eval_prompts,
            share=overlap.share,
            examples=[list(pair) for pair in overlap.examples],
            hint="data.disjoint: true refuses this",
        )
    sizes = {f"data.{n}": d.prompts for n, d in report.splits.items()}
    log.info("data checked", **sizes, overlap=overlap.in_train if overlap else None)
