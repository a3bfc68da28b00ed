"""Where the framework looks for local data files (datasets' default ``path``)."""

from __future__ import annotations

import os
from pathlib import Path

#: environment variable that names the data folder explicitly
DATA_DIR_ENV = "CAT_DATA_DIR"


def repo_root() -> Path:
    """The checkout holding the ``cat_framework`` package (its parent's parent)."""
    return Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """The data folder, chosen in this order:

    1. ``$CAT_DATA_DIR`` when set (returned even if missing, so errors name the folder you chose);
    2. the first existing of ``./data`` and ``../shared/data``, relative to the working directory;
    3. ``../shared/data`` relative to the repository root (the project's shared data next to the
       checkout); returned even if missing, for the same reason.

    Datasets resolve their default files under it, e.g. ``data_dir() / "math500" / "test.jsonl"``.
    """
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser().resolve()
    cwd = Path.cwd()
    for candidate in (cwd / "data", cwd / ".." / "shared" / "data"):
        if candidate.is_dir():
            return candidate.resolve()
    return (repo_root().parent / "shared" / "data").resolve()


__all__ = ["DATA_DIR_ENV", "data_dir", "repo_root"]
