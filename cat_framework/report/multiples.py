"""Small multiples: one metric per panel, the compared things (runs, estimators) as colours, one
shared legend above the panels.

Twenty series on one axes cannot be read; four runs x six diagnostics can, when each panel holds
one metric and a colour means the same run in every panel. A single point (an ``evaluate`` run,
a run evaluated once) is drawn as a marker with its interval as a whisker, never a hidden line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cat_framework.report import figure
from cat_framework.report.figure import Plot, new_figure, step_axis

NCOLS = 3


@dataclass
class Series:
    """One compared thing in one panel: its name (the legend's), points and optional interval."""

    name: str
    xs: list[float]
    ys: list[float]
    color: str
    lo: list[float] | None = None  # the interval, at the same xs
    hi: list[float] | None = None
    dashed: bool = False


@dataclass
class Panel:
    """One metric: a title and the series that have it; ``ylim`` fixes the scale of rates."""

    title: str
    series: list[Series]
    ylim: tuple[float, float] | None = None


def _draw(ax: Any, s: Series) -> None:
    style = "--" if s.dashed else "-"
    if len(s.xs) == 1:  # a lone point: a marker and its whisker
        err = None
        if s.lo is not None and s.hi is not None:
            err = [[max(0.0, s.ys[0] - s.lo[0])], [max(0.0, s.hi[0] - s.ys[0])]]
        ax.errorbar(s.xs, s.ys, yerr=err, fmt="o", color=s.color, markersize=4, capsize=3)
        return
    ax.plot(s.xs, s.ys, style, marker="o", markersize=3, linewidth=1.5, color=s.color)
    if s.lo is not None and s.hi is not None:
        ax.fill_between(s.xs, s.lo, s.hi, color=s.color, alpha=0.12, linewidth=0)


def _legend(fig: Any, panels: Sequence[Panel], always: bool) -> None:
    """One entry per name (its first colour and style), above the panels; a lone name only
    when ``always`` (a run on the compare page is named even when it is the only one drawn)."""
    from matplotlib.lines import Line2D

    entries: dict[str, Series] = {}
    for panel in panels:
        for s in panel.series:
            entries.setdefault(s.name, s)
    if not entries or (len(entries) < 2 and not always):
        return
    handles = [
        Line2D([], [], color=s.color, linestyle="--" if s.dashed else "-", marker="o", markersize=4)
        for s in entries.values()
    ]
    fig.legend(
        handles,
        list(entries),
        loc="outside upper center",
        ncols=min(len(entries), 4),
        fontsize=8,
        frameon=False,
    )


def _steps(axes: Sequence[Any], panels: Sequence[Panel]) -> None:
    """One step scale for every panel, tick labels under each, and whole steps only (a lone
    step, every run evaluated once, gets a tick of its own, not 0.00 +- 0.04)."""
    xs = {x for p in panels for s in p.series for x in s.xs}
    for ax in axes:
        step_axis(ax)
        ax.tick_params(labelbottom=True)
    if len(xs) == 1 and axes:  # the axes share one x axis: set once, after every step_axis
        (x,) = xs
        axes[0].set_xlim(x - 1, x + 1)
        axes[0].set_xticks([x])


def small_multiples(
    panels: Sequence[Panel],
    title: str,
    caption: str,
    *,
    ncols: int = NCOLS,
    sharey: bool = False,
    legend: bool = False,
) -> Plot | None:
    """A grid of ``panels`` (``ncols`` wide, one step scale, ``sharey``: one value scale too)
    with one shared legend (``legend``: even of a single name); None when every panel is
    empty."""
    panels = [p for p in panels if p.series]
    if not panels:
        return None
    ncols = max(1, min(ncols, len(panels)))
    nrows = (len(panels) + ncols - 1) // ncols
    names = {s.name for p in panels for s in p.series}
    legend_rows = (len(names) + 3) // 4 if len(names) > 1 or legend else 0
    height = 2.4 * nrows + 0.25 * legend_rows
    fig, axes = new_figure(3.3 * ncols, height, nrows, ncols, sharex=True, sharey=sharey)
    for ax, panel in zip(axes.flat, panels, strict=False):
        for s in panel.series:
            _draw(ax, s)
        ax.set_title(panel.title, fontsize=9)
        if panel.ylim is not None:
            ax.set_ylim(*panel.ylim)
        if sharey:
            ax.tick_params(labelleft=True)
    used = list(axes.flat)[: len(panels)]
    _steps(used, panels)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    _legend(fig, panels, legend)
    return Plot(title, figure.to_uri(fig), caption, wide=len(panels) > 1)


__all__ = ["Panel", "Series", "small_multiples"]
