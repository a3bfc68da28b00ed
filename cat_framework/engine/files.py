"""File writes a crash cannot half-do.

A run directory outlives crashes: ``kill -9``, an out-of-memory kill or a power cut can strike
in the middle of any write. Every rewrite of an existing file therefore goes to a temporary file
in the same directory, which is flushed to disk (fsync) and then renamed over the original
(``os.replace`` is atomic on POSIX and Windows); the directory is fsynced so the rename itself
survives a power cut. A reader sees the old file or the new one, never a mixture or nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from cat_framework.bounded import TooDeepError, loads_json
from cat_framework.errors import CatError


def fsync_dir(path: Path) -> None:
    """Make renames and deletions inside ``path`` durable (no-op where directories cannot be
    opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories: nothing more can be done
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush a file written by someone else's code (e.g. ``safetensors.save_file``) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(path: Path) -> Path:
    """The temporary sibling a rewrite of ``path`` goes through (hidden, named after its owner
    process so two writers never share one)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def remove_stale_temps(path: Path) -> None:
    """Delete temporaries of ``path`` left by a writer that was killed."""
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        stale.unlink(missing_ok=True)


@contextmanager
def atomic_output(path: Path) -> Iterator[IO[bytes]]:
    """A binary file that replaces ``path`` when the block ends without an exception; on an
    exception (or a kill) ``path`` keeps its old content."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        tmp.unlink(missing_ok=True)  # a leftover, or a planted link: never written through
        with open(tmp, "xb") as f:  # exclusive: created here, so not a link to elsewhere
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically."""
    with atomic_output(path) as f:
        f.write(text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Replace ``path`` with ``obj`` as indented JSON atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def append_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append rows as JSON lines (a crash can cut only the last line, which readers drop)."""
    with path.open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def rewrite_jsonl(path: Path, keep: Callable[[dict[str, Any]], bool]) -> int:
    """Keep the rows of a JSON-lines file for which ``keep(row)`` is true, atomically and without
    reading the whole file into memory; returns the number of rows kept.

    Appends are the only writes to these files, so a crash can cut only the *last* line: such a
    line is dropped silently. A malformed line anywhere else means the file was edited or
    damaged, and guessing would lose data: it is a :class:`CatError` naming file and line, and
    the file is left untouched. A ``CatError`` raised by ``keep`` gets the same location."""
    path = Path(path)
    if not path.exists():
        return 0
    remove_stale_temps(path)
    kept = 0
    cut: tuple[int, str] | None = None  # a malformed line: harmless only if nothing follows it
    with path.open("rb") as src, atomic_output(path) as dst:
        for lineno, raw in enumerate(src, 1):
            if not raw.strip():
                continue
            if cut is not None:
                raise _malformed(path, *cut)
            try:
                row = loads_json(raw)
            except TooDeepError as e:  # whole, so not cut by a crash: hostile wherever it is
                raise _malformed(path, lineno, f"not valid JSON ({e})") from None
            except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
                cut = (lineno, f"not valid JSON ({e})")
                continue
            if not isinstance(row, dict):
                raise _malformed(path, lineno, f"not a JSON object (a {type(row).__name__})")
            try:
                wanted = keep(row)
            except CatError as e:
                raise CatError(f"{path}:{lineno}: {e}") from None
            if wanted:
                dst.write(raw if raw.endswith(b"\n") else raw + b"\n")
                kept += 1
    return kept


def _malformed(path: Path, lineno: int, what: str) -> CatError:
    return CatError(
        f"{path}:{lineno}: {what}. Only the last line of this file can be cut by a crash, so this "
        "one was edited or damaged: repair or delete that line, then run again."
    )


__all__ = [
    "append_jsonl",
    "atomic_output",
    "atomic_write_json",
    "atomic_write_text",
    "fsync_dir",
    "fsync_file",
    "remove_stale_temps",
    "rewrite_jsonl",
]
