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
]
