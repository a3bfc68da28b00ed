"""A failed run's report says why it failed, at the top (status.json, else the log)."""

from __future__ import annotations

import json
from pathlib import Path

from cat_framework.report import render_report
from cat_framework.rundir import is_run_dir

BANNER = '<div class="failure" id="failure"><b>This run failed</b>'


def _run(tmp: Path, *, end: dict | None = None, status: dict | str | None = None) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "config.yaml").write_text("name: failing\nmode: evaluate\n")
    events = [{"event": "run start", "level": "info", "timestamp": "2025-01-01T00:00:00"}]
    if end is not None:
        events.append({"event": "run end", "level": "info", **end})
    (tmp / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    if status is not None:
        text = status if isinstance(status, str) else json.dumps(status)
        (tmp / "status.json").write_text(text)
    return tmp


def test_status_json_error_is_shown_prominently_and_escaped(tmp_path):
    run = _run(
        tmp_path,
        end={"status": "failed", "error": "older message"},
        status={"status": "failed", "error": "CUDA out of memory <at step 3>"},
    )
    page = render_report(run)
    assert BANNER in page
    banner = page[page.index(BANNER) :]
    assert banner.index("CUDA out of memory &lt;at step 3&gt;") < banner.index("<section")
    assert "older message" not in banner[: banner.index("<section")]
    assert '<span class="tag bad">failed</span>' in page


def test_log_run_end_error_is_the_fallback(tmp_path):
    page = render_report(_run(tmp_path, end={"status": "failed", "error": "judge server died"}))
    assert BANNER in page and "judge server died</pre>" in page


def test_status_json_alone_gives_status_and_a_bad_one_is_a_problem(tmp_path):
    run = _run(tmp_path, status={"status": "failed"})
    page = render_report(run)
    assert BANNER in page and "No error message was recorded" in page
    (run / "status.json").write_text("[1")
    page = render_report(run)
    assert "status.json: not valid JSON" in page and BANNER not in page


def test_completed_run_has_no_failure_banner(tmp_path):
    run = _run(tmp_path, end={"status": "completed"}, status={"status": "completed"})
    assert 'id="failure"' not in render_report(run)
    assert "explicit error" in render_report(run, status="failed", error="explicit error")


def test_is_run_dir(tmp_path):
    assert not is_run_dir(tmp_path / "missing")
    assert not is_run_dir(tmp_path)
    (tmp_path / "config.yaml").write_text("name: x\n")
    assert not is_run_dir(tmp_path)  # a config alone: the run never started
    for name in ("log.jsonl", "records.jsonl", "metrics.json", "metrics.jsonl"):
        (tmp_path / name).write_text("")
        assert is_run_dir(tmp_path)
        (tmp_path / name).unlink()
    (tmp_path / "log.jsonl").mkdir()
    assert not is_run_dir(tmp_path)
