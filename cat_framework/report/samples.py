"""HTML for the browsable sample of prompts: one ``<details>`` per prompt.

Every piece of model or data text goes through :func:`esc` (``html.escape`` with quotes), so a
rollout that contains ``<script>`` shows as text and never runs.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from cat_framework.report.views import PromptView, ReferenceView, RolloutView, VerdictView

PREVIEW_CHARS = 140


def esc(value: Any) -> str:
    """HTML-escaped text (quotes too, so it is safe in attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for a table cell; ``None`` as an em dash."""
    if value is None:
        return "—"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.{digits}f}" if abs(value) >= 10**-digits else f"{value:.2e}"


def tag(text: str, kind: str = "", title: str = "") -> str:
    t = f' title="{esc(title)}"' if title else ""
    return f'<span class="tag {kind}"{t}>{esc(text)}</span>'


def text_block(text: str, cls: str = "text") -> str:
    body = esc(text) if text else '<span class="muted">(empty)</span>'
    return f'<pre class="{cls}">{body}</pre>'


def _verdict_cell(v: VerdictView | None) -> str:
    if v is None:
        return '<td class="met-none">·</td>'
    cls = {True: "met-yes", False: "met-no"}.get(v.met, "met-none")  # type: ignore[arg-type]
    return f'<td class="{cls}" title="{esc(v.error or v.raw)}">{v.word}</td>'


def rubric_matrix(pv: PromptView) -> str:
    """Criteria as rows, rollouts as columns, each cell the judge's verdict."""
    criteria = [c for c, _ in pv.rubric]
    points = {c: p for c, p in pv.rubric}
    for r in pv.rollouts:
        for v in r.verdicts:
            if v.criterion not in points:
                criteria.append(v.criterion)
                points[v.criterion] = v.points
    if not criteria:
        return '<p class="muted">No rubric in this record.</p>'
    show_points = any(p is not None and p != 1.0 for p in points.values())
    head = "".join(
        f'<th class="{"disagree" if r.disagrees else ""}">#{i + 1}</th>'
        for i, r in enumerate(pv.rollouts)
    )
    rows = []
    for c in criteria:
        by = [next((v for v in r.verdicts if v.criterion == c), None) for r in pv.rollouts]
        pts = f'<td class="num">{fmt(points.get(c))}</td>' if show_points else ""
        cells = "".join(_verdict_cell(v) for v in by)
        rows.append(f'<tr><td class="crit">{esc(c)}</td>{pts}{cells}</tr>')
    status = (
        f" {tag('rubric ' + pv.rubric_status, 'warn' if pv.rubric_status != 'ok' else '')}"
        if pv.rubric_status
        else ""
    )
    return (
        f'<p class="muted">{len(criteria)} criteria{status}; columns are rollouts, '
        "cells the judge's verdict (hover for its raw answer).</p>"
        '<div class="scroll"><table class="rubric"><thead><tr><th>criterion</th>'
        f"{'<th>points</th>' if show_points else ''}{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _reference(ref: ReferenceView, primary: bool) -> str:
    meta = [tag(ref.label, "info" if primary else "")]
    if ref.method and ref.method != ref.label:
        meta.append(tag(f"method {ref.method}"))
    if ref.answer is not None:
        meta.append(f"answer <code>{esc(ref.answer)}</code>")
    if ref.score is not None:
        kind = "good" if ref.score >= 0.5 else "bad"
        meta.append(tag(f"score {fmt(ref.score)}", kind, "graded against gold (evaluation only)"))
    grading = ""
    if ref.verdicts:
        items = "".join(
            f'<li><span class="{_met_cls(v.met)}" title="{esc(v.error)}">{v.word}</span> '
            f"{'' if v.points is None else f'({fmt(v.points)}) '}{esc(v.criterion)}</li>"
            for v in ref.verdicts
        )
        grading = (
            f'<details class="inner"><summary>gold grading: {len(ref.verdicts)} criteria'
            f'</summary><ul class="verdicts">{items}</ul></details>'
        )
    cls = "ref primary" if primary else "ref"
    return (
        f'<div class="{cls}"><div class="meta">{" ".join(meta)}</div>'
        f"{text_block(ref.text)}{grading}</div>"
    )


def _met_cls(met: bool | None) -> str:
    return {True: "met-yes", False: "met-no"}.get(met, "met-none")  # type: ignore[arg-type]


def _rollout(i: int, r: RolloutView) -> str:
    meta = [f"<b>#{i + 1}</b>"]
    if r.reward is not None:
        meta.append(tag(f"reward {fmt(r.reward)}", "num"))
    if r.advantage is not None:
        meta.append(tag(f"advantage {r.advantage:+.3f}", "num"))
    if r.correct is not None:
        meta.append(
            tag(
                "✓ correct" if r.correct else "✗ wrong",
                "good" if r.correct else "bad",
                "against the gold answer (evaluation only)",
            )
        )
    if r.answer is not None:
        meta.append(f"answer <code>{esc(r.answer)}</code>")
    if r.verdicts:
        met = sum(1 for v in r.verdicts if v.met is True)
        unparsed = sum(1 for v in r.verdicts if v.met is None)
        extra = f", {unparsed} unparsed" if unparsed else ""
        meta.append(tag(f"rubric {met}/{len(r.verdicts)} met{extra}"))
    if r.tokens is not None:
        meta.append(f'<span class="muted">{r.tokens} tokens</span>')
    if not r.trained:
        meta.append(tag("reference only", "", "sampled only to build the reference (not trained)"))
    if r.finish_reason and r.finish_reason != "stop":
        label = "truncated" if r.finish_reason == "length" else r.finish_reason
        meta.append(tag(label, "warn", f"finish_reason: {r.finish_reason}"))
    meta.extend(tag(reason, "warn") for reason in r.reasons)
    classes = ["rollout"]
    if r.disagrees:
        classes.append("disagree")
    if r.correct is False:
        classes.append("wrong")
    return (
        f'<div class="{" ".join(classes)}"><div class="meta">{" ".join(meta)}</div>'
        f"{text_block(r.text)}</div>"
    )


def prompt_block(pv: PromptView, open_: bool = False) -> str:
    """One prompt: its messages, references, rubric with verdicts, and rollouts."""
    preview = pv.question.strip().replace("\n", " ")
    if len(preview) > PREVIEW_CHARS:
        preview = preview[:PREVIEW_CHARS] + "…"
    n_dis = sum(1 for r in pv.rollouts if r.disagrees)
    badges = [tag(f"step {pv.step}")] if pv.step is not None else []
    badges.append(tag(f"{len(pv.rollouts)} rollouts"))
    if n_dis:
        badges.append(tag(f"{n_dis} disagree", "warn"))
    flags = [r.correct for r in pv.rollouts if r.correct is not None]
    if flags:
        badges.append(tag(f"{sum(flags)}/{len(flags)} correct", "", "rollouts right against gold"))
    rewards = [r.reward for r in pv.rollouts if r.reward is not None]
    if rewards:
        badges.append(tag(f"mean reward {fmt(sum(rewards) / len(rewards))}"))
    primary = pv.primary
    if primary is not None and primary.score is not None:
        kind = "good" if primary.score >= 0.5 else "bad"
        badges.append(tag(f"{primary.label} {fmt(primary.score)}", kind))
    msgs = (
        "".join(
            f'<div class="msg"><span class="role">{esc(role)}</span>{text_block(content)}</div>'
            for role, content in pv.messages
        )
        or '<p class="muted">No prompt messages in this record.</p>'
    )
    gold = (
        f"<p>gold answer <code>{esc(pv.gold_answer)}</code> "
        '<span class="muted">(evaluation only; the teacher never sees it)</span></p>'
        if pv.gold_answer is not None
        else ""
    )
    ordered = ([primary] if primary else []) + [r for r in pv.references if r is not primary]
    refs = "".join(_reference(r, r is primary) for r in ordered) or (
        '<p class="muted">No reference in this record.</p>'
    )
    has_rubric = bool(pv.rubric) or any(r.verdicts for r in pv.rollouts)
    rubric = f"<h4>Rubric and verdicts</h4>{rubric_matrix(pv)}" if has_rubric else ""
    rollouts = "".join(_rollout(i, r) for i, r in enumerate(pv.rollouts)) or (
        '<p class="muted">No rollouts in this record.</p>'
    )
    return (
        f'<details class="prompt"{" open" if open_ else ""}><summary>'
        f'<span class="pid">{esc(pv.prompt_id)}</span> {" ".join(badges)}'
        f'<span class="preview">{esc(preview)}</span></summary><div class="body">'
        f"<h4>Prompt</h4>{msgs}{gold}<h4>Reference</h4>{refs}{rubric}"
        f"<h4>Rollouts</h4>{rollouts}</div></details>"
    )


def samples_section(views: Sequence[PromptView], n_records: int, steps: Sequence[int]) -> str:
    """The sample of prompts with a legend; the first prompt is open."""
    if not views and n_records:
        return (
            f'<p class="missing">No sampled line of records.jsonl ({n_records} in all) is a run '
            "record this cat-framework reads: see Problems reading this run, above.</p>"
        )
    if not views:
        return '<p class="missing">No records.jsonl in this run directory (or it is empty).</p>'
    where = (
        f" from steps {', '.join(str(s) for s in sorted({v.step for v in views if v.step is not None}))}"
        f" (of {len(steps)} steps)"
        if steps
        else ""
    )
    legend = (
        '<p class="legend"><span class="swatch disagree"></span> disagrees with the reference '
        "(different answer, or reward below the group's best) "
        f"{tag('✗ wrong', 'bad')} wrong against gold "
        f'<span class="met-yes pill">yes</span> <span class="met-no pill">no</span> '
        '<span class="met-none pill">unparsed</span> judge verdicts</p>'
    )
    blocks = "".join(prompt_block(v, open_=(i == 0)) for i, v in enumerate(views))
    return (
        f'<p class="muted">Showing {len(views)} of {n_records} records{where}.</p>{legend}{blocks}'
    )
