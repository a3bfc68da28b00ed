"""Where the framework looks for data files and keeps what it downloads.

Nothing here depends on the folder the framework was developed in: a ``pip install`` has only the
package, the user's working directory, the variables below and the cache folder.
"""

from __future__ import annotations

import os
from pathlib import Path

#: environment variable naming a folder of data files that override the built-in/fetched ones
DATA_DIR_ENV = "CAT_DATA_DIR"
#: environment variable naming the cache folder (models, downloaded data sets)
CACHE_DIR_ENV = "CAT_CACHE_DIR"


def repo_root() -> Path:
    """The folder holding the ``cat_framework`` package (a checkout, or site-packages)."""
    return Path(__file__).resolve().parent.parent


def data_dir() -> Path | None:
    """``$CAT_DATA_DIR`` when set (resolved, even if missing, so messages name the folder you
    chose), else None.

    A file there, at a dataset's relative name (e.g. ``gsm8k/train.jsonl``), replaces the copy
    shipped in the package or fetched into the cache: the way to pin your own copies.
    """
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser().resolve() if env else None


def cache_dir() -> Path:
    """``$CAT_CACHE_DIR``, else ``$XDG_CACHE_HOME/cat-framework``, else
    ``~/.cache/cat-framework``; not created here."""
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "cat-framework"


__all__ = ["CACHE_DIR_ENV", "DATA_DIR_ENV", "cache_dir", "data_dir", "repo_root"]
