"""Inputs that cost without bound unless bounded: include fan-out, devices and FIFOs read as
files, documents with too many values; hostile run files (nested deeper than any run writes,
alias bombs appended to a run's ``config.yaml``, random bytes, records of a newer schema) met by
``run --resume``, ``report`` and ``compare``."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from tests.reliability.cases_rundir import RECORD, _files, _run_dir
from tests.reliability.corpus import Case, pipeline, validate

#: eight files, each including the next ten times: 10^8 includes without a bound on the total
FAN_OUT = {
    f"f{i}.yaml": "include: [" + ", ".join([f"f{i + 1}.yaml"] * 10) + "]\n" for i in range(8)
}
#: nested 2,000 levels deep, as JSON and as YAML
DEEP_JSON = '{"step": 1, "x": ' + "[" * 2000 + "]" * 2000 + "}"
#: an alias bomb small enough to print (531,441 values), appended to a run's config.yaml
SMALL_BOMB = "\n".join(
    ["zz0: &zz0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"zz{i}: &zz{i} [{', '.join([f'*zz{i - 1}'] * 9)}]" for i in range(1, 6)]
)
RANDOM = random.Random(23).randbytes(4096)


def _fifo(name: str):
    def prepare(work: Path) -> None:
        os.mkfifo(work / name)

    return prepare


def _then(first, edit):
    """``first`` (a prepare step), then ``edit(run_dir)`` on the prepared run ``work/r``."""

    def prepare(work: Path) -> None:
        first(work)
        edit(work / "r")

    return prepare


def _append_config(text: str):
    def edit(run: Path) -> None:
        with (run / "config.yaml").open("a", encoding="utf-8") as f:
            f.write(text)

    return edit


def _write(name: str, content: bytes):
    def edit(run: Path) -> None:
        (run / name).write_bytes(content)

    return edit


def _second_run(work: Path) -> None:
    _run_dir()(work)
    (work / "r").rename(work / "r2")
    _run_dir()(work)
    (work / "r" / "config.yaml").write_bytes(RANDOM)


PIPELINE_CASES = [
    Case(
        "include-fan-out",
        **validate(
            "include: f0.yaml\n",
            "p.yaml",
            "more than 64 included files",
            files={**FAN_OUT, "f8.yaml": pipeline()},
        ),
    ),
    Case(
        "validate-dev-zero",
        argv=("validate", "/dev/zero"),
        expect=("/dev/zero", "a device, not a regular file"),
        exit_code=2,
    ),
    Case("include-dev-zero", **validate("include: /dev/zero\n", "/dev/zero", "a device")),
    Case(
        "validate-fifo",
        argv=("validate", "p.yaml"),
        expect=("p.yaml", "a named pipe (FIFO), not a regular file"),
        prepare=_fifo("p.yaml"),
        exit_code=2,
    ),
    Case(
        "include-fifo",
        **validate("include: pipe.yaml\n", "pipe.yaml", "a named pipe (FIFO)"),
        prepare=_fifo("pipe.yaml"),
    ),
    Case(
        "sixty-thousand-keys-without-aliases",
        **validate(
            "".join(f"k{i}: {i}\n" for i in range(60_000)),
            "p.yaml:",
            "holds more than 100,000 values",
            "is this the right file?",
        ),
    ),
]

RUN_FILE_CASES = [
    Case(
        "resume-config-alias-bomb",
        argv=("run", "p.yaml", "--resume", "r"),
        expect=("--resume r", "config.yaml:", "alias bomb", "restore it"),
        files=_files(),
        prepare=_then(_run_dir(), _append_config(SMALL_BOMB + "\n")),
    ),
    Case(
        "resume-config-nested-deep",
        argv=("run", "p.yaml", "--resume", "r"),
        expect=("--resume r", "config.yaml:", "nested deeper than 64"),
        files=_files(),
        prepare=_then(_run_dir(), _append_config("zz: " + "[" * 2000 + "]" * 2000 + "\n")),
    ),
    Case(
        "report-config-random-bytes",
        argv=("report", "r"),
        expect=("config.yaml:", "binary data", "damaged"),
        files=_files(),
        prepare=_then(_run_dir(), _write("config.yaml", RANDOM)),
        absent=("r/report.html",),
    ),
    Case(
        "report-log-random-bytes",
        argv=("report", "r"),
        expect=("log.jsonl:1:", "not a JSON object", "damaged"),
        files=_files(),
        prepare=_then(_run_dir(), _write("log.jsonl", RANDOM)),
        absent=("r/report.html",),
    ),
    Case(
        "compare-config-random-bytes",
        argv=("compare", "r2", "r"),
        expect=("config.yaml:", "binary data", "damaged"),
        files=_files(),
        prepare=_second_run,
        absent=("compare.html",),
    ),
    Case(
        "report-metrics-nested-deep",
        argv=("report", "r"),
        expect=("metrics.jsonl:1:", "nested deeper than 64"),
        files=_files(),
        prepare=_then(_run_dir(), _write("metrics.jsonl", DEEP_JSON.encode() + b"\n{}\n")),
        absent=("r/report.html",),
    ),
    Case(
        "report-record-from-a-newer-schema",
        argv=("report", "r"),
        expect=("records.jsonl:2:", "record schema 99 is newer"),
        files=_files(),
        prepare=_run_dir(json.dumps(RECORD) + "\n" + json.dumps({**RECORD, "schema": 99}) + "\n"),
        absent=("r/report.html",),
    ),
]

CASES = PIPELINE_CASES + RUN_FILE_CASES
