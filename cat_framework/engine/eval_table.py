"""The test-time table a run prints: ``mode: evaluate`` once, a training run at each evaluation.

Plain text with columns padded to their content, so what a terminal shows, a pipe, a log file
and the README's excerpt are the same characters (a rich table draws boxes and wraps to the
terminal's width). Under a live progress bar it prints through the bar's console, above it.

A math table says at which answer level each estimator's reference was read (its ``fallback``):
scores are comparable only between estimators that read answers the same way.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from cat_framework.engine.progress import active_console


def format_table(
    summary: Mapping[str, Any],
    confidence: float,
    levels: Mapping[str, str | None] | None = None,
    step: int | None = None,
) -> str:
    """The table of a :func:`~cat_framework.engine.evaluate.summarize` result. ``levels``: each
    label's answer level (shown for math; ``-`` where an aggregator has none); ``step``: the
    training step the evaluation belongs to (``None``: ``mode: evaluate``)."""
    at = "" if step is None else f" at step {step}"
    title = f"test-time CaT{at}: {summary['prompts']} prompts ({summary['task']})"
    math_task = summary["task"] == "math" and levels is not None
    head = ["aggregator", "answers", "score", f"{confidence:.0%} CI"]
    rows = [
        [
            label,
            (levels or {}).get(label) or "-",
            f"{s['score']:.3f}",
            f"[{s['ci_low']:.3f}, {s['ci_high']:.3f}]",
        ]
        for label, s in summary["aggregators"].items()
    ]
    if not math_task:
        head, rows = [head[0], *head[2:]], [[r[0], *r[2:]] for r in rows]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [title] + [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [head, *rows]
    ]
    if "rollouts" in summary:
        r = summary["rollouts"]
        lines.append(
            f"rollout accuracy {r['accuracy']:.3f}, pass@G {r['pass_at_g']:.3f} "
            "(each rollout's answer read at number)"
        )
    return "\n".join(lines)


def print_table(
    summary: Mapping[str, Any],
    confidence: float,
    levels: Mapping[str, str | None] | None = None,
    step: int | None = None,
) -> None:
    """Print :func:`format_table` on stderr, with the run's logs (above a live bar, if any)."""
    text = format_table(summary, confidence, levels, step)
    console = active_console()
    if console is not None:
        console.print(text, markup=False, highlight=False, soft_wrap=True)
    else:
        print(text, file=sys.stderr, flush=True)


__all__ = ["format_table", "print_table"]
