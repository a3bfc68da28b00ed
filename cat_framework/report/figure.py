"""The drawing primitives every report figure shares: an Agg figure, a step axis, a PNG data URI.

No pyplot and no global backend switch: each figure is a :class:`matplotlib.figure.Figure` drawn
on its own canvas, so making a report never disturbs a caller's matplotlib state.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Rows = Sequence[Mapping[str, float]]
PALETTE = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#ff9da6", "#9d755d"]


@dataclass
class Plot:
    """One embedded figure; ``wide`` ones (grids of panels) take a whole row of the page."""

    title: str
    uri: str
    caption: str = ""
    wide: bool = False


def new_figure(
    width: float = 6.4, height: float = 3.4, nrows: int = 1, ncols: int = 1, **share: bool
) -> Any:
    """``(figure, axes grid)`` with the report's light grid and no top/right spines; ``share``:
    ``sharex``/``sharey`` of matplotlib's ``subplots``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **share)
    for ax in axes.flat:
        ax.grid(True, color="#e6e6e6", linewidth=0.8)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        ax.tick_params(labelsize=8)
    return fig, axes


def step_axis(ax: Any) -> None:
    """Label the x axis "step" with integer ticks only: steps are whole numbers, and matplotlib's
    default locator puts ticks at 1.0, 1.5, 2.0 on a short run."""
    ax.set_xlabel("step", fontsize=8)
    ax.xaxis.get_major_locator().set_params(integer=True)


def to_uri(fig: Any) -> str:
    """The figure as a base64 PNG data URI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def series(rows: Rows, key: str) -> tuple[list[float], list[float]]:
    """``(steps, values)`` of the rows that have ``key``."""
    xs, ys = [], []
    for i, row in enumerate(rows):
        if key in row:
            xs.append(float(row.get("step", i + 1)))
            ys.append(float(row[key]))
    return xs, ys


__all__ = ["PALETTE", "Plot", "Rows", "new_figure", "series", "step_axis", "to_uri"]
