"""The run report: one self-contained ``report.html`` per run directory.

``write_report(run_dir)`` reads whatever the run left (``config.yaml``, ``log.jsonl``,
``metrics.json`` of ``mode: evaluate``, ``metrics.jsonl`` and ``records.jsonl`` of training runs,
``checkpoints/``) and writes a single HTML file with the config, plots of the metrics, the
evaluation matrix (estimator x score, confidence interval, reference diagnostics) and a browsable sample of prompts (rollouts, the
synthesized reference, the rubric and every verdict, disagreements highlighted). The page fetches
nothing: CSS is inline, plots are PNG data URIs, and there is no JavaScript.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from cat_framework.errors import OutputError
from cat_framework.report.figure import Plot
from cat_framework.report.html import render_page
from cat_framework.report.load import LogSummary, RunData, load_run
from cat_framework.report.plots import evaluate_plots, training_plots
from cat_framework.report.views import PromptView, prompt_view

REPORT_NAME = "report.html"


def build_plots(run: RunData) -> list[Plot]:
    """Training curves from ``metrics.jsonl`` and evaluation figures from ``metrics.json``."""
    plots = training_plots(run.metrics) if run.metrics else []
    if run.eval_summary is not None or run.all_records:
        plots += evaluate_plots(run.eval_summary, run.all_records)
    return plots


def render_report(
    run_dir: str | os.PathLike[str],
    *,
    max_prompts: int = 24,
    status: str | None = None,
    error: str | None = None,
) -> str:
    """The report of ``run_dir`` as an HTML string (see :func:`write_report`)."""
    run = load_run(run_dir, max_prompts=max_prompts)
    if status is not None:
        run.log = run.log or LogSummary()
        run.log.status = status
    if error:
        run.error = error
    try:
        plots = build_plots(run)
    except Exception as exc:  # plots are optional: the rest of the report still helps
        run.problems.append(f"plots: {exc.__class__.__name__}: {exc}")
        plots = []
    views: list[PromptView] = []
    for rec in run.records:
        try:
            views.append(prompt_view(rec))
        except Exception as exc:  # a hand-edited value of the wrong type: skip that prompt
            run.problems.append(
                f"records.jsonl: the record of prompt {rec.prompt_id!r} at step {rec.step} is "
                f"not shown ({exc.__class__.__name__}: {exc})"
            )
    return render_page(run, plots, views)


def write_report(
    run_dir: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    max_prompts: int = 24,
    status: str | None = None,
    error: str | None = None,
) -> Path:
    """Write ``report.html`` for a run directory and return its path.

    :param run_dir: the run directory (evaluate, train or sft; complete or not).
    :param output: where to write; default ``<run_dir>/report.html``.
    :param max_prompts: how many records the browsable sample shows (spread over steps).
    :param status: the run's outcome (``completed``, ``failed``, ``interrupted``) when the caller
        knows it before ``log.jsonl`` has its ``run end`` event; default: ``status.json``, else
        the log.
    :param error: why the run failed, shown at the top of the page; default: ``status.json``'s
        ``error``, else the ``error`` of the log's ``run end`` event.
    :raises FileNotFoundError: when ``run_dir`` is not a directory. Missing or malformed files
        inside it never raise: the report says what is missing.
    :raises OutputError: when the report cannot be written where asked (``output`` an existing
        directory gets ``report.html`` inside it).
    """
    page = render_report(run_dir, max_prompts=max_prompts, status=status, error=error)
    target = Path(output) if output is not None else Path(run_dir) / REPORT_NAME
    if target.is_dir():
        target = target / REPORT_NAME
    try:
        _write_atomically(target, page)
    except OSError as exc:
        raise OutputError(
            f"cannot write the report to {target}: {_why_unwritable(target, exc)}; "
            "choose a writable path with -o/--output"
        ) from exc
    return target


def _why_unwritable(target: Path, exc: OSError) -> str:
    """The cause in the user's terms: a file in the way, a read-only folder, else the OS's."""
    ancestor = target.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{ancestor} is a file, not a folder"
    if not os.access(ancestor, os.W_OK):
        return f"folder {ancestor} is not writable"
    return exc.strerror or str(exc)


#: what may stand where a page is asked to be written, other than a regular file
_NOT_REGULAR = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a device"),
    (stat.S_ISBLK, "a device"),
    (stat.S_ISSOCK, "a socket"),
)


def check_output_target(target: Path) -> None:
    """A page replaces whatever is at its path (a rename), so only a new path or a regular file
    may be there: run as root, ``-o /dev/full`` would otherwise turn the device into a file."""
    try:
        mode = os.lstat(target).st_mode
    except OSError:  # nothing there (or unreadable: the write says why)
        return
    for test, kind in _NOT_REGULAR:
        if test(mode):
            raise OutputError(
                f"{target} is {kind}, not a regular file: a page is written only to a new path "
                "or over a regular file (it replaces what is there); choose another path with "
                "-o/--output"
            )


def _write_atomically(target: Path, text: str) -> None:
    """Write via a temp file + rename, so a reader never sees half a report."""
    check_output_target(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a report is for reading
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


__all__ = ["REPORT_NAME", "render_report", "write_report"]
