"""A run directory given on the command line (``report``, ``compare``): refused with a hint
unless a run wrote it and its files can be trusted."""

from __future__ import annotations

from pathlib import Path

from cat_framework.errors import NotARunError


def require_run_dir(run_dir: str) -> None:
    """Refuse a directory no run wrote (its "report" would be a page of "missing" notes), and a
    run whose own files are damaged or of a newer release (its page would mislead)."""
    from cat_framework.report.integrity import check_run_files
    from cat_framework.rundir import RUN_OUTPUTS, is_run_dir

    path = Path(run_dir)
    if not path.is_dir():
        raise NotARunError(f"{run_dir}: no such run directory")
    if is_run_dir(path):
        check_run_files(path)
        return
    if not (path / "config.yaml").is_file():
        runs = sorted(p.name for p in path.iterdir() if is_run_dir(p))[:5]
        hint = f" It holds runs: {', '.join(runs)}; pass one of them." if runs else ""
        raise NotARunError(
            f"{run_dir} is not a run directory: it has no config.yaml (every run writes one)."
            f"{hint or ' Pass the directory `cat-framework run` printed.'}"
        )
    raise NotARunError(
        f"{run_dir} is not a run directory yet: it has a config.yaml but none of "
        f"{', '.join(RUN_OUTPUTS)} (the run never started); rerun it with `cat-framework run`."
    )
