"""What a run directory is, defined once for ``report``, ``run --resume`` and fresh-run checks."""

from __future__ import annotations

import os
from pathlib import Path

#: every run writes ``config.yaml`` first, then at least one of these
RUN_OUTPUTS: tuple[str, ...] = ("log.jsonl", "records.jsonl", "metrics.json", "metrics.jsonl")


def is_run_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a run: ``config.yaml`` plus at least one of :data:`RUN_OUTPUTS`.

    A directory with only a config is a run that never started; one without a config is not a
    run at all (a typo'd path, a parent ``runs/`` folder, a checkpoint folder).
    """
    root = Path(path)
    if not (root / "config.yaml").is_file():
        return False
    return any((root / name).is_file() for name in RUN_OUTPUTS)


__all__ = ["RUN_OUTPUTS", "is_run_dir"]
