"""Our math reward agrees with math-verify on math-verify's own test pairs (both directions)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAIRS = ROOT / "tests" / "data" / "math_verify_pairs.json"


def _benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "answer_agreement", ROOT / "benchmarks" / "answer_agreement.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pairs_file_is_well_formed() -> None:
    data = json.loads(PAIRS.read_text())
    assert data["source"]["repository"] == "https://github.com/huggingface/Math-Verify"
    cases = data["cases"]
    assert len(cases) == 252
    assert len({(c["gold"], c["pred"]) for c in cases}) == len(cases)
    assert all(isinstance(c["expected"], bool) and c["source"].startswith("tests/") for c in cases)


@pytest.fixture(scope="module")
def agreement() -> dict:
    bench = _benchmark()
    return bench.measure(bench.load_cases(PAIRS))


@pytest.mark.parametrize("direction", ["as_given", "swapped"])
def test_within_three_cases_of_math_verify(agreement: dict, direction: str) -> None:
    """Issue 10 item 3: before, 151/252 as given (math-verify: 250) and 118/252 swapped (239)."""
    ours = agreement[f"ours/{direction}"]["agree"]
    theirs = agreement[f"math_verify/{direction}"]["agree"]
    assert ours >= theirs - 3, (direction, ours, theirs, agreement[f"ours/{direction}"]["missed"])
