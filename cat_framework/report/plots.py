"""Plots as embedded PNGs (``data:image/png;base64,...``), drawn with matplotlib's Agg canvas.

No pyplot and no global backend switch: each figure is a :class:`matplotlib.figure.Figure` drawn
on its own canvas, so making a report never disturbs a caller's matplotlib state. Metric names are
matched by pattern (``reward/mean``, ``reward_mean`` and ``train/reward/mean`` all count as the
mean reward); whatever no pattern claims is drawn in the "other metrics" grid.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cat_framework.records import RunRecord
from cat_framework.report.eval_plots import TEACHER, held_out_plot, teacher_plot
from cat_framework.report.figure import PALETTE, Plot, Rows, series, step_axis, to_uri
from cat_framework.report.figure import new_figure as _figure
from cat_framework.report.load import numeric
from cat_framework.report.views import EVALUATE_PRIMARY

REWARD_MEAN = re.compile(r"^(train/)?rewards?([/_]mean)?$")
REWARD_STD = re.compile(r"^(train/)?rewards?[/_]std$")
REWARD_RANGE = re.compile(r"^(train/)?rewards?[/_](min|max)$")
KL = re.compile(r"(^|/)kl([/_]mean)?$")
LENGTH = re.compile(r"length|(^|/)len(/|_|$)|(^|/)(completion_)?tokens/(mean|min|max)$")
ACCURACY = re.compile(r"accuracy")
TIME = re.compile(r"^time/[^/]+$")
TIME_TOTAL = re.compile(r"^time/(step|total|wall|step_total)$")
#: x-axis-like keys never drawn as metrics
AXES = {"step", "epoch", "global_step", "samples", "timestamp", "time"}
#: companions of a plotted metric, never drawn on their own
COMPANION = re.compile(r"^eval/.+/(n|ci_low|ci_high|unscorable)$|/(count|total)$")
MAX_OTHER = 12


def _keys(rows: Rows) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        for k in row:
            if k not in AXES:
                seen.setdefault(k, None)
    return list(seen)


def _match(keys: Sequence[str], pattern: re.Pattern[str], used: set[str]) -> list[str]:
    return [k for k in keys if k not in used and pattern.search(k.lower())]


def _lines(ax: Any, rows: Rows, keys: Sequence[str], marker: str = "") -> None:
    for i, key in enumerate(keys):
        xs, ys = series(rows, key)
        many = len(xs) > 40
        ax.plot(
            xs,
            ys,
            marker=marker or ("" if many else "o"),
            markersize=3,
            linewidth=1.5,
            color=PALETTE[i % len(PALETTE)],
            label=key,
        )
    if keys:
        ax.legend(fontsize=7, frameon=False)
    step_axis(ax)


def _reward(rows: Rows, keys: Sequence[str], used: set[str]) -> Plot | None:
    mean = _match(keys, REWARD_MEAN, used)[:1]
    if not mean:
        return None
    std = _match(keys, REWARD_STD, used)[:1]
    rng = _match(keys, REWARD_RANGE, used)
    used.update(mean + std + rng)
    fig, axes = _figure()
    ax = axes[0, 0]
    xs, ys = series(rows, mean[0])
    ax.plot(xs, ys, color=PALETTE[0], linewidth=1.8, label=mean[0])
    if std:
        sd = dict(zip(*series(rows, std[0]), strict=True))
        lo = [y - sd.get(x, 0.0) for x, y in zip(xs, ys, strict=True)]
        hi = [y + sd.get(x, 0.0) for x, y in zip(xs, ys, strict=True)]
        ax.fill_between(xs, lo, hi, color=PALETTE[0], alpha=0.18, label=f"± {std[0]}")
    for key in rng:
        ax.plot(*series(rows, key), color="#999999", linewidth=0.8, linestyle=":", label=key)
    ax.legend(fontsize=7, frameon=False)
    step_axis(ax)
    return Plot("Reward", to_uri(fig), "mean reward per step, ± one standard deviation")


def _simple(
    rows: Rows,
    keys: Sequence[str],
    used: set[str],
    pattern: re.Pattern[str],
    title: str,
    caption: str,
    exclude: Callable[[str], bool] = lambda k: False,
) -> Plot | None:
    chosen = [k for k in _match(keys, pattern, used) if not exclude(k)][:8]
    if not chosen:
        return None
    used.update(chosen)
    fig, axes = _figure()
    _lines(axes[0, 0], rows, chosen)
    return Plot(title, to_uri(fig), caption)


def _time_split(rows: Rows, keys: Sequence[str], used: set[str]) -> Plot | None:
    times = _match(keys, TIME, used)
    if not times:
        return None
    used.update(times)
    totals = [k for k in times if TIME_TOTAL.search(k)]
    parts = [k for k in times if k not in totals]
    rank = {"teacher": 0, "train": 1, "optim": 1, "backward": 1, "update": 1}
    parts.sort(key=lambda k: min((v for n, v in rank.items() if n in k), default=2))
    steps = [float(r.get("step", i + 1)) for i, r in enumerate(rows) if any(k in r for k in times)]
    picked = [r for r in rows if any(k in r for k in times)]
    stacks = [[float(r.get(k, 0.0)) for r in picked] for k in parts]
    labels = [k.removeprefix("time/") for k in parts]
    if totals:
        total = [float(r.get(totals[0], 0.0)) for r in picked]
        other = (
            [
                max(0.0, t - sum(col))
                for t, col in zip(total, zip(*stacks, strict=True), strict=True)
            ]
            if stacks
            else total
        )
        if any(o > 1e-9 for o in other):
            stacks.append(other)
            labels.append("other" if stacks[:-1] else totals[0].removeprefix("time/"))
    fig, axes = _figure()
    ax = axes[0, 0]
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(stacks))]
    if len(steps) <= 60:
        bottom = [0.0] * len(steps)
        for col, label, color in zip(stacks, labels, colors, strict=True):
            ax.bar(steps, col, bottom=bottom, label=label, color=color, width=0.8)
            bottom = [b + c for b, c in zip(bottom, col, strict=True)]
    else:
        ax.stackplot(steps, *stacks, labels=labels, colors=colors)
    ax.set_ylabel("seconds", fontsize=8)
    step_axis(ax)
    ax.legend(fontsize=7, frameon=False)
    return Plot("Step time", to_uri(fig), "seconds per step, stacked: teacher vs training")


def _other(rows: Rows, keys: Sequence[str], used: set[str]) -> Plot | None:
    rest = [
        k
        for k in keys
        if k not in used and not COMPANION.search(k) and len(series(rows, k)[0]) >= 2
    ][:MAX_OTHER]
    if not rest:
        return None
    ncols = 3
    nrows = (len(rest) + ncols - 1) // ncols
    fig, axes = _figure(9.6, 2.1 * nrows, nrows, ncols)
    for ax, key in zip(axes.flat, rest, strict=False):
        xs, ys = series(rows, key)
        ax.plot(xs, ys, linewidth=1.2, color=PALETTE[0])
        ax.set_title(key, fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in list(axes.flat)[len(rest) :]:
        ax.set_visible(False)
    return Plot("Other metrics", to_uri(fig), f"{len(rest)} more metric(s) over steps", wide=True)


def _evaluation(rows: Rows, keys: Sequence[str], used: set[str]) -> Plot | None:
    """Every ``eval/`` number is the held-out evaluation's (the Evaluation section lists them)."""
    evals = [k for k in keys if k.startswith("eval/")]
    used.update(evals)
    return held_out_plot(rows) if evals else None


