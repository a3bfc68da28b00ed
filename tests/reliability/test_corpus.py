"""Every row of the reliability corpus (``corpus.py``) through the real CLI.

In process (``cat_framework.cli.main``, as the console script calls it) for speed; one subprocess
run of ``python -m cat_framework validate`` over all file-only rows checks the real entry point.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cat_framework.cli import main
from tests.reliability.corpus import Case, all_cases

CASES = all_cases()
REPO = Path(__file__).resolve().parents[2]
#: the most output one bad input may produce (a message is read by a person)
MAX_OUTPUT = 20_000


def materialize(case: Case, root: Path) -> None:
    """Write the case's files and run its ``prepare`` step in ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for name, content in case.files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content, encoding="utf-8")
    if case.prepare is not None:
        case.prepare(root)


def assert_one_precise_message(case: Case, text: str, code: object, root: Path) -> None:
    assert len(text) < MAX_OUTPUT, f"{case.id}: {len(text):,} characters of output: {text[:2000]}"
    assert code not in (0, None), f"{case.id}: exit status {code!r}, output:\n{text}"
    if case.exit_code is not None:
        assert code == case.exit_code, f"{case.id}: exit status {code!r}, output:\n{text}"
    assert "Traceback" not in text, text
    assert "unexpected error" not in text, text
    for expected in case.expect:
        assert expected.format(tmp=root) in text, f"{case.id}: {expected!r} not in:\n{text}"


def assert_no_complete_run(root: Path) -> None:
    """A failed run may leave its config and log, never what only a finished run writes."""
    for name in ("metrics.json", "final"):
        found = [str(p) for p in root.rglob(name)]
        assert not found, f"a failed run left {found}"


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 40


@pytest.mark.timeout(120)  # a read that blocks (a FIFO) fails instead of hanging
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_one_precise_message(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CAT_DATA_DIR", str(tmp_path / "no-data"))
    monkeypatch.delenv("CAT_DEBUG", raising=False)
    work = tmp_path / "work"
    materialize(case, work)
    monkeypatch.chdir(work)
    argv = [a.format(tmp=work) for a in case.argv]
    with pytest.raises(SystemExit) as info:
        main(argv)
    out = capsys.readouterr()
    assert_one_precise_message(case, out.out + out.err, info.value.code, work)
    assert_no_complete_run(work)
    for name in case.absent:
        assert not (work / name).exists(), f"{case.id}: {name} was created"


def test_real_entry_point_on_every_file_case(tmp_path: Path) -> None:
    """One ``python -m cat_framework validate`` over every ``validate FILE`` row at once."""
    simple = [c for c in CASES if len(c.argv) == 2 and c.argv[0] == "validate"]
    files = []
    for case in simple:
        materialize(case, tmp_path / case.id)
        files.append(f"{case.id}/{case.argv[1]}")
    env = {**os.environ, "CAT_DATA_DIR": str(tmp_path / "no-data"), "OMP_NUM_THREADS": "1"}
    env.pop("CAT_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "cat_framework", "validate", *files],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text
    assert "Traceback" not in text and "unexpected error" not in text, text
    for case, file in zip(simple, files, strict=True):
        assert f"{file}: valid" not in text, f"{case.id} validated"
