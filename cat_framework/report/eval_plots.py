"""Held-out evaluation and teacher diagnostics over steps, as small multiples.

The report draws one run: a panel per metric (the score, then each reference diagnostic), the
estimators as colours. ``compare`` draws several: a panel per estimator's score or per
diagnostic, the runs as colours. Either way no axes holds more than one metric, so four runs x
six diagnostics stay readable.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from cat_framework.report.eval_metrics import RATES, ROLLOUTS, estimator_labels
from cat_framework.report.figure import PALETTE, Plot, Rows, series
from cat_framework.report.multiples import Panel, Series, small_multiples

#: the teacher's diagnostics per training step (see cat_framework.engine.diagnostics)
TEACHER = re.compile(
    r"^(reference/[a-z_]+|reward/(unscorable|length_corr)|judge/(failed|unparsed))$"
)
#: what each diagnostic means, as a panel title
TITLES = {
    **{name: header for name, header, _ in RATES},
    "reference/fallback": "replaced by the vote (fallback)",
    "reference/accuracy": "reference right (gold audit)",
    "reward/unscorable": "unscorable rollouts",
    "reward/length_corr": "reward-length correlation",
    "judge/failed": "judge requests failed",
    "judge/unparsed": "judge answers unparsed",
}
RATE_LIMITS = (-0.04, 1.04)
ROLLOUT_SERIES = (("accuracy", "rollout accuracy", "#555555"), ("pass_at_g", "pass@G", "#999999"))
NamedRows = Sequence[tuple[str, Rows]]


def title(name: str) -> str:
    """A diagnostic's panel title (its metric name when it has none)."""
    return TITLES.get(name, name)


def _limits(name: str) -> tuple[float, float]:
    return (-1.04, 1.04) if name.endswith("_corr") else RATE_LIMITS


def line(rows: Rows, key: str, name: str, color: str, dashed: bool = False) -> Series | None:
    """``key`` over steps, with its ``ci_low``/``ci_high`` interval where logged at every point."""
    xs, ys = series(rows, key)
    if not xs:
        return None
    base = key.rsplit("/", 1)[0]
    lo = dict(zip(*series(rows, base + "/ci_low"), strict=True))
    hi = dict(zip(*series(rows, base + "/ci_high"), strict=True))
    both = key.endswith("/score") and all(x in lo and x in hi for x in xs)
    return Series(
        name,
        xs,
        ys,
        color,
        lo=[lo[x] for x in xs] if both else None,
        hi=[hi[x] for x in xs] if both else None,
        dashed=dashed,
    )


def _present(items: Sequence[Series | None]) -> list[Series]:
    return [s for s in items if s is not None]


def held_out_plot(rows: Rows) -> Plot | None:
    """One run's evaluations: the scores (estimators as colours, the rollouts dashed), then a
    panel per reference diagnostic measured."""
    labels = [k for k in estimator_labels(rows) if k != ROLLOUTS]
    colors = {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(labels)}
    score = _present(
        [line(rows, f"eval/{label}/score", label, colors[label]) for label in labels]
        + [
            line(rows, f"eval/{ROLLOUTS}/{key}", name, color, dashed=True)
            for key, name, color in ROLLOUT_SERIES
        ]
    )
    panels = [Panel("score", score)] + [
        Panel(header, _present([line(rows, f"eval/{lb}/{name}", lb, colors[lb]) for lb in labels]))
        for name, header, _ in RATES
    ]
    for panel in panels[1:]:
        panel.ylim = RATE_LIMITS
    return small_multiples(
        panels,
        "Held-out evaluation",
        "each evaluation over steps, one metric per panel, estimators as colours; "
        "shaded or whiskers: confidence interval (the Evaluation section has the last one)",
    )


def teacher_plot(rows: Rows, keys: Sequence[str]) -> Plot | None:
    """One run's teacher diagnostics per training step, a panel each."""
    chosen = [k for k in keys if TEACHER.match(k)]
    panels = [  # one run: a single name, so no legend
        Panel(title(k), _present([line(rows, k, "this run", PALETTE[0])]), _limits(k))
        for k in chosen
    ]
    return small_multiples(
        panels,
        "Teacher diagnostics",
        "rates per step (counts in metrics.jsonl): references without an answer or replaced "
        "by the vote, disagreeing with the rollouts' majority, right when disagreeing / when "
        "all rollouts are wrong (gold audit), unscorable rollouts, reward-length correlation",
    )


def compare_held_out(runs: NamedRows) -> Plot | None:
    """Several runs' evaluations: a panel per estimator (and the rollouts), runs as colours."""
    labels = list(dict.fromkeys(k for _, rows in runs for k in estimator_labels(rows)))
    labels = [k for k in labels if k != ROLLOUTS]
    if any(f"eval/{ROLLOUTS}/accuracy" in row for _, rows in runs for row in rows):
        labels.append(ROLLOUTS)  # the policy's own accuracy last, as in the table
    panels = []
    for label in labels:
        key = f"eval/{label}/" + ("accuracy" if label == ROLLOUTS else "score")
        lines = [
            line(rows, key, name, PALETTE[i % len(PALETTE)]) for i, (name, rows) in enumerate(runs)
        ]
        panels.append(Panel("rollout accuracy" if label == ROLLOUTS else label, _present(lines)))
    return small_multiples(
        panels,
        "Held-out evaluation",
        "score of each estimator (and the rollouts' accuracy) at each evaluation, one panel "
        "each, runs as colours; shaded or whiskers: CI; an evaluate run is its step-0 point",
        sharey=True,
        legend=True,
    )


def compare_teacher(runs: NamedRows) -> Plot | None:
    """Several runs' teacher diagnostics per training step: a panel each, runs as colours."""
    keys = list(dict.fromkeys(k for _, rows in runs for row in rows for k in row))
    panels = [
        Panel(
            title(key),
            _present(
                [
                    line(rows, key, name, PALETTE[i % len(PALETTE)])
                    for i, (name, rows) in enumerate(runs)
                ]
            ),
            _limits(key),
        )
        for key in keys
        if TEACHER.match(key)
    ]
    return small_multiples(
        panels,
        "Teacher diagnostics",
        "rates per training step, one diagnostic per panel, runs as colours "
        "(see docs: reference diagnostics)",
        legend=True,
    )


__all__ = [
    "TEACHER",
    "compare_held_out",
    "compare_teacher",
    "held_out_plot",
    "line",
    "teacher_plot",
    "title",
]
