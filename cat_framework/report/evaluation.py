"""The report's Evaluation section: one compact matrix, estimator x what a reader compares.

Rows are the estimators (aggregators); columns are the last evaluation's score, its confidence
interval, the change since the first evaluation (training runs), and the reference diagnostics
that explain a score: no answer, disagreement with the vote, right when disagreeing, right when
every rollout was wrong (each a rate with its count). The ~60 raw numbers behind it stay one
click away, in a collapsed list.
"""

from __future__ import annotations

from collections.abc import Sequence

from cat_framework.report.eval_metrics import EstimatorRow, EvalMatrix, Rate, eval_matrix, eval_rows
from cat_framework.report.fragments import kv_table, missing
from cat_framework.report.load import RunData, numeric
from cat_framework.report.samples import esc, fmt


def confidence_label(run: RunData) -> str:
    """The run's confidence level as a column header (``95%``), else ``CI``."""
    c = numeric(((run.config or {}).get("eval") or {}).get("confidence"))
    return f"{c:.0%}" if c is not None else "CI"


def ci_bar(
    score: float | None, lo: float | None, hi: float | None, span: tuple[float, float]
) -> str:
    """The interval as a small CSS bar on a scale shared by the table (no image, no script)."""
    if score is None:
        return ""
    a, b = span
    width = (b - a) or 1.0

    def pos(x: float) -> float:
        return max(0.0, min(100.0, 100.0 * (x - a) / width))

    rng = ""
    if lo is not None and hi is not None:
        rng = f'<span class="range" style="left:{pos(lo):.1f}%;width:{pos(hi) - pos(lo):.1f}%"></span>'
    return f'<div class="ci">{rng}<span class="point" style="left:{pos(score):.1f}%"></span></div>'


def _count(x: float | None) -> str:
    return "?" if x is None else fmt(x)


def rate_cell(rate: Rate | None) -> str:
    """``0.045 9/200``; ``— 0/0`` when there was nothing to count; ``—`` when not measured."""
    if rate is None:
        return '<td class="num muted">—</td>'
    counts = (
        f' <span class="muted">{_count(rate.count)}/{_count(rate.total)}</span>'
        if rate.count is not None or rate.total is not None
        else ""
    )
    value = f"{rate.rate:.3f}" if rate.rate is not None else '<span class="muted">—</span>'
    return f'<td class="num">{value}{counts}</td>'


def _n_cell(row: EstimatorRow) -> str:
    extra = (
        f' <span class="muted">+{fmt(row.unscorable)} unscorable</span>' if row.unscorable else ""
    )
    return f'<td class="num">{fmt(row.n)}{extra}</td>'


def _change_cell(row: EstimatorRow) -> str:
    if row.first is None or row.score is None:
        return '<td class="num muted">—</td>'
    return (
        f'<td class="num">{row.score - row.first:+.3f} '
        f'<span class="muted">from {fmt(row.first)}</span></td>'
    )


def matrix_table(matrix: EvalMatrix, confidence: str) -> str:
    """Estimator | score | CI | interval | n | (change) | one column per diagnostic measured."""
    rows = matrix.rows
    values = [v for r in rows for v in (r.score, r.ci_low, r.ci_high) if v is not None]
    span = (min(0.0, *values), max(1.0, *values)) if values else (0.0, 1.0)
    scores = {r.score for r in rows if r.score is not None}
    best = max(scores) if len(scores) > 1 else None  # no winner to mark when all tie
    since = matrix.first_step is not None
    head = (
        '<th>estimator</th><th class="num">score</th>'
        f'<th class="num">{esc(confidence)} CI</th><th>interval</th><th class="num">n</th>'
        + (f'<th class="num">since step {fmt(matrix.first_step)}</th>' if since else "")
        + "".join(f'<th class="num" title="{esc(why)}">{esc(h)}</th>' for _, h, why in matrix.rates)
    )
    body = "".join(
        f'<tr class="{"best" if r.score is not None and r.score == best else ""}">'
        f'<td>{esc(r.label)}</td><td class="num">{fmt(r.score)}</td>'
        f'<td class="num">[{fmt(r.ci_low)}, {fmt(r.ci_high)}]</td>'
        f"<td>{ci_bar(r.score, r.ci_low, r.ci_high, span)}</td>{_n_cell(r)}"
        + (_change_cell(r) if since else "")
        + "".join(rate_cell(r.rates.get(name)) for name, _, _ in matrix.rates)
        + "</tr>"
        for r in rows
    )
    return (
        '<div class="scroll"><table class="scores matrix">'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
    )


def _columns_note(matrix: EvalMatrix) -> str:
    if not matrix.rates:
        return ""
    items = "; ".join(f"<b>{esc(h)}</b>: {esc(why)}" for _, h, why in matrix.rates)
    return f'<p class="muted note">Rate, then count/total. {items}.</p>'


def rollouts_line(matrix: EvalMatrix) -> str:
    """The policy's own samples: accuracy (and its change), pass@G, prompts all wrong."""
    r, first = matrix.rollouts, matrix.first_rollouts
    bits = []
    if "accuracy" in r:
        change = (
            f" (from {fmt(first['accuracy'])}, {r['accuracy'] - first['accuracy']:+.3f})"
            if "accuracy" in first
            else ""
        )
        bits.append(f"accuracy <b>{fmt(r['accuracy'])}</b>{change}")
    if "pass_at_g" in r:
        bits.append(f"pass@G {fmt(r['pass_at_g'])}")
    if "all_wrong" in r:
        bits.append(f"every rollout wrong on {fmt(r['all_wrong'])} prompt(s)")
    return f"<p>Rollouts: {' · '.join(bits)}.</p>" if bits else ""


def _intro(run: RunData, matrix: EvalMatrix) -> str:
    s = run.eval_summary
    if isinstance(s, dict) and isinstance(s.get("aggregators"), dict):
        return (
            f'<p class="muted">Test-time CaT on {esc(s.get("prompts", "?"))} prompts '
            f"(task: {esc(s.get('task', '?'))}); references graded against gold.</p>"
        )
    steps = ", ".join(fmt(x) for x in matrix.steps)
    return (
        f'<p class="muted">Latest evaluation, at step {fmt(matrix.step)} (evaluated at steps '
        f"{esc(steps)}; the Held-out evaluation plot shows each).</p>"
    )


def raw_details(raw: dict[str, float]) -> str:
    """Every number of the last evaluation, collapsed: the matrix is what a reader needs first."""
    if not raw:
        return ""
    return (
        f'<details class="raw"><summary>All {len(raw)} numbers of this evaluation</summary>'
        f"{kv_table(raw)}</details>"
    )


def evaluation_section(run: RunData) -> str:
    """The matrix of the run's last evaluation, the rollouts' line and the raw numbers."""
    matrix = eval_matrix(eval_rows(run))
    if matrix is None:
        what = "metrics.json" if run.mode == "evaluate" else "eval/ metrics in metrics.jsonl"
        return missing(f"No evaluation results in this run ({what} not found).")
    parts: Sequence[str] = (
        _intro(run, matrix),
        matrix_table(matrix, confidence_label(run)) if matrix.rows else "",
        _columns_note(matrix),
        rollouts_line(matrix),
        raw_details(matrix.raw),
    )
    return "".join(parts)


__all__ = [
    "ci_bar",
    "confidence_label",
    "evaluation_section",
    "matrix_table",
    "rate_cell",
    "raw_details",
    "rollouts_line",
]
