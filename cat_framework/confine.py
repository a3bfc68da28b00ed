"""Nothing a run writes, appends to or deletes may lie outside its own directory.

A run directory can come from someone else (a shared drive, a downloaded experiment), and any
entry in it can be a symbolic link: ``checkpoints -> ~/models`` would make pruning delete there,
``final -> ~/paper`` would make the final save overwrite there, ``log.jsonl -> ~/.bashrc`` would
make logging append there. So the paths a run touches are refused when one of them, or a folder
on the way to one inside the run directory, is a link. (The run directory itself may be a link:
it is where the user chose to put the run.)
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from cat_framework.errors import CatError

#: the longest file or folder name most filesystems accept (ext4, XFS, APFS, NTFS), in bytes
MAX_NAME_BYTES = 255


class LinkInRunError(CatError):
    """A path a run would write or delete is a symbolic link (the message names it)."""


def _refuse(link: Path) -> LinkInRunError:
    try:
        target = os.readlink(link)
    except OSError:
        target = "?"
    return LinkInRunError(
        f"{link} is a symbolic link (to {target[:200]}): a run writes, appends to and deletes "
        "only files inside its own directory, never through a link. Replace the link with the "
        "real file or folder, or use another run directory."
    )


def inside_run(run_dir: str | os.PathLike[str], *parts: str) -> Path:
    """``run_dir / parts``, after checking that no step of it below ``run_dir`` is a link
    (:class:`LinkInRunError` names the first one)."""
    path = Path(run_dir)
    for part in Path(*parts).parts if parts else ():
        path = path / part
        if path.is_symlink():
            raise _refuse(path)
    return path


def refuse_links(run_dir: str | os.PathLike[str], names: Iterable[str]) -> None:
    """Refuse a link at any of ``names`` (a run's own files and folders) or anywhere inside those
    folders: checked once before a run starts writing, so no later write or delete of the run
    can leave the directory (the framework itself never creates links)."""
    for name in names:
        top = inside_run(run_dir, name)
        if not top.is_dir():
            continue
        for parent, folders, files in os.walk(top):  # never follows links: they are listed
            for entry in (*folders, *files):
                if os.path.islink(os.path.join(parent, entry)):
                    raise _refuse(Path(parent, entry))


__all__ = ["MAX_NAME_BYTES", "LinkInRunError", "inside_run", "refuse_links"]
