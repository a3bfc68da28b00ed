"""The compare page: one self-contained HTML file (the report's CSS, PNG data URIs, no scripts).

Runs are columns of the evaluation table and colours of the plots; a failed or interrupted run is
flagged at the top with its error and still shows what it recorded.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from cat_framework.errors import OutputError
from cat_framework.report import _why_unwritable, _write_atomically
from cat_framework.report.compare import (
    ComparedRun,
    EvalCell,
    compare_plots,
    evaluations,
    load_runs,
)
from cat_framework.report.evaluation import confidence_label
from cat_framework.report.figure import Plot
from cat_framework.report.html import CSS, missing, plots_section
from cat_framework.report.samples import esc, fmt, tag

COMPARE_NAME = "compare.html"


def _step(x: float | None) -> str:
    return "—" if x is None else str(int(x)) if float(x).is_integer() else fmt(x)


def _cell(cell: EvalCell | None) -> str:
    if cell is None or cell.score is None:
        return '<td class="num muted">—</td>'
    ci = (
        f' <span class="muted">[{fmt(cell.ci_low)}, {fmt(cell.ci_high)}]</span>'
        if cell.ci_low is not None and cell.ci_high is not None
        else ""
    )
    n = f" n={int(cell.n)}" if cell.n is not None else ""
    before = (
        f'<br><span class="muted">from {fmt(cell.first)} at step {_step(cell.first_step)}'
        f" ({cell.score - cell.first:+.3f})</span>"
        if cell.first is not None
        else ""
    )
    where = f'<br><span class="muted">step {_step(cell.step)}{n}</span>'
    return f'<td class="num"><b>{fmt(cell.score)}</b>{ci}{where}{before}</td>'


def evaluation_table(runs: Sequence[ComparedRun]) -> str:
    """Aggregators as rows, runs as columns: final score, CI, step, n, and where it started."""
    per_run = [evaluations(r) for r in runs]
    labels = list(dict.fromkeys(k for cells in per_run for k in cells if k != "rollouts"))
    if any("rollouts" in cells for cells in per_run):
        labels.append("rollouts")
    if not labels:
        return missing("None of these runs has an evaluation yet.")
    head = "".join(f'<th class="num">{esc(r.label)}</th>' for r in runs)
    body = "".join(
        f"<tr><td>{esc('rollout accuracy' if label == 'rollouts' else label)}</td>"
        + "".join(_cell(cells.get(label)) for cells in per_run)
        + "</tr>"
        for label in labels
    )
    confidence = sorted({confidence_label(r.data) for r in runs})
    return (
        f'<p class="muted">Last evaluation of each run, {esc(" / ".join(confidence))} confidence '
        "interval in brackets; a training run also shows its first evaluation (the untrained "
        "policy when <code>eval_before</code> is on) and the change.</p>"
        f'<div class="scroll"><table class="compare"><thead><tr><th>aggregator</th>{head}</tr>'
        f"</thead><tbody>{body}</tbody></table></div>"
    )


def runs_table(runs: Sequence[ComparedRun]) -> str:
    """Who is who: label, mode, status, policy, data, steps, folder."""
    rows = []
    for r in runs:
        cfg = r.data.config or {}
        policy = (cfg.get("models") or {}).get("policy")
        model = policy.get("model") if isinstance(policy, Mapping) else policy
        data = cfg.get("data") or {}
        ds = ", ".join(
            f"{k}: {v.get('dataset')}" for k, v in data.items() if isinstance(v, Mapping)
        )
        steps = [s for s in r.data.record_steps if s > 0]
        status = tag(r.status, "good" if r.status == "completed" else "bad")
        rows.append(
            f"<tr><td><b>{esc(r.label)}</b></td><td>{esc(r.data.mode)}</td><td>{status}</td>"
            f"<td><code>{esc(model or '—')}</code></td><td>{esc(ds or '—')}</td>"
            f'<td class="num">{esc(max(steps) if steps else "—")}</td>'
            f"<td><code>{esc(r.data.run_dir)}</code></td></tr>"
        )
    return (
        '<div class="scroll"><table><thead><tr><th>run</th><th>mode</th><th>status</th>'
        '<th>policy</th><th>data</th><th class="num">steps</th><th>folder</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def failures(runs: Sequence[ComparedRun]) -> str:
    """A banner per run that did not complete: its curves and table stop where it stopped."""
    out = []
    for r in runs:
        if r.status == "completed" and not r.data.error:
            continue
        why = (
            f'<pre class="text">{esc(r.data.error)}</pre>'
            if r.data.error
            else '<p class="missing">No error message was recorded (see its report).</p>'
        )
        what = "failed" if r.status == "failed" or r.data.error else "did not complete"
        out.append(
            f'<div class="failure"><b>Run {esc(r.label)} {esc(what)}</b> (status '
            f"{esc(r.status)}): its numbers below are what it recorded before it stopped.{why}"
            "</div>"
        )
    problems = [f"{r.label}: {p}" for r in runs for p in r.data.problems]
    if problems:
        out.append(
            '<div class="problems"><b>Problems reading these runs</b><ul>'
            + "".join(f"<li>{esc(p)}</li>" for p in problems)
            + "</ul></div>"
        )
    return "".join(out)


def render_compare(runs: Sequence[ComparedRun], plots: Sequence[Plot] | None = None) -> str:
    """The whole page as one string."""
    if plots is None:
        try:
            plots = compare_plots(runs)
        except Exception as exc:  # plots are optional: the tables still compare the runs
            plots = []
            runs[0].data.problems.append(f"plots: {exc.__class__.__name__}: {exc}")
    title = "Comparison of " + ", ".join(r.label for r in runs)
    stamp = _dt.datetime.now().isoformat(timespec="seconds")
    sections = [
        ("runs", "Runs", runs_table(runs)),
        ("evaluation", "Final evaluations", evaluation_table(runs)),
        ("plots", "Curves", plots_section(plots)),
    ]
    nav = "".join(f'<a href="#{sid}">{name}</a>' for sid, name, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{n}</h2>{html}</section>' for sid, n, html in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} · cat-framework</title><style>{CSS}</style></head>"
        f'<body><main><header><h1>{esc(title)}</h1><div class="meta">{len(runs)} runs · '
        f"generated {esc(stamp)}</div></header><nav>{nav}</nav>{failures(runs)}{body}"
        "</main></body></html>\n"
    )


def write_compare(
    run_dirs: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str]
) -> Path:
    """Compare ``run_dirs`` on one page written to ``output`` (a folder gets compare.html).

    :raises FileNotFoundError: when a run directory does not exist.
    :raises OutputError: when the page cannot be written there.
    """
    page = render_compare(load_runs(run_dirs))
    target = Path(output)
    if target.is_dir():
        target = target / COMPARE_NAME
    try:
        _write_atomically(target, page)
    except OSError as exc:
        raise OutputError(
            f"cannot write the comparison to {target}: {_why_unwritable(target, exc)}; "
            "choose a writable path with -o/--output"
        ) from exc
    return target


__all__ = ["COMPARE_NAME", "evaluation_table", "render_compare", "write_compare"]
