"""``run_pipeline``: one run directory per run, then the pipeline's mode (:mod:`.modes`) in it.

The application layer over the engine, which runs a mode in the directory it is given and never
imports this module. The run directory holds the resolved config (``config.yaml``, secrets
masked), structured logs (``log.jsonl``), ``status.json`` (how the run ended, and why if it
failed) and whatever the mode writes (records, metrics, checkpoints, report); see
``docs/run_directories.md``. Observer plugins hear ``on_run_start`` / ``on_run_end`` whatever the
outcome.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from pathlib import Path
from typing import Any

import structlog
import yaml

from cat_framework.engine.data_check import check_run_data
from cat_framework.engine.files import atomic_write_json, atomic_write_text
from cat_framework.engine.main_decides import main_decides
from cat_framework.engine.process_group import join_process_group
from cat_framework.engine.threads import apply_thread_discipline, restore_threads
from cat_framework.errors import CatError, cut_message
from cat_framework.logs import attach_run_log, detach_run_log
from cat_framework.modes import MODE_RUNNERS
from cat_framework.pipeline import Pipeline
from cat_framework.pipeline.schema import default_of
from cat_framework.plugins import Plugins
from cat_framework.rundir import (
    MARKER,
    MAX_NAME_BYTES,
    check_fresh,
    check_resume,
    check_run_links,
    new_marker,
    redact,
    secret_values,
)
from cat_framework.scrub import register_secret, scrub
from cat_framework.version import __version__

log = structlog.get_logger("cat_framework.run")


def new_run_dir(pipeline: Pipeline, run_dir: str | None) -> Path:
    """The directory of a fresh run: ``--run-dir`` as given, else ``output.dir/run_name`` (or
    ``name-time``), which must stay inside ``output.dir`` (``validate`` refuses separators and
    ``..`` in ``run_name``; this is the second line of defence)."""
    if run_dir:
        return Path(run_dir)
    out = pipeline.config.output
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", pipeline.config.name).strip("-.") or "run"
    slug = slug[: MAX_NAME_BYTES - len(stamp) - 1]  # a long name still makes a folder name
    name = out.run_name or f"{slug}-{stamp}"
    parent = Path(out.dir).resolve()
    path = (parent / name).resolve()
    if path.parent != parent:
        raise CatError(
            f"output.run_name {name!r} must be a plain directory name inside output.dir "
            f"({out.dir}): no path separators or '..'"
        )
    return Path(out.dir) / name


def run_pipeline(
    pipeline: Pipeline,
    plugins: Plugins,
    run_dir: str | None = None,
    resume: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run a validated pipeline; returns the mode's summary (also passed to ``on_run_end``).

    A fresh run starts in a new or empty directory (a previous run's only with ``overwrite``);
    ``resume`` continues a run whose ``config.yaml`` matches this pipeline in every key that
    changes results. Whatever happens, ``status.json`` and the ``run end`` log line say how the
    run ended and why."""
    runner = MODE_RUNNERS[pipeline.config.mode]  # validation accepts only modes of the table
    resolved = pipeline.resolved()
    for secret in secret_values(resolved):  # masked in every message too, not only the config
        register_secret(secret)
    config = redact(resolved)
    path = Path(resume) if resume else new_run_dir(pipeline, run_dir)

    def prepare() -> dict[str, Any]:
        changes = {}
        if resume:
            changes = check_resume(path, config, default_of)
            check_run_links(path)
        else:
            check_fresh(path, overwrite)
        path.mkdir(parents=True, exist_ok=True)
        if not resume:  # first: a folder is a run's (to replace with --overwrite) only if marked
            atomic_write_json(path / MARKER, new_marker(__version__))
        if not resume or changes:
            atomic_write_text(path / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        return changes

    # only the main process judges and prepares the directory; its refusal stops every process
    changes = main_decides(prepare, main=is_main_process(), default={})
    wait_for_everyone()  # the others touch it (their log lines) only once it is ready
    attach_run_log(path / "log.jsonl")
    loaded = [f"{r.name}=={r.version}" for r in plugins.records if r.status == "loaded"]
    log.info("run start", run_dir=str(path), mode=pipeline.config.mode, plugins=loaded)
    if changes:
        log.info(
            "resume with changed settings",
            changes={k: [old, new] for k, (old, new) in changes.items()},
        )
    plugins.notify("on_run_start", run_dir=str(path.resolve()), config=config)
    status, summary, error = "failed", {"run_dir": str(path)}, None
    threads_before: int | None = None
    try:
        _, threads_before = apply_thread_discipline(pipeline)  # every mode, every process
        check_run_data(pipeline, path, main=is_main_process())  # data.json; data.disjoint
        summary = {
            **summary,
            **runner(pipeline=pipeline, run_dir=path, plugins=plugins, resume=resume),
        }
        status = "completed"
        return summary
    except KeyboardInterrupt:
        status, error = "interrupted", "interrupted (KeyboardInterrupt)"
        raise
    except BaseException as exc:
        error = failure_message(exc)
        raise
    finally:
        if threads_before is not None:
            restore_threads(threads_before)
        if is_main_process():
            _write_status(path, status, error)
            report = _write_report(path, status)
            if report is not None:
                summary["report"] = str(report)
        if error:
            log.info("run end", status=status, run_dir=str(path), error=error)
        else:
            log.info("run end", status=status, run_dir=str(path))
        plugins.notify("on_run_end", run_dir=str(path.resolve()), summary=summary, status=status)
        detach_run_log()


def failure_message(exc: BaseException) -> str:
    """What a failed run records: a framework error's own message, else the exception type and
    its message (the traceback goes to the log only with --debug)."""
    if isinstance(exc, CatError):
        return cut_message(scrub(str(exc)))
    text = cut_message(scrub(str(exc).strip()))  # a server's error may echo the key it was sent
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _write_status(run_dir: Path, status: str, error: str | None) -> None:
    row: dict[str, Any] = {"status": status, "finished": _dt.datetime.now().isoformat()}
    if error:
        row["error"] = error
    try:
        atomic_write_text(run_dir / "status.json", json.dumps(row, indent=2))
    except OSError as exc:  # a full disk must not hide the run's own error
        log.warning("status.json not written", error=repr(exc))


def wait_for_everyone() -> None:
    """A barrier across ``accelerate launch`` processes (nothing without a launcher). It
    initialises accelerate's process state early; the trainer's ``Accelerator`` reuses it."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        join_process_group().wait_for_everyone()


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
