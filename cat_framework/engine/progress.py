"""The console progress bar of training runs (rich), quiet on non-main processes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SHOWN = ("reward/mean", "kl", "loss", "time/step")


class StepProgress:
    """A rich progress bar over optimizer steps showing a few live metrics."""

    def __init__(self, total: int, start: int = 0, *, enabled: bool = True) -> None:
        self.total, self.start, self.enabled = total, start, enabled
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> StepProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=Console(stderr=True),
                transient=False,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(
                "train", total=self.total, completed=self.start, info=""
            )
        return self

    def update(self, step: int, metrics: Mapping[str, float]) -> None:
        if self._progress is None:
            return
        info = "  ".join(f"{k}={metrics[k]:.3g}" for k in SHOWN if k in metrics)
        self._progress.update(self._task, completed=step, info=info)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
