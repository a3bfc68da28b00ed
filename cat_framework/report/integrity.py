"""A run's own files, checked before ``report`` or ``compare`` shows them.

The report tolerates what runs leave behind (a missing file, a last line cut by a kill) and says
so on the page. A file no run could have written is another matter: random bytes in
``config.yaml``, a log line that is not JSON, a line nested deeper than anything a run writes, a
record of a newer schema. A page built from such a directory would mislead (or, for a newer
schema, misread it), so the commands refuse it with one message naming the file and line, and
exit non-zero. ``records.jsonl`` can be gigabytes: its lines are only checked for their first
byte and their schema version, not parsed.
"""

from __future__ import annotations

import re
from pathlib import Path

from cat_framework.bounded import TooDeepError, loads_json
from cat_framework.errors import CatError
from cat_framework.records import check_schema
from cat_framework.rundir import parse_run_config

#: the JSON-lines files a report parses whole
PARSED = ("log.jsonl", "metrics.jsonl")
#: a ``"schema": N`` key (the record's own is its last: records are written field by field)
_SCHEMA = re.compile(rb'(?<!\\)"schema"\s*:\s*(-?\d+)')


def check_run_files(run_dir: Path) -> None:
    """Refuse (:class:`CatError`) a run directory whose own files are damaged or too new."""
    if (run_dir / "config.yaml").exists():
        parse_run_config(run_dir / "config.yaml")
    for name in PARSED:
        _check_lines(run_dir / name, parse=True)
    _check_lines(run_dir / "records.jsonl", parse=False)


def _damaged(path: Path, lineno: int, what: str) -> CatError:
    return CatError(
        f"{path}:{lineno}: {what}; a run writes one JSON object per line, so this file is "
        "damaged or was edited: repair or delete that line (only a last line cut by a crash "
        "is expected)"
    )


def _looks_cut(raw: bytes) -> bool:
    """A last line a kill (or a power cut: zero-filled blocks) can leave: a JSON object's start."""
    text = raw.strip().strip(b"\x00")
    return not text or text.startswith(b"{")


def _check_lines(path: Path, parse: bool) -> None:
    """Every line a JSON object (``parse``) or at least starting like one; records of a schema
    newer than this release refused. A bad last line that a crash explains is tolerated."""
    if not path.exists():
        return
    if not path.is_file():
        raise CatError(f"{path} is not a regular file (a FIFO or device?): a run writes files")
    cut: tuple[int, str] | None = None  # a bad line, harmless only if it is the last
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            if cut is not None:
                raise _damaged(path, *cut)
            what, crash_explains = _problem(raw, parse)
            if what is None and not parse:
                found = [m.group(1) for m in _SCHEMA.finditer(raw)]
                if found:
                    check_schema({"schema": int(found[-1])}, f"{path}:{lineno}")
            elif what is not None and crash_explains:
                cut = (lineno, what)
            elif what is not None:
                raise _damaged(path, lineno, what)


def _problem(raw: bytes, parse: bool) -> tuple[str | None, bool]:
    """What is wrong with a line (None: nothing), and whether a crash explains it (a cut)."""
    if not parse:
        if raw.lstrip().startswith(b"{"):
            return None, False
        return "not a JSON object", _looks_cut(raw)
    try:
        row = loads_json(raw)
    except TooDeepError as e:  # whole, so not cut
        return f"not a JSON object ({e})", False
    except ValueError as e:
        return f"not a JSON object ({e})", _looks_cut(raw)
    return (None, False) if isinstance(row, dict) else ("not a JSON object", False)


__all__ = ["check_run_files"]
