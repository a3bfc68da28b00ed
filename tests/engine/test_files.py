"""Atomic rewrites of run files: a kill during a rewrite never loses the original; malformed
lines are reported with file:line, except a last line cut by a crash."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cat_framework.engine.checkpoint import truncate_jsonl
from cat_framework.engine.files import atomic_write_json, atomic_write_text, rewrite_jsonl
from cat_framework.errors import CatError


def write_rows(path: Path, steps: range, tail: str = "") -> bytes:
    data = "".join(json.dumps({"step": s, "text": f"row {s} " + "x" * 90}) + "\n" for s in steps)
    path.write_text(data + tail, encoding="utf-8")
    return path.read_bytes()


def steps_in(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def temps(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f".{path.name}.tmp-*"))


def test_truncate_keeps_checkpointed_steps_and_drops_a_cut_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_rows(path, range(5), tail='{"step": 5, "te')
    truncate_jsonl(path, 2)
    assert steps_in(path) == [0, 1, 2] and temps(path) == []
    truncate_jsonl(path, -1)  # no checkpoint: even the step-0 evaluation is redone
    assert path.read_text() == ""


def test_rewrite_keeps_lines_byte_for_byte_and_ends_them(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_bytes(b'{"step": 1, "t": "caf\\u00e9 \xc3\xa9"}\n\n{"step": 2}')  # no final newline
    assert rewrite_jsonl(path, lambda row: True) == 2
    assert path.read_bytes() == b'{"step": 1, "t": "caf\\u00e9 \xc3\xa9"}\n{"step": 2}\n'


@pytest.mark.parametrize(
    ("bad", "what"),
    [('{"step": 3, "te\n', "not valid JSON"), ("[1, 2]\n", "not a JSON object")],
)
def test_a_malformed_middle_line_is_an_error_naming_file_and_line(tmp_path, bad, what):
    path = tmp_path / "records.jsonl"
    rows = "".join(json.dumps({"step": s}) + "\n" for s in range(4))
    path.write_text(rows[: rows.index('{"step": 2')] + bad + rows[rows.index('{"step": 2') :])
    before = path.read_bytes()
    with pytest.raises(CatError, match=rf"records\.jsonl:3: {what}.*delete that line"):
        truncate_jsonl(path, 1)
    assert path.read_bytes() == before and temps(path) == []


def test_a_bad_step_value_is_reported_with_its_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": "two"}\n')
    with pytest.raises(CatError, match=r"metrics\.jsonl:2: 'step' is 'two', not an integer"):
        truncate_jsonl(path, 1)


def test_atomic_writes_replace_the_whole_file(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old and much longer content")
    atomic_write_json(path, {"step": 3, "name": "é"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"step": 3, "name": "é"}
    atomic_write_text(path, "short")
    assert path.read_text() == "short" and temps(path) == []


CHILD = textwrap.dedent("""\
    import resource, signal, sys
    from pathlib import Path
    from cat_framework.engine.checkpoint import truncate_jsonl
    from cat_framework.engine.files import atomic_write_text

    op, path, limit = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it; the kernel's kill is wanted
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # from here on, a write that makes any file bigger than `limit` bytes kills this process
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    if op == "truncate":
        truncate_jsonl(path, 3000)
    else:
        atomic_write_text(path, "y" * (4 * limit))
    print("finished")
    """)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX resource limits")
@pytest.mark.parametrize("op", ["truncate", "write"])
def test_a_process_killed_mid_rewrite_leaves_the_original_intact(tmp_path, op):
    path = tmp_path / "records.jsonl"
    original = write_rows(path, range(6000))  # ~0.6 MB; the rewrite keeps half
    limit = 64 * 1024  # the kernel kills the child once it has written 64 KiB of the new file
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, op, str(path), str(limit)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == -signal.SIGXFSZ, proc.stderr[-2000:]
    assert "finished" not in proc.stdout
    assert path.read_bytes() == original
    (partial,) = temps(path)  # the kill hit inside the window: a partly written temp file
    assert 0 < partial.stat().st_size <= limit
    truncate_jsonl(path, 2999)  # the next rewrite works and removes the stale temp
    assert steps_in(path) == list(range(3000)) and temps(path) == []
