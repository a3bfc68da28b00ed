"""``report``/``compare`` refuse a run whose own files no run could have written (random bytes,
nesting deeper than any run writes, records of a newer schema) with one message and a non-zero
exit, and still accept what runs do leave (a last line cut by a kill or a power cut); the
report library itself never fails on such files, it lists them as problems."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from cat_framework.cli import cli
from cat_framework.errors import CatError
from cat_framework.report import render_report
from cat_framework.report.integrity import check_run_files
from tests.report.fixture_runs import make_train_run

RANDOM = random.Random(5).randbytes(2048)
DEEP = '{"step": 1, "x": ' + "[" * 3000 + "]" * 3000 + "}"


@pytest.fixture
def run(tmp_path) -> Path:
    return make_train_run(tmp_path / "run")


def test_what_runs_leave_is_accepted(run):
    check_run_files(run)  # the fixture's metrics.jsonl ends with a line cut by a crash
    with (run / "log.jsonl").open("ab") as f:
        f.write(b"\x00" * 512)  # a power cut: the file's last block zero-filled
    with (run / "records.jsonl").open("a") as f:
        f.write('{"schema": 1, "mode": "tr')
    check_run_files(run)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("config.yaml", RANDOM, r"config\.yaml:\d+: binary data"),
        ("config.yaml", b"a: " + b"[" * 3000 + b"]" * 3000, r"config\.yaml: nested deeper"),
        ("log.jsonl", RANDOM, r"log\.jsonl:1: not a JSON object"),
        ("log.jsonl", b'{"event": "x"}\n[1, 2]\n{"event": "y"}\n', r"log\.jsonl:2: not a JSON"),
        ("metrics.jsonl", DEEP.encode() + b"\n", r"metrics\.jsonl:1: .*nested deeper than 64"),
        ("metrics.jsonl", b'{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n', r"metrics\.jsonl:2:"),
        ("records.jsonl", RANDOM, r"records\.jsonl:1: not a JSON object"),
        (
            "records.jsonl",
            json.dumps({"details": {"schema": 7}, "schema2": 0, "schema": 1}).encode()
            + b"\n"
            + json.dumps({"details": {"schema": 1}, "schema": 99}).encode(),
            r"records\.jsonl:2: record schema 99 is newer",
        ),
    ],
    ids=[
        "config-random",
        "config-deep",
        "log-random",
        "log-list-line",
        "metrics-deep-last-line",
        "metrics-cut-mid-file",
        "records-random",
        "records-newer-schema",
    ],
)
def test_damaged_run_files_are_refused_with_file_and_line(run, name, content, message):
    (run / name).write_bytes(content)
    with pytest.raises(CatError, match=message) as err:
        check_run_files(run)
    assert len(str(err.value)) < 1000
    result = CliRunner().invoke(cli, ["report", str(run)])
    assert result.exit_code != 0 and not (run / "report.html").exists()
    assert isinstance(result.exception, CatError)


@pytest.mark.timeout(60)
def test_the_report_library_lists_hostile_files_as_problems(run):
    """``write_report`` at the end of a run must not fail on what the run dir holds."""
    (run / "config.yaml").write_text("a: " + "[" * 3000 + "]" * 3000 + "\n")
    (run / "metrics.jsonl").write_text(DEEP + "\n" + '{"step": 2}\n')
    (run / "log.jsonl").write_text(DEEP + "\n")
    (run / "status.json").write_text(DEEP)
    page = render_report(run)
    assert "config.yaml:" in page and "nested deeper than 64" in page
    assert "metrics.jsonl: 1 line(s) skipped" in page and "log.jsonl: 1 line(s)" in page
    assert "status.json: not valid JSON" in page
