"""The HTML run report: content, escaping, disagreement marks, robustness, and headless Chromium.

Evaluate reports come from a real ``run_pipeline`` run with the scripted echo backend; training
reports from a synthetic run directory whose records the engine's ``build_record`` made (so these
tests do not wait for the trainer); both are made in ``fixture_runs.py``. Set ``CAT_REPORT_ARTIFACTS=<dir>`` to keep
the rendered pages and Chromium screenshots for a look.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from cat_framework.records import RunRecord, read_records
from cat_framework.report import render_report, write_report
from cat_framework.report.load import MAX_NAMED_BAD_RECORDS, load_run
from cat_framework.report.samples import prompt_block
from cat_framework.report.views import prompt_view
from cat_framework.types import Criterion
from cat_plugins.rewards.judging import JudgeAnswer, verdict_record
from tests.report.fixture_runs import RUBRIC, make_eval_run, make_train_run, train_records

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory) -> Path:
    return make_eval_run(tmp_path_factory.mktemp("eval"))


@pytest.fixture
def train_run(tmp_path) -> Path:
    return make_train_run(tmp_path / "train-run")


def _keep(path: Path, name: str) -> None:
    out = os.environ.get("CAT_REPORT_ARTIFACTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(out) / name)


# ------------------------------------------------------------------------------ content


def test_evaluate_report_has_sections_table_plots_and_prompts(eval_run):
    path = write_report(eval_run)
    assert path == eval_run / "report.html"
    _keep(path, "evaluate-report.html")
    page = path.read_text()
    for sid in ("evaluation", "plots", "samples", "log", "config", "files"):
        assert f'<section id="{sid}">' in page
    assert '<table class="scores matrix">' in page
    for label in ("single", "majority", "minppl", "synthesis"):
        assert f"<td>{label}</td>" in page
    assert "95% CI" in page  # the pipeline's default confidence
    assert page.count('src="data:image/png;base64,') >= 3  # scores, correct/prompt, lengths
    assert page.count('<details class="prompt"') == 3
    assert "status" in page and "completed" in page
    assert "name: toy-eval" in page  # the config, verbatim


def test_model_text_is_escaped_and_page_is_self_contained(eval_run, train_run):
    for run in (eval_run, train_run):
        page = render_report(run)
        assert "<script" not in page
        assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in page
        assert "<link" not in page and 'src="http' not in page and "url(" not in page
    assert "&lt;b&gt;bold?&lt;/b&gt;" in render_report(eval_run)  # prompt text too


def test_disagreeing_rollouts_are_highlighted(eval_run):
    records = read_records(eval_run / "records.jsonl")
    view = prompt_view(records[2])  # gold 5/2; rollouts 4, 4, 2.5; synthesis answers 4
    assert [r.disagrees for r in view.rollouts] == [False, False, True]
    assert [r.correct for r in view.rollouts] == [False, False, True]
    assert view.references[0].label == "single" and view.primary.label == "synthesis"
    page = render_report(eval_run)
    assert page.count('class="rollout disagree') == 3  # the "2.5" rollout of every prompt
    assert page.count('class="rollout wrong"') == 4  # "4" is wrong for b and c, agreeing with s
    assert "answer differs from reference" in page


def test_train_report_plots_rubric_verdicts_and_eval_table(train_run):
    page = render_report(train_run)
    for title in (
        "Reward",
        "KL to the reference",
        "Completion lengths",
        "Held-out evaluation",
        "Teacher diagnostics",
        "Step time",
        "Other metrics",
    ):
        assert f"<b>{title}</b>" in page
    assert page.count('src="data:image/png;base64,') == 7
    assert "Latest evaluation, at step 12" in page and "<td>synthesis</td>" in page
    assert '<table class="rubric">' in page
    for cls in ("met-yes", "met-no", "met-none"):
        assert f'class="{cls}"' in page
    assert "advantage +" in page and "advantage -" in page
    assert "reward below group best" in page
    assert "1 checkpoint(s): step-000008" in page
    assert "metrics.jsonl: 1 line(s) skipped" in page  # the cut line is reported, not fatal
    assert "rubric fallback" in page  # a warning from the log


def test_best_weights_are_not_counted_as_checkpoints(tmp_path):
    """CaT-SFT keeps its lowest-validation-loss weights beside the checkpoints: they are named
    as what they are, not counted as a checkpoint to resume from."""
    run = make_train_run(tmp_path / "run")
    best = run / "checkpoints" / "best-000003"
    best.mkdir(parents=True)
    (best / "trainable.safetensors").write_bytes(b"x")
    page = render_report(run)
    assert "1 checkpoint(s): step-000008" in page
    assert "best weights (lowest validation loss): best-000003" in page


def test_train_records_are_sampled_across_steps(train_run):
    run = load_run(train_run, max_prompts=6, max_steps=3)
    assert run.n_records == 24 and run.record_steps == list(range(1, 13))
    steps = [r.step for r in run.records]
    assert len(run.records) == 6 and steps[0] == 1 and steps[-1] == 12 and len(set(steps)) == 3


def test_view_rubric_verdicts_and_advantages(train_run):
    view = prompt_view(read_records(train_run / "records.jsonl")[0])
    assert [c for c, _ in view.rubric] == RUBRIC
    assert [v.met for v in view.rollouts[1].verdicts] == [True, False, True, None, True]
    assert view.rollouts[0].reward == 1.0 and view.rollouts[2].reward == 0.0
    assert view.rollouts[0].advantage > 0 > view.rollouts[2].advantage
    assert [r.disagrees for r in view.rollouts] == [False, True, True, True]


def test_lines_that_are_not_run_records_are_skipped_with_file_and_line(tmp_path):
    """The report reads records only as ``RunRecord``: a line in any other layout (an invented
    one, a newer schema, a cut line) is skipped, and the page says which line and why."""
    good = train_records(1, prompts=1, g=2)[0]
    old_layout = {"step": 1, "prompt": {"id": "x"}, "completions": ["t"], "rewards": [1.0]}
    bad_rollout = {**good, "rollouts": [{"completion": "t"}]}
    lines = [
        json.dumps(good),
        json.dumps(old_layout),
        json.dumps({**good, "schema": 99}),
        json.dumps(bad_rollout),
        "[1, 2]",
        json.dumps(good)[:40],
    ]
    (tmp_path / "records.jsonl").write_text("\n".join(lines) + "\n")
    run = load_run(tmp_path)
    assert [r.prompt_id for r in run.records] == ["hb-0"]
    assert run.problems[:2] == [
        "records.jsonl: 1 line(s) skipped (no step, so not a run record; first: line 5)",
        "records.jsonl: 4 line(s) skipped (not a valid run record)",
    ]
    named = run.problems[2:]
    assert named[0].startswith("records.jsonl:2: no record schema version")
    assert named[1].startswith("records.jsonl:3: record schema 99 is newer")
    assert named[2].startswith("records.jsonl:4: not a valid run record (TypeError(")
    assert "'completion'" in named[2]
    assert named[3].startswith("records.jsonl:6: not a valid JSON record (")
    assert len(named) == 4
    page = render_report(tmp_path)
    assert page.count('<details class="prompt"') == 1 and "records.jsonl:4: not a valid" in page


def test_a_file_of_only_bad_records_says_so(tmp_path):
    rows = [{"step": 0, "prompt": f"p{i}", "rollouts": ["t"]} for i in range(8)]
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    page = render_report(tmp_path)
    assert "records.jsonl: 8 line(s) skipped" in page and "records.jsonl:1: no record" in page
    assert f"and {8 - MAX_NAMED_BAD_RECORDS} more skipped line(s)" in page
    assert "No sampled line of records.jsonl (8 in all) is a run record" in page


def test_missing_files_are_reported_not_fatal(tmp_path):
    page = write_report(tmp_path).read_text()
    for text in (
        "No config.yaml in this run directory.",
        "No records.jsonl in this run directory",
        "No metrics.jsonl in this run directory.",
        "No log.jsonl in this run directory.",
        "Nothing to plot",
        "No evaluation results",
    ):
        assert text in page
    (tmp_path / "metrics.json").write_text("[1, 2")
    (tmp_path / "records.jsonl").write_text('{"rollouts": 5}\n[1]\n')
    page = render_report(tmp_path)
    assert "metrics.json: not valid JSON" in page and "records.jsonl: 2 line(s) skipped" in page
    assert "records.jsonl:1: no record schema version" in page
    assert "records.jsonl:2: a record must be a JSON object, got list" in page
    with pytest.raises(FileNotFoundError):
        write_report(tmp_path / "nope")


def test_write_report_to_another_path(eval_run, tmp_path):
    out = write_report(eval_run, tmp_path / "sub" / "r.html", max_prompts=1, status="failed")
    page = out.read_text()
    assert page.count('<details class="prompt"') == 1
    assert '<span class="tag bad">failed</span>' in page  # the caller's status wins
    assert not list(out.parent.glob(".report-*"))  # the temp file was renamed away


# ------------------------------------------------------------------------------ headless Chromium


class _Dom(HTMLParser):
    """Counts what the browser's DOM holds: PNG images, elements by class, script elements."""

    def __init__(self) -> None:
        super().__init__()
        self.images = 0
        self.scripts = 0
        self.classes: dict[str, int] = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img" and (a.get("src") or "").startswith("data:image/png;base64,"):
            self.images += 1
        if tag == "script":
            self.scripts += 1
        for cls in (a.get("class") or "").split():
            self.classes[cls] = self.classes.get(cls, 0) + 1


