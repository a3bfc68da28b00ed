"""benchmarks/cpu_paper_tables.py --quick: every stage runs and its outputs have the promised
structure (tables, CIs, G-scaling points, training arms, compare page, plots). The values of a
tiny configuration mean nothing and are not checked."""

from __future__ import annotations

import importlib.util
import json
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
    left_out = set(results.get("missing", []))
    tt = results["test_time"]
    assert list(tt["estimators"]) == bench.TEST_TIME
    for label, c in tt["estimators"].items():
        assert c["n"] == cfg["test_time"]["problems"], label
        assert c["ci_low"] <= c["score"] <= c["ci_high"]
        assert "reference/correct_when_all_wrong/total" in tt["diagnostics"][label]
    if "training" in results:
        arms = [a for a in bench.ARMS if f"training {a}" not in left_out]
        assert list(results["training"]) == arms
        for arm, t in results["training"].items():
            assert t["before"]["step"] == 0, arm
            assert [e["step"] for e in t["evaluations"]][-1] == t["after"]["step"]
            assert {"single", "majority"} <= set(t["after"])
    if "g_scaling" in results:
        gs = [g for g in cfg["g_scaling"]["Gs"] if f"g-scaling G={g}" not in left_out]
        assert [p["G"] for p in results["g_scaling"]] == gs
        for p in results["g_scaling"]:
            assert {"majority", "synthesis", "rollout_accuracy"} <= set(p)
    md = (out / "results.md").read_text()
    assert "## Test-time CaT" in md and md.count("\n| ") >= 1 + len(bench.TEST_TIME)
    page = (out / "compare.html").read_text()
    assert '<table class="compare">' in page and "test-time" in page
    for png in ["g_scaling.png"] * ("g_scaling" in results) + ["training.png"] * (
        "training" in results
    ):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_quick_mode_writes_every_table(tmp_path):
    out = tmp_path / "out"
    assert _benchmark().main(["--quick", "--out", str(out), "--runs", str(tmp_path / "runs")]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["missing"] == []
    _check(results, out, quick=True)
    # --collect runs nothing: it tabulates the complete runs and names what is not
    (tmp_path / "runs" / "ttrl" / "status.json").write_text('{"status": "failed"}')
    again = tmp_path / "again"
    assert (
        _benchmark().main(
            ["--quick", "--collect", "--out", str(again), "--runs", str(tmp_path / "runs")]
        )
        == 0
    )
    results = json.loads((again / "results.json").read_text())
    assert results["missing"] == ["training ttrl"]
    _check(results, again, quick=True)