def _teacher(rows: Rows, keys: Sequence[str], used: set[str]) -> Plot | None:
    chosen = [k for k in keys if k not in used and TEACHER.match(k)]
    used.update(chosen)
    return teacher_plot(rows, chosen) if chosen else None


def training_plots(rows: Rows) -> list[Plot]:
    """Reward, KL, lengths, held-out evaluation, accuracy, teacher diagnostics, step-time split,
    then the remaining metrics."""
    keys = _keys(rows)
    used: set[str] = set()
    plots = [
        _reward(rows, keys, used),
        _simple(rows, keys, used, KL, "KL to the reference", "KL divergence to π₀ per step"),
        _simple(
            rows,
            keys,
            used,
            LENGTH,
            "Completion lengths",
            "tokens per rollout",
            exclude=lambda k: (
                k.startswith(("eval/", "time/"))
                or any(w in k for w in ("penal", "frac", "ratio", "clipped", "trunc", "corr"))
            ),
        ),
        _evaluation(rows, keys, used),
        _simple(
            rows,
            keys,
            used,
            ACCURACY,
            "Accuracy",
            "accuracies logged per step",
            exclude=lambda k: bool(TEACHER.match(k)),
        ),
        _teacher(rows, keys, used),
        _time_split(rows, keys, used),
    ]
    plots.append(_other(rows, keys, used))
    return [p for p in plots if p is not None]