def _chromium(page: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        CHROMIUM or "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp / 'profile'}",
        *args,
        page.resolve().as_uri(),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=True)


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless browser test needs Debian chromium: apt-get install -y chromium",
)
@pytest.mark.parametrize("kind", ["evaluate", "train"])
def test_report_renders_in_headless_chromium(kind, eval_run, tmp_path):
    run = eval_run if kind == "evaluate" else make_train_run(tmp_path / "run")
    page = write_report(run)
    dom = _Dom()
    dom.feed(_chromium(page, tmp_path, "--dump-dom").stdout)
    assert dom.scripts == 0  # the injected <script> stayed text
    assert dom.images >= (3 if kind == "evaluate" else 7)
    assert dom.classes.get("matrix") == 1 and dom.classes.get("raw") == 1  # the evaluation
    assert dom.classes.get("prompt", 0) >= 1
    assert dom.classes.get("rollout", 0) >= 3 and dom.classes.get("disagree", 0) >= 1
    assert dom.classes.get("ref", 0) >= 1
    if kind == "evaluate":
        assert dom.classes.get("scores") == 1
        assert dom.classes.get("good", 0) + dom.classes.get("bad", 0) >= 3  # scores, correctness
    else:
        assert dom.classes.get("rubric", 0) >= 1 and dom.classes.get("met-no", 0) >= 1
    shot = tmp_path / f"{kind}.png"
    _chromium(
        page, tmp_path, f"--screenshot={shot}", "--window-size=1280,2600", "--hide-scrollbars"
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    _keep(shot, f"{kind}-report.png")
    _keep(page, f"{kind}-report.html")


def test_a_failed_judge_request_reads_failed_not_unparsed():
    answers = [JudgeAnswer(None, (), error="HTTP 500"), JudgeAnswer(None, ("hmm",))]
    verdicts = [verdict_record(Criterion(c), a) for c, a in zip("ab", answers, strict=True)]
    verdicts.append(verdict_record(Criterion("c"), JudgeAnswer(True, ("yes",))))
    rec = RunRecord.from_dict(train_records(1, prompts=1, g=1)[0])
    rec.rollouts[0].details = {"verdicts": verdicts}
    view = prompt_view(rec)
    assert [v.word for v in view.rollouts[0].verdicts] == ["failed", "unparsed", "yes"]
    assert view.rollouts[0].verdicts[0].error == "HTTP 500"


def test_a_rollout_sampled_only_for_the_reference_is_marked():
    rec = RunRecord.from_dict(train_records(1, prompts=1, g=3)[0])
    extra = rec.rollouts[-1]
    extra.trained, extra.reward, extra.advantage, extra.details = False, None, None, {}
    view = prompt_view(rec)
    assert [r.trained for r in view.rollouts] == [True, True, False]
    assert prompt_block(view).count(">reference only<") == 1
