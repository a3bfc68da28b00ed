"""The report of a real training run (the quickstart's shape on a tiny random Llama): written at
run end, with the step-0 and final evaluation table, the metric plots and the prompt samples."""

from __future__ import annotations

import pytest

from cat_framework.engine.diagnostics import reference_diagnostics
from cat_framework.records import read_records
from cat_framework.report.eval_metrics import RATES
from cat_framework.report.samples import fmt
from tests.engine.test_trainer import run, write_pipeline
from tests.report.test_eval_matrix import expected_rate, matrix_cells
from tests.report.test_report import CHROMIUM, _chromium, _Dom, _keep

QUICKSTART_LIKE = (
    "{steps: 2, prompts_per_step: 2, learning_rate: 0.01, beta: 0.01, "
    "lora: {r: 4, alpha: 8}, eval_before: true, eval_every: 2}"
)
EVAL = """\
eval:
  aggregators: [single, majority, minppl, {name: synthesis, max_new_tokens: 8}]
  bootstrap: 100
  limit: 3
"""


@pytest.fixture
def train_run(tmp_path, tiny_policy, toy_data):
    pipeline = write_pipeline(tmp_path, tiny_policy, toy_data, QUICKSTART_LIKE, EVAL)
    eval_data = (
        f'  eval: {{dataset: jsonl, path: "{toy_data}", answer_field: answer, id_field: id}}'
    )
    text = pipeline.read_text().replace("data:\n", f"data:\n{eval_data}\n")
    pipeline.write_text(text)
    summary = run(pipeline, tmp_path / "run")
    return tmp_path / "run", summary


def test_train_run_writes_report_with_eval_table(train_run):
    run_dir, summary = train_run
    page = run_dir / "report.html"
    assert summary["report"] == str(page) and page.exists()
    html = page.read_text()
    for label in ("single", "majority", "minppl", "synthesis"):
        assert f"eval/{label}/score" in html or f">{label}<" in html
    assert "Latest evaluation, at step 2" in html
    assert (run_dir / "eval" / "step-000000.json").exists()
    # the matrix: one row per estimator, its cells those of the final evaluation's records
    records = read_records(run_dir / "eval" / "step-000002.jsonl")
    head, rows = matrix_cells(html)
    assert head[5:] == ["since step 0"] + [h for _, h, _ in RATES]
    assert list(rows) == ["single", "majority", "minppl", "synthesis"]
    for label, cells in rows.items():
        scores = [r.references[label].score for r in records]
        assert cells[1] == fmt(sum(scores) / len(scores)) and cells[4] == str(len(scores))
        diag = reference_diagnostics(records, label, task="math")
        assert cells[6:] == [expected_rate(diag, name) for name, _, _ in RATES], label


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian chromium: apt-get install -y chromium")
def test_train_report_in_headless_chromium(train_run, tmp_path):
    run_dir, _ = train_run
    page = run_dir / "report.html"
    dom = _Dom()
    dom.feed(_chromium(page, tmp_path, "--dump-dom").stdout)
    assert dom.scripts == 0
    assert dom.images >= 4  # reward, KL, lengths, eval over steps, time split...
    assert dom.classes.get("scores") == 1 and dom.classes.get("matrix") == 1  # the evaluation
    assert dom.classes.get("prompt", 0) >= 1
    assert dom.classes.get("rollout", 0) >= 4 and dom.classes.get("ref", 0) >= 1
    shot = tmp_path / "train-real.png"
    _chromium(
        page, tmp_path, f"--screenshot={shot}", "--window-size=1280,2600", "--hide-scrollbars"
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _keep(shot, "train-real-report.png")
