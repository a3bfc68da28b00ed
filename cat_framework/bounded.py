"""Reading files that may be hostile, within bounds.

Pipelines and run directories come from users and from other people's runs, so a read must cost
at most what a real file would: a device (``/dev/zero``) reports a size of 0 and never ends, a
FIFO blocks the reader until someone writes to it, and JSON nested thousands of levels deep makes
Python's parser (and every recursive walk after it) raise a bare ``RecursionError``.
:func:`read_capped` therefore refuses anything but a regular file before reading from it and
counts the bytes it reads instead of trusting ``st_size``; :func:`loads_json` turns too deep a
nesting into a :class:`ValueError`, which every reader of run files already reports as a bad line
or a bad file.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from typing import Any

#: the deepest nesting of lists and objects a run file may hold (they nest fewer than 10 levels)
MAX_JSON_DEPTH = 64

_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a device"),
    (stat.S_ISBLK, "a device"),
    (stat.S_ISSOCK, "a socket"),
)


class NotRegularFileError(OSError):
    """A FIFO, device or socket where a file was expected (``kind`` names which)."""

    def __init__(self, path: str | os.PathLike[str], kind: str) -> None:
        super().__init__(errno.EINVAL, f"{kind}, not a regular file", str(path))
        self.kind = kind


class FileTooLargeError(OSError):
    """A file holding more than the bytes allowed (the count read, not ``st_size``)."""

    def __init__(self, path: str | os.PathLike[str], limit: int) -> None:
        super().__init__(errno.EFBIG, f"larger than {limit:,} bytes", str(path))
        self.limit = limit


def _refuse_special(path: str | os.PathLike[str], mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
    for test, kind in _KINDS:
        if test(mode):
            raise NotRegularFileError(path, kind)


def read_capped(path: str | os.PathLike[str], limit: int) -> bytes:
    """The bytes of the regular file ``path``, refusing (before reading anything) a directory,
    FIFO, device or socket, and a file longer than ``limit`` bytes (:class:`FileTooLargeError`,
    counted while reading: ``/proc`` files and devices report a size of 0, files grow)."""
    _refuse_special(path, os.stat(path).st_mode)  # before opening: opening a device can act
    # non-blocking, so a FIFO swapped in since the stat cannot block the open
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        _refuse_special(path, os.fstat(fd).st_mode)
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(2**20, limit + 1 - total))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise FileTooLargeError(path, limit)
    finally:
        os.close(fd)


def read_text_capped(path: str | os.PathLike[str], limit: int) -> str:
    """:func:`read_capped` decoded as UTF-8 (:class:`UnicodeDecodeError` otherwise)."""
    return read_capped(path, limit).decode("utf-8")


class TooDeepError(ValueError):
    """JSON nested deeper than allowed: whole, not cut by a crash, yet no run file."""


def too_deep(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether lists and dicts nest deeper than ``limit`` levels in ``value`` (no recursion)."""
    stack = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def loads_json(data: str | bytes, limit: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads``, with nesting deeper than ``limit`` a :class:`ValueError` (as malformed
    JSON is; :class:`TooDeepError`) instead of a ``RecursionError`` here or in whatever walks the
    value later."""
    try:
        value = json.loads(data)
    except RecursionError:
        raise TooDeepError(f"nested deeper than {limit} levels") from None
    if too_deep(value, limit):
        raise TooDeepError(f"nested deeper than {limit} levels")
    return value


__all__ = [
    "MAX_JSON_DEPTH",
    "FileTooLargeError",
    "NotRegularFileError",
    "TooDeepError",
    "loads_json",
    "read_capped",
    "read_text_capped",
    "too_deep",
]
