"""benchmarks/cpu_paper_tables.py --quick: every stage runs and its outputs have the promised
structure (tables, CIs, paired tests, per-problem outcomes, the data check, training arms per
seed, compare page, plots). The values of a tiny configuration mean nothing and are not checked;
the committed experiment is checked with the same code, and its paired counts against its own
committed per-problem outcomes."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "cpu_paper_tables", ROOT / "benchmarks" / "cpu_paper_tables.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_unknown_stage_is_one_message(capsys):
    with pytest.raises(SystemExit):
        _benchmark().main(["--quick", "--stages", "test-time,trainnig"])
    assert "--stages: unknown ['trainnig']" in capsys.readouterr().err


def test_committed_results_have_the_structure_quick_mode_produces():
    """The committed experiment (when present) is readable by the same code as --quick."""
    path = ROOT / "benchmarks" / "results" / "cpu_paper_tables" / "results.json"
    if not path.is_file():
        pytest.skip("no committed results yet")
    _check(json.loads(path.read_text()), path.parent, quick=False)


def _check(results: dict, out: Path, quick: bool) -> None:
    bench = _benchmark()
    cfg = bench.QUICK if quick else bench.FULL
    assert results["mode"] == ("quick" if quick else "full")
    assert results["machine"]["cpu"] and results["wall_s"]
    tt = results["test_time"]
    assert list(tt["estimators"]) == bench.TEST_TIME
    for label, c in tt["estimators"].items():
        assert c["n"] == cfg["test_time"]["problems"], label
        assert c["ci_low"] <= c["score"] <= c["ci_high"]
        v = tt["versus_majority"][label]
        assert v["right_when_disagreeing"] <= v["disagrees"] <= v["problems"] == c["n"]
    assert tt["versus_majority"]["majority"]["disagrees"] == 0  # the vote agrees with itself
    n = len(bench.TEST_TIME)
    assert len(tt["pairs"]) == n * (n - 1) // 2
    assert all(q["p"] <= q["p_holm"] <= 1 for q in tt["pairs"])
    outcomes = _jsonl(out / "outcomes" / "test_time.jsonl")
    assert len(outcomes) == cfg["test_time"]["problems"]
    for q in tt["pairs"]:  # the committed counts are those of the committed outcomes
        a_only = sum(o["correct"][q["a"]] and not o["correct"][q["b"]] for o in outcomes)
        assert a_only == q["a_only"], q
    all_wrong = [o for o in outcomes if o["rollouts_correct"] == 0]
    for label, v in tt["versus_majority"].items():
        assert v["right_when_all_wrong"] == sum(o["correct"][label] for o in all_wrong)
    checked = results["data_check"]
    assert checked["test_time"]["also_trained_on"] == 0
    assert checked["test_time"]["distinct"] == checked["test_time"]["problems"]
    if "training" in results:
        tc = cfg["training"]
        arms = [bench.UNTRAINED, *bench.ARMS]
        assert list(results["training"]["arms"]) == arms
        for arm, t in results["training"]["arms"].items():
            assert sorted(int(x) for x in t["seeds"]) == tc["seeds"], arm
            for measures in t["seeds"].values():
                assert measures["single"]["n"] == tc["eval_problems"]
        assert len(results["training"]["pairs"]) == len(arms) * (len(arms) - 1) // 2
        rows = _jsonl(out / "outcomes" / "training.jsonl")
        assert len(rows) == len(arms) * len(tc["seeds"]) * tc["eval_problems"]
        assert checked["held_out"]["also_trained_on"] == 0
        assert checked["trained_distinct"] >= tc["prompts_per_step"]
    md = (out / "results.md").read_text()
    assert "## Test-time CaT" in md and "Every estimator pair" in md
    page = (out / "compare.html").read_text()
    assert '<table class="compare">' in page and "test-time" in page
    if "training" in results:
        assert "Every arm pair" in md
        assert (out / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_quick_mode_writes_every_table(tmp_path):
    out = tmp_path / "out"
    assert _benchmark().main(["--quick", "--out", str(out), "--runs", str(tmp_path / "runs")]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["missing"] == []
    _check(results, out, quick=True)
    # --collect runs nothing: it tabulates the complete runs and names what is not
    (tmp_path / "runs" / "ttrl-seed1" / "status.json").write_text('{"status": "failed"}')
    again = tmp_path / "again"
    assert (
        _benchmark().main(
            ["--quick", "--collect", "--out", str(again), "--runs", str(tmp_path / "runs")]
        )
        == 0
    )
    results = json.loads((again / "results.json").read_text())
    assert results["missing"] == ["training ttrl seed 1"]
    assert sorted(results["training"]["arms"]["ttrl"]["seeds"]) == ["0"]


def test_every_number_in_the_results_readme_is_a_committed_one():
    """Each figure the README quotes (accuracies, differences, intervals, p-values, counts
    written as k/n) is in the committed tables, and the figures of one README line all come
    from one line of them (the same row), so a claim cannot drift from its number."""
    folder = ROOT / "benchmarks" / "results" / "cpu_paper_tables"
    if not (folder / "README.md").is_file():
        pytest.skip("no committed results yet")
    readme, tables = (folder / "README.md").read_text(), (folder / "results.md").read_text()

    def numbers(line: str) -> set[str]:
        return {x.lstrip("+") for x in re.findall(r"[+-]?\d\.\d{3}|\b\d+/\d+\b", line)}

    rows = [numbers(line) for line in tables.splitlines()]
    quoted = 0
    for line in readme.split("## Reproduce")[0].splitlines():
        found = numbers(line)
        quoted += len(found)
        assert any(found <= row for row in rows), line
    assert quoted > 20, "the README quotes almost no number"
