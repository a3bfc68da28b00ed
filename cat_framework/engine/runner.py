"""``run_pipeline``: one run directory per run, then dispatch on the pipeline's ``mode``.

The run directory holds the resolved config (``config.yaml``), structured logs (``log.jsonl``)
and whatever the mode writes (records, metrics, checkpoints, report). Observer plugins hear
``on_run_start`` / ``on_run_end`` whatever the outcome.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import importlib.util
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
import yaml

from cat_framework import __version__
from cat_framework.errors import CatError, ModeNotAvailableError
from cat_framework.logs import attach_run_log, detach_run_log
from cat_framework.pipeline import Pipeline
from cat_framework.plugins import Plugins

log = structlog.get_logger("cat_framework.run")

#: mode -> "module:function(pipeline, run_dir, plugins, resume) -> dict summary"
MODE_RUNNERS: dict[str, str] = {
    "evaluate": "cat_framework.engine.evaluate:run_evaluate",
    "train": "cat_framework.engine.trainer:run_train",
    "sft": "cat_framework.engine.sft:run_sft",
}


def _mode_runner(mode: str) -> Callable[..., dict[str, Any]]:
    target = MODE_RUNNERS.get(mode)
    if target is None:
        raise ModeNotAvailableError(f"unknown mode {mode!r}; choose one of {sorted(MODE_RUNNERS)}")
    module_name, _, func = target.partition(":")
    if importlib.util.find_spec(module_name) is None:
        available = [
            m for m, t in MODE_RUNNERS.items() if importlib.util.find_spec(t.partition(":")[0])
        ]
        raise ModeNotAvailableError(
            f"mode {mode!r} is not available in cat-framework {__version__} yet "
            f"(available: {', '.join(available) or 'none'}). "
            "`cat-framework validate` still checks such pipelines."
        )
    return getattr(importlib.import_module(module_name), func)


def new_run_dir(pipeline: Pipeline, run_dir: str | None) -> Path:
    if run_dir:
        return Path(run_dir)
    out = pipeline.config.output
    if out.run_name:
        return Path(out.dir) / out.run_name
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", pipeline.config.name).strip("-") or "run"
    return Path(out.dir) / f"{slug}-{stamp}"


def run_pipeline(
    pipeline: Pipeline,
    plugins: Plugins,
    run_dir: str | None = None,
    resume: str | None = None,
) -> dict[str, Any]:
    """Run a validated pipeline; returns the mode's summary (also passed to ``on_run_end``)."""
    runner = _mode_runner(pipeline.config.mode)
    path = Path(resume) if resume else new_run_dir(pipeline, run_dir)
    if resume and not path.is_dir():
        raise CatError(f"--resume {resume}: no such run directory")
    path.mkdir(parents=True, exist_ok=True)
    config = pipeline.resolved()
    (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    attach_run_log(path / "log.jsonl")
    loaded = [f"{r.name}=={r.version}" for r in plugins.records if r.status == "loaded"]
    log.info("run start", run_dir=str(path), mode=pipeline.config.mode, plugins=loaded)
    plugins.notify("on_run_start", run_dir=str(path.resolve()), config=config)
    status, summary = "failed", {"run_dir": str(path)}
    try:
        summary = {
            **summary,
            **runner(pipeline=pipeline, run_dir=path, plugins=plugins, resume=resume),
        }
        status = "completed"
        return summary
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        if is_main_process():
            report = _write_report(path, status)
            if report is not None:
                summary["report"] = str(report)
        log.info("run end", status=status, run_dir=str(path))
        plugins.notify("on_run_end", run_dir=str(path.resolve()), summary=summary, status=status)
        detach_run_log()


def is_main_process() -> bool:
    """Rank 0 (or no launcher): under ``accelerate launch`` only one process writes the report."""
    return os.environ.get("RANK", "0") == "0"


def _write_report(run_dir: Path, status: str) -> Path | None:
    """The run's report.html, written whatever the outcome; a report problem never fails a run."""
    try:
        from cat_framework.report import write_report

        return write_report(run_dir, status=status)
    except Exception as exc:
        log.warning("report not written", error=repr(exc), hint="cat-framework report RUN_DIR")
        return None
