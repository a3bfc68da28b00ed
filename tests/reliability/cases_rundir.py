"""Bad run directories: ``--resume`` into what is not a run, or with a changed pipeline; a fresh
run into a used folder; damaged records; ``report`` on what is not a run; a template error that
must surface at ``validate``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from cat_framework.pipeline import load_pipeline
from cat_framework.rundir import redact
from tests.reliability.corpus import GOOD_DATA, Case, pipeline

RECORD = {
    "schema": 1,
    "mode": "evaluate",
    "step": 0,
    "prompt_id": "0",
    "messages": [{"role": "user", "content": "What is 2+2?"}],
    "rollouts": [],
    "references": {"single": {"text": "4", "method": "single", "answer": "4"}},
}


def _files() -> dict[str, str]:
    return {"p.yaml": pipeline(), "data.jsonl": GOOD_DATA}


def _run_dir(records: str = "", pipeline_file: str = "p.yaml"):
    """A prepared run of ``p.yaml`` in ``work/r``: its resolved config, a log, ``records``."""

    def prepare(work: Path) -> None:
        run = work / "r"
        run.mkdir()
        here = Path.cwd()
        os.chdir(work)  # the pipeline's relative paths are resolved as the CLI will
        try:
            config = redact(load_pipeline(work / pipeline_file).resolved())
        finally:
            os.chdir(here)
        (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        (run / "log.jsonl").write_text('{"event": "run start"}\n')
        (run / "records.jsonl").write_text(records)

    return prepare


def _photos(work: Path) -> None:
    (work / "photos").mkdir()
    (work / "photos" / "cat.jpg").write_bytes(b"\xff\xd8\xff")


def _audit_folder(work: Path) -> None:
    """The audit's folder: a config.yaml (of anything) beside a user's own files, and no run
    (its ``final/paper.tex`` is in ``tests/engine/test_run_confinement.py``: the corpus owes no
    ``final`` anywhere)."""
    mine = work / "mine"
    (mine / "checkpoints").mkdir(parents=True)
    (mine / "config.yaml").write_text("name: my experiment\n")
    (mine / "checkpoints" / "precious.ckpt").write_bytes(b"weights")


def _with_link(name: str):
    """A prepared run whose ``name`` is a symbolic link to a file or folder outside it."""

    def prepare(work: Path) -> None:
        _run_dir()(work)
        outside = work / "elsewhere"
        outside.mkdir()
        target = outside / f"my-{name}"
        if "." in name:
            target.write_text("a user's file\n")
        else:
            target.mkdir()
        (work / "r" / name).unlink(missing_ok=True)
        (work / "r" / name).symlink_to(target)

    return prepare


def _then_fifo(name: str):
    """A prepared run, and a FIFO at ``name`` where a page is asked to be written."""

    def prepare(work: Path) -> None:
        _run_dir()(work)
        os.mkfifo(work / name)

    return prepare


GOOD = json.dumps(RECORD)
CASES = [
    Case(
        "resume-not-a-run",
        argv=("run", "p.yaml", "--resume", "photos"),
        expect=("--resume photos", "not a run directory"),
        files=_files(),
        prepare=_photos,
    ),
    Case(
        "resume-missing-dir",
        argv=("run", "p.yaml", "--resume", "nope"),
        expect=("--resume nope", "no such run directory"),
        files=_files(),
        absent=("nope",),
    ),
    Case(
        "resume-changed-seed-and-temperature",
        argv=("run", "p.yaml", "--resume", "r", "--set", "seed=5"),
        expect=("--resume r", "seed: 0 -> 5", "Resume with the run's own settings"),
        files=_files(),
        prepare=_run_dir(),
    ),
    Case(
        "fresh-run-into-a-run",
        argv=("run", "p.yaml", "--run-dir", "r"),
        expect=("already holds a run", "--resume r", "--overwrite"),
        files=_files(),
        prepare=_run_dir(),
    ),
    Case(
        "fresh-run-into-a-foreign-folder",
        argv=("run", "p.yaml", "--run-dir", "photos", "--overwrite"),
        expect=("photos is not empty and holds no run",),
        files=_files(),
        prepare=_photos,
    ),
    Case(
        "resume-with-run-dir",
        argv=("run", "p.yaml", "--resume", "r", "--run-dir", "x"),
        expect=("--resume continues a run in place",),
        files=_files(),
        prepare=_run_dir(),
    ),
    Case(
        "resume-malformed-record",
        argv=("run", "p.yaml", "--resume", "r"),
        expect=("records.jsonl:2:", "not a valid JSON record", "fix or delete that line"),
        files=_files(),
        prepare=_run_dir(f"{GOOD}\n{{oops\n{GOOD}\n"),
    ),
    Case(
        "resume-record-from-a-newer-schema",
        argv=("run", "p.yaml", "--resume", "r"),
        expect=("records.jsonl:1:", "schema 99 is newer"),
        files=_files(),
        prepare=_run_dir(json.dumps({**RECORD, "schema": 99}) + "\n"),
    ),
    Case(
        "resume-record-without-schema",
        argv=("run", "p.yaml", "--resume", "r"),
        expect=("records.jsonl:1:", "no record schema version"),
        files=_files(),
        prepare=_run_dir(json.dumps({"prompt_id": "0"}) + "\n"),
    ),
    Case(
        "report-on-a-folder-that-is-not-a-run",
        argv=("report", "photos"),
        expect=("photos",),
        files={},
        prepare=_photos,
        absent=("photos/report.html",),
    ),
    Case(
        "rubric-judge-template-unknown-placeholder",
        argv=("validate", "p.yaml"),
        expect=("p.yaml:8:", "reward:", "judge_template 'j.txt' uses $question"),
        files={
            "p.yaml": (
                "name: rel\nmode: train\nmodels:\n  policy: {model: cat-tests/never-loaded}\n"
                "data:\n  train: {dataset: jsonl, path: data.jsonl, task: freeform}\n"
                "aggregator: synthesis\nreward: {name: rubric, judge_template: j.txt}\n"
            ),
            "data.jsonl": GOOD_DATA,
            "j.txt": "Q: $question\n$response\n$criterion\n",
        },
        exit_code=2,
    ),
    Case(
        "fresh-run-into-a-folder-with-only-a-config",
        argv=("run", "p.yaml", "--run-dir", "mine"),
        expect=("mine is not empty and holds no run", "no run.json"),
        files=_files(),
        prepare=_audit_folder,
    ),
    Case(
        "overwrite-a-folder-with-only-a-config",
        argv=("run", "p.yaml", "--run-dir", "mine", "--overwrite"),
        expect=("mine is not empty and holds no run", "never writes into (or deletes from)"),
        files=_files(),
        prepare=_audit_folder,
    ),
    Case(
        "resume-through-a-symlinked-checkpoints-folder",
        argv=("run", "p.yaml", "--resume", "r"),
        expect=("r/checkpoints is a symbolic link", "{tmp}/elsewhere/my-checkpoints"),
        files=_files(),
        prepare=_with_link("checkpoints"),
    ),
    Case(
        "resume-through-a-symlinked-log",
        argv=("run", "p.yaml", "--resume", "r"),
        expect=("r/log.jsonl is a symbolic link", "never through a link"),
        files=_files(),
        prepare=_with_link("log.jsonl"),
    ),
    Case(
        "overwrite-a-run-with-a-symlinked-tensorboard-folder",
        argv=("run", "p.yaml", "--run-dir", "r", "--overwrite"),
        expect=("r/tensorboard is a symbolic link", "never through a link"),
        files=_files(),
        prepare=_with_link("tensorboard"),
    ),
    Case(
        "report-output-onto-a-fifo",
        argv=("report", "r", "-o", "pipe"),
        expect=("pipe is a named pipe (FIFO), not a regular file", "-o/--output"),
        files=_files(),
        prepare=_then_fifo("pipe"),
    ),
    Case(
        "compare-output-onto-a-fifo",
        argv=("compare", "r", "-o", "pipe"),
        expect=("pipe is a named pipe (FIFO), not a regular file", "-o/--output"),
        files=_files(),
        prepare=_then_fifo("pipe"),
    ),
    Case(
        "run-name-longer-than-a-folder-name",
        argv=("validate", "p.yaml"),
        expect=("run_name", "300 bytes", "at most 255"),
        files={
            "p.yaml": pipeline().replace("{dir: runs}", "{dir: runs, run_name: " + "a" * 300 + "}"),
            "data.jsonl": GOOD_DATA,
        },
        exit_code=2,
    ),
    Case(
        "run-dir-name-longer-than-a-folder-name",
        argv=("run", "p.yaml", "--run-dir", "b" * 300),
        expect=("folder name bbbb", "300 bytes long", "at most 255"),
        files=_files(),
    ),
]
