"""``cat-framework compare RUN_DIR...``: the runs of an ablation on one self-contained page."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("compare")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option(
    "-o",
    "--output",
    default="compare.html",
    show_default=True,
    help="Where to write the page (a directory gets compare.html inside).",
)
def compare_cmd(run_dirs: tuple[str, ...], output: str) -> None:
    """Overlay the metric curves of RUN_DIRS and put their final evaluations side by side.

    Runs of any mode, finished or not: a failed run is flagged on the page with its error.
    """
    from cat_framework.cli_run_dir import require_run_dir
    from cat_framework.report.compare_page import write_compare

    for run_dir in run_dirs:
        require_run_dir(run_dir)
    if len({Path(d).resolve() for d in run_dirs}) < len(run_dirs):
        raise click.UsageError("the same run directory is given twice; pass each run once")
    click.echo(str(write_compare(run_dirs, output)))
