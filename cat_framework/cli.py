"""The ``cat-framework`` command.

Every error a user can cause is a :class:`~cat_framework.errors.CatError` and is printed as one
message with no traceback (``--debug`` shows it). Exit codes: 0 ok, 1 error, 2 invalid input.
Anything else that escapes is blamed on whoever's code raised it: a third-party plugin (named
with its distribution, so the report goes to its authors), a built-in plugin or the core.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from cat_framework.cli_options import set_option
from cat_framework.engine.process_group import leave_process_group
from cat_framework.errors import CatError, cut_message
from cat_framework.logs import configure_logging
from cat_framework.scrub import scrub
from cat_framework.version import __version__

KIND_ALIASES = {
    "aggregators": "aggregator",
    "aggregator": "aggregator",
    "rewards": "reward_deriver",
    "reward": "reward_deriver",
    "reward_derivers": "reward_deriver",
    "reward_deriver": "reward_deriver",
    "backends": "backend",
    "backend": "backend",
    "datasets": "dataset",
    "dataset": "dataset",
}


def _plugins() -> Any:
    from cat_framework.plugins import default_plugins

    return default_plugins()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cat-framework")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Console log level.",
)
def cli(debug: bool, log_level: str) -> None:
    """Compute as Teacher: label-free post-training of LLMs, as YAML pipelines and plugins."""
    configure_logging("debug" if debug else log_level)


@cli.command("plugins")
@click.option("--table", is_flag=True, help="A table for people instead of JSON.")
@click.option("--hook", default=None, help="Only plugins implementing this hook.")
def plugins_cmd(table: bool, hook: str | None) -> None:
    """List built-in and third-party plugins with version, hooks, components and load status."""
    records = [r.to_dict() for r in _plugins().records]
    if hook:
        records = [r for r in records if hook in r["hooks"]]
    if not table:
        click.echo(json.dumps(records, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title="cat-framework plugins")
    for col in ("plugin", "distribution", "version", "status", "components", "hooks"):
        t.add_column(col, overflow="fold")
    for r in records:
        comps = "; ".join(f"{k}: {', '.join(v)}" for k, v in r["components"].items())
        status = r["status"] + ("".join(f"\n{e}" for e in r["errors"]))
        if r["output"].strip():  # what it printed while loading, kept off stdout's JSON
            status += f"\nprinted: {r['output'].strip()[:300]}"
        style = "red" if r["status"] == "failed" else "yellow" if r["status"] == "partial" else None
        t.add_row(
            r["name"] + (" (built-in)" if r["builtin"] else ""),
            r["distribution"] or "-",
            r["version"] or "-",
            status,
            comps or "-",
            ", ".join(r["hooks"]) or "-",
            style=style,
        )
    Console(width=160).print(t)


def _describe_component(entry: Any, registry: Any) -> dict[str, Any]:
    info: dict[str, Any] = {
        "name": entry.name,
        "plugin": entry.source.plugin,
        "distribution": entry.source.distribution,
        "origin": entry.origin,
    }
    try:
        cls = registry.get(entry.name)
    except CatError as exc:
        info["error"] = str(exc)
        return info
    info["description"] = cls.describe()
    info["params"] = cls.Params.model_json_schema()
    return info


@cli.command("components")
@click.argument("kind", required=False, type=click.Choice(sorted(KIND_ALIASES)))
@click.option("--json", "as_json", is_flag=True, help="JSON (with full params schemas).")
def components_cmd(kind: str | None, as_json: bool) -> None:
    """List components (optionally of one KIND) with their plugin and params."""
    plugins = _plugins()
    kinds = [KIND_ALIASES[kind]] if kind else list(plugins.registries)
    out = {
        k: [_describe_component(e, plugins.registry(k)) for e in plugins.registry(k)] for k in kinds
    }
    if as_json:
        click.echo(json.dumps(out, indent=2, default=str))
        return
    for k, items in out.items():
        click.secho(f"{k}s", bold=True)
        for item in items:
            click.echo(f"  {item['name']}  [{item['plugin']}]  {item.get('description', '')}")
            if "error" in item:
                click.secho(f"      error: {item['error']}", fg="red")
                continue
            props = item["params"].get("properties", {})
            required = set(item["params"].get("required", []))
            for pname, schema in props.items():
                default = "required" if pname in required else f"default {schema.get('default')!r}"
                typ = (
                    schema.get("type")
                    or "/".join(s.get("type", "?") for s in schema.get("anyOf", []))
                    or "?"
                )
                click.echo(f"      {pname} ({typ}, {default}): {schema.get('description', '')}")


@cli.command("validate")
@click.argument("pipelines", nargs=-1, required=True, type=click.Path(dir_okay=False))
@set_option
@click.option(
    "--data",
    "check_data",
    is_flag=True,
    help="Also load the datasets (a hub one may download) and report duplicate questions and "
    "train/eval overlap, as a run's start does; under data.disjoint: true overlap is an error.",
)
def validate_cmd(pipelines: tuple[str, ...], overrides: tuple[str, ...], check_data: bool) -> None:
    """Check PIPELINES (files or shipped names) without loading any model; exit 2 with every
    problem if one is invalid."""
    from cat_framework.pipeline import PipelineValidationError, load_pipeline
    from cat_framework.pipeline.shipped import resolve_pipeline

    failed = 0
    for path in pipelines:
        plugins = _plugins()
        try:
            pipeline = load_pipeline(resolve_pipeline(path), overrides, plugins=plugins)
            if pipeline.config.mode in ("train", "sft"):  # what the placement table refuses
                from cat_framework.engine.placement.table import check_placement

                check_placement(pipeline, plugins)
            found = _data_findings(pipeline) if check_data else ""
        except PipelineValidationError as exc:
            failed += 1
            click.echo(str(exc), err=True)
        except CatError as exc:
            failed += 1
            click.echo(f"{path}: {exc}", err=True)
        else:
            click.echo(f"{path}: valid{found}")
    if failed:
        sys.exit(2)


def _data_findings(pipeline: Any) -> str:
    """``validate --data``: the run's start data check, as one line's tail."""
    from cat_framework.engine.data_check import check_run_data

    report = check_run_data(pipeline, None)
    parts = [f"data.{n}: {d.prompts} prompts, {d.duplicates} duplicates"
             for n, d in report.splits.items()]  # fmt: skip
    if report.overlap is not None:
        parts.append(f"{report.overlap.in_train} eval questions in train")
    return f" ({'; '.join(parts)})" if parts else ""


@cli.command("run")
@click.argument("pipeline", type=click.Path(dir_okay=False))
@set_option
@click.option(
    "--resume",
    "resume",
    default=None,
    type=click.Path(file_okay=False),
    help="Continue the run in this directory from its latest checkpoint.",
)
@click.option(
    "--run-dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Write the run here instead of output.dir/<name>-<time>.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace the run already in the run directory (its run files only; never other files).",
)
def run_cmd(
    pipeline: str,
    overrides: tuple[str, ...],
    resume: str | None,
    run_dir: str | None,
    overwrite: bool,
) -> None:
    """Validate PIPELINE (a file, or a shipped name such as quickstart), then run it according to
    its mode."""
    from cat_framework.pipeline import load_pipeline
    from cat_framework.pipeline.shipped import resolve_pipeline
    from cat_framework.runner import is_main_process, run_pipeline

    if resume and (run_dir or overwrite):
        raise click.UsageError("--resume continues a run in place: drop --run-dir/--overwrite")
    loaded = load_pipeline(resolve_pipeline(pipeline), overrides, plugins=_plugins())
    result = run_pipeline(
        loaded, plugins=_plugins(), run_dir=run_dir, resume=resume, overwrite=overwrite
    )
    if not is_main_process():
        return
    click.echo(f"run finished: {result['run_dir']}")
    for key in ("report", "metrics", "final_model"):
        if result.get(key):
            click.echo(f"  {key}: {result[key]}")


@cli.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option(
    "-o",
    "--output",
    default=None,
    help="Where to write (default RUN_DIR/report.html; a directory gets report.html inside).",
)
@click.option(
    "--max-prompts", default=24, show_default=True, help="Prompts in the browsable sample."
)
def report_cmd(run_dir: str, output: str | None, max_prompts: int) -> None:
    """Write the self-contained HTML report of RUN_DIR (any mode, finished or not)."""
    from cat_framework.cli_run_dir import require_run_dir
    from cat_framework.report import write_report

    require_run_dir(run_dir)
    click.echo(str(write_report(run_dir, output, max_prompts=max_prompts)))


from cat_framework.cli_pipelines import pipelines_cmd  # noqa: E402  (its module imports lightly)

cli.add_command(pipelines_cmd)


def _blame(exc: BaseException) -> Any:
    """The plugin whose code raised ``exc``, or None (core code, or the lookup failed)."""
    try:
        from cat_framework.plugin_guard import find_culprit
        from cat_framework.plugins import default_plugins

        loaded = default_plugins() if default_plugins.cache_info().currsize else None
        return find_culprit(exc, loaded)
    except Exception:  # the last-resort handler must never fail itself
        return None


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning user-facing errors into one message and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("CAT_DEBUG") == "1"
    try:
        _run(args, debug)
    finally:
        leave_process_group()  # a gloo group left to the exit-time destructor may abort


def _run(args: list[str], debug: bool) -> None:
    """The command, each way out turned into a message and an exit code."""
    try:
        cli.main(args=args, prog_name="cat-framework", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except SystemExit as exc:  # the commands' own exits pass; a plugin's sys.exit() is blamed
        culprit = None if debug else _blame(exc)
        if culprit is None:
            raise
        click.echo(culprit.message(exc), err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except CatError as exc:
        if debug:
            raise
        click.echo(f"error: {cut_message(scrub(str(exc)))}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:
        if debug:
            raise
        culprit = _blame(exc)
        if culprit is not None:
            click.echo(culprit.message(exc), err=True)
            sys.exit(1)
        click.echo(
            f"error: {type(exc).__name__}: {cut_message(scrub(str(exc)))}\n"
            "(an unexpected error in cat-framework; rerun with --debug for the traceback and "
            "please report it to cat-framework)",
            err=True,
        )
        sys.exit(1)


from cat_framework.cli_data import data_cmd  # noqa: E402  (click and yaml only at import)

cli.add_command(data_cmd)

from cat_framework.cli_compare import compare_cmd  # noqa: E402  (click only at import)

cli.add_command(compare_cmd)

from cat_framework.cli_serve import serve_command_cmd  # noqa: E402  (click only at import)

cli.add_command(serve_command_cmd)
