"""Final answers of the real data files: the shipped MATH-500 and GSM8K, and the verbatim slice of
the 12k MATH pool under tests/data (nothing outside the repository)."""

from __future__ import annotations

import json

from cat_framework import answers
from cat_framework.answers import (
    Answer,
    _mv,
    answers_equivalent,
    extract_answer,
)
from cat_plugins.datasets.common import PACKAGE_DATA
from tests.conftest import DATASETS


def test_math500_answers_match_their_solutions() -> None:
    """Acceptance: every MATH-500 ``answer`` is equivalent, both ways, to what we read from its
    own ``solution``, and is that very string except where the solution boxes several parts
    (read as one set) or math-verify reads the box differently; math-verify (not just the
    string fast path) accepts every answer as equal to itself."""
    rows = [json.loads(line) for line in (PACKAGE_DATA / "math500" / "test.jsonl").open()]
    assert len(rows) == 500
    read = [extract_answer(r["solution"]) for r in rows]
    differ = [r["unique_id"] for r, a in zip(rows, read, strict=True) if a != r["answer"]]
    assert differ == ["test/number_theory/459.json"]  # two boxes: 15 39/40 and 639/40
    not_equal = [
        r["unique_id"]
        for r, a in zip(rows, read, strict=True)
        if not answers_equivalent(a, r["answer"], symmetric=True)
    ]
    assert not_equal == []
    keys = [Answer.of(r["answer"]).key for r in rows]
    assert [
        r["answer"] for r, k in zip(rows, keys, strict=True) if not _mv.verify_keys(k, k, 5.0)
    ] == []


def test_gsm8k_solutions_extract_to_plain_numbers() -> None:
    rows = [json.loads(line) for line in (PACKAGE_DATA / "gsm8k" / "test.jsonl").open()]
    assert len(rows) == 1319
    golds = [extract_answer(r["answer"]) for r in rows]
    assert all(g is not None and "," not in g for g in golds)
    assert golds[0] == "18"
    assert sum(g.startswith("-") for g in golds if g) == 2  # "-10" and "-3"


#: 30 records of the 12k MATH pool: every one that is special for extraction, and others
POOL = DATASETS / "math500" / "math_train12k_slice.jsonl"


def test_math12k_single_box_answers_are_kept_verbatim() -> None:
    """The pool's answers are the (unstripped) last box of each solution. Where a solution has
    exactly one box, we return it verbatim, except one that math-verify reads as ``05:00``.
    Two source solutions box nothing (``\\boxed{}``): we skip empty boxes. Run on the full
    12k pool, the same records stood out; the slice holds all of them."""
    rows = [json.loads(line) for line in POOL.open()]
    ids = {r["unique_id"] for r in rows}
    assert len(rows) == 30 and sum(len(answers.boxes(r["solution"])) > 1 for r in rows) == 5
    assert {
        "train/number_theory/7115.json",  # an empty \boxed{}
        "train/number_theory/7117.json",
        "train/algebra/24014.json",  # \boxed 2, no braces
        "train/algebra/25040.json",  # \boxed 9
    } <= ids
    assert sum(r["answer"] != r["answer"].strip() for r in rows) == 4  # spaces around the box
    missed = [
        (r["unique_id"], r["answer"])
        for r in rows
        if len(answers.boxes(r["solution"])) <= 1
        and extract_answer(r["solution"], fallback="none") != (r["answer"].strip() or None)
    ]
    assert missed == [("train/prealgebra/281.json", "05\\!:\\!00")]
