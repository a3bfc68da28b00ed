"""``cat-framework compare``: several runs on one self-contained page (what an ablation needs).

Each run is read with the report's own loader (:func:`~cat_framework.report.load.load_run`), so a
run of any mode, complete, interrupted or failed, is shown as far as it got, and what is missing
is said on the page. Curves of the same metric from every run share one axes (one colour per
run, the same in every figure); the held-out evaluation and the teacher diagnostics are small
multiples, one metric per panel; an ``evaluate`` run is its step-0 point. The table puts the runs' final
evaluations side by side, with their confidence intervals and, for training runs, the score
they started from.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cat_framework.report.eval_metrics import summary_row
from cat_framework.report.eval_plots import compare_held_out, compare_teacher
from cat_framework.report.figure import PALETTE, Plot, new_figure, series, step_axis, to_uri
from cat_framework.report.load import RunData, load_run
from cat_framework.report.plots import KL, REWARD_MEAN

#: an evaluation score over steps: ``eval/<label>/score`` (``rollouts`` -> ``accuracy``)
EVAL_SCORE = re.compile(r"^eval/(?P<label>[^/]+)/(?P<key>score|accuracy)$")
STYLES = ["-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3))]


@dataclass
class ComparedRun:
    """One run on the page: a unique ``label`` and what the report loader read."""

    label: str
    data: RunData

    @property
    def status(self) -> str:
        return (self.data.log.status if self.data.log else None) or "unknown"

    @property
    def rows(self) -> list[dict[str, float]]:
        """Metric rows over steps; an ``evaluate`` run is one row at step 0."""
        if self.data.metrics:
            return self.data.metrics
        summary = self.data.eval_summary
        return [summary_row(summary)] if isinstance(summary, Mapping) else []


@dataclass
class EvalCell:
    """One run's evaluation of one aggregator: the last one, and the first when it differs."""

    score: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    n: float | None = None
    step: float | None = None
    first: float | None = None
    first_step: float | None = None


def load_runs(run_dirs: Sequence[str | os.PathLike[str]]) -> list[ComparedRun]:
    """Read every run; labels are the runs' names, or their folders when names repeat."""
    loaded = [load_run(d, max_prompts=0) for d in run_dirs]
    names = [r.name for r in loaded]
    labels = [r.name if names.count(r.name) == 1 else r.run_dir.name for r in loaded]
    seen: dict[str, int] = {}
    out = []
    for label, run in zip(labels, loaded, strict=True):
        seen[label] = seen.get(label, 0) + 1
        out.append(ComparedRun(label if seen[label] == 1 else f"{label} ({seen[label]})", run))
    return out


def evaluations(run: ComparedRun) -> dict[str, EvalCell]:
    """Aggregator label (and ``rollouts``) -> its last evaluation, with the first for context."""
    cells: dict[str, EvalCell] = {}
    for label in dict.fromkeys(
        m.group("label") for row in run.rows for k in row if (m := EVAL_SCORE.match(k))
    ):
        key = "accuracy" if label == "rollouts" else "score"
        steps, values = series(run.rows, f"eval/{label}/{key}")
        if not values:
            continue
        last = next(r for r in reversed(run.rows) if f"eval/{label}/{key}" in r)
        cells[label] = EvalCell(
            score=values[-1],
            ci_low=last.get(f"eval/{label}/ci_low"),
            ci_high=last.get(f"eval/{label}/ci_high"),
            n=last.get(f"eval/{label}/n"),
            step=steps[-1],
            first=values[0] if len(values) > 1 else None,
            first_step=steps[0] if len(values) > 1 else None,
        )
    return cells


def _overlay(
    runs: Sequence[ComparedRun], pattern: re.Pattern[str], title: str, caption: str
) -> Plot | None:
    """One axis: every metric ``pattern`` matches, one colour per run, one line style per key."""
    fig, axes = new_figure(9.0, 3.6)
    ax = axes[0, 0]
    drawn = 0
    for i, run in enumerate(runs):
        keys = [
            k
            for k in dict.fromkeys(k for row in run.rows for k in row)
            if pattern.search(k.lower()) and not k.endswith(("/count", "/total"))
        ][:6]
        for j, key in enumerate(keys):
            xs, ys = series(run.rows, key)
            color = PALETTE[i % len(PALETTE)]
            ax.plot(
                xs,
                ys,
                marker="o",
                markersize=3,
                linewidth=1.5,
                linestyle=STYLES[j % len(STYLES)],
                color=color,
                label=f"{run.label} · {key}",
            )
            base = key.rsplit("/", 1)[0]
            lo = dict(zip(*series(run.rows, base + "/ci_low"), strict=True))
            hi = dict(zip(*series(run.rows, base + "/ci_high"), strict=True))
            pts = [(x, lo[x], hi[x]) for x in xs if x in lo and x in hi]
            if pts and key.endswith("/score"):
                ax.fill_between(*zip(*pts, strict=True), color=color, alpha=0.1)
            drawn += 1
    if not drawn:
        return None
    ax.legend(fontsize=6.5, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    step_axis(ax)
    return Plot(title, to_uri(fig), caption)


def compare_plots(runs: Sequence[ComparedRun]) -> list[Plot]:
    """Reward, held-out evaluation, KL, completion length and teacher diagnostics: one metric
    per axes, one colour per run (the evaluation and the diagnostics as small multiples)."""
    named = [(r.label, r.rows) for r in runs]
    plots = [
        _overlay(runs, REWARD_MEAN, "Reward", "mean training reward per step"),
        compare_held_out(named),
        _overlay(runs, KL, "KL to the reference", "KL divergence to π₀ per step"),
        _overlay(  # not the report's broad LENGTH pattern: min/max/clipped would crowd it
            runs,
            re.compile(r"^(completions/mean_length|tokens/mean|length/mean|completion_length)$"),
            "Completion length",
            "mean tokens per rollout",
        ),
        compare_teacher(named),
    ]
    return [p for p in plots if p is not None]


__all__ = ["ComparedRun", "EvalCell", "compare_plots", "evaluations", "load_runs"]