def evaluate_plots(summary: Mapping[str, Any] | None, records: Sequence[RunRecord]) -> list[Plot]:
    """Scores with CIs (from ``metrics.json``), correct rollouts per prompt, rollout lengths."""
    plots = []
    aggs = summary.get("aggregators") if isinstance(summary, Mapping) else None
    if isinstance(aggs, Mapping) and aggs:
        labels = list(aggs)
        fig, axes = _figure(6.4, 0.5 + 0.45 * len(labels) + 0.6)
        ax = axes[0, 0]
        scores = [numeric((aggs[k] or {}).get("score")) or 0.0 for k in labels]
        lo = [numeric((aggs[k] or {}).get("ci_low")) for k in labels]
        hi = [numeric((aggs[k] or {}).get("ci_high")) for k in labels]
        err = [
            [
                max(0.0, s - (lo_ if lo_ is not None else s))
                for s, lo_ in zip(scores, lo, strict=True)
            ],
            [
                max(0.0, (hi_ if hi_ is not None else s) - s)
                for s, hi_ in zip(scores, hi, strict=True)
            ],
        ]
        ys = list(range(len(labels)))[::-1]
        ax.barh(
            ys,
            scores,
            color=PALETTE[0],
            height=0.6,
            xerr=err,
            capsize=3,
            error_kw={"elinewidth": 1, "ecolor": "#333333"},
        )
        ax.set_yticks(ys, labels, fontsize=8)
        roll = summary.get("rollouts") if isinstance(summary.get("rollouts"), Mapping) else {}
        for (key, name), color in zip(
            (("accuracy", "rollout accuracy"), ("pass_at_g", "pass@G")),
            (PALETTE[1], PALETTE[2]),
            strict=True,
        ):
            v = numeric(roll.get(key))
            if v is not None:
                ax.axvline(v, color=color, linestyle="--", linewidth=1.2, label=f"{name} {v:.3f}")
        if roll:
            ax.legend(fontsize=7, frameon=False, loc="lower right", bbox_to_anchor=(1, 1), ncols=2)
        ax.set_xlabel("score", fontsize=8)
        plots.append(
            Plot(
                "Score by aggregator",
                to_uri(fig),
                "bars: mean score; whiskers: confidence interval",
            )
        )
    plots.extend(p for p in (_correct_per_prompt(records), _lengths(records)) if p is not None)
    return plots


def _correct_per_prompt(records: Sequence[RunRecord]) -> Plot | None:
    counts: dict[int, list[int]] = {}
    for rec in records:
        flags = [ro.correct for ro in rec.rollouts if ro.trained]
        if not flags or not all(isinstance(f, bool) for f in flags):
            continue
        ref = rec.references.get(EVALUATE_PRIMARY) or next(iter(rec.references.values()), None)
        score = numeric(ref.score) if ref is not None else None
        slot = counts.setdefault(sum(flags), [0, 0])
        slot[0 if (score or 0.0) >= 0.5 else 1] += 1
    if not counts:
        return None
    fig, axes = _figure()
    ax = axes[0, 0]
    ks = sorted(counts)
    right, wrong = [counts[k][0] for k in ks], [counts[k][1] for k in ks]
    ax.bar(ks, right, color=PALETTE[2], label="reference correct")
    ax.bar(ks, wrong, bottom=right, color=PALETTE[3], label="reference wrong")
    ax.set_xticks(range(0, max(ks) + 1))
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("correct rollouts in the group", fontsize=8)
    ax.set_ylabel("prompts", fontsize=8)
    ax.legend(fontsize=7, frameon=False)
    return Plot(
        "Correct rollouts per prompt",
        to_uri(fig),
        "prompts by how many of their G rollouts were right; colour: the synthesis reference",
    )


def _lengths(records: Sequence[RunRecord]) -> Plot | None:
    lengths = [numeric(ro.tokens) for rec in records for ro in rec.rollouts]
    values = [v for v in lengths if v is not None]
    if not values:
        return None
    fig, axes = _figure()
    ax = axes[0, 0]
    ax.hist(values, bins=min(30, max(5, len(set(values)))), color=PALETTE[0])
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("tokens per rollout", fontsize=8)
    ax.set_ylabel("rollouts", fontsize=8)
    return Plot("Rollout lengths", to_uri(fig), f"{len(values)} rollouts")
