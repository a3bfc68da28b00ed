"""How a selecting aggregator (minppl, best_of_n) reads the answer of the rollout it chose."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

AnswerLevel = Literal["none", "phrase", "number"]


def selected_answer_field() -> Any:
    """The ``fallback`` param: committed answers by default (a chosen rollout that commits to
    none is no reference); ``number`` is the lenient reading, chosen explicitly."""
    return Field(
        "phrase",
        description="How the chosen rollout's answer is read: phrase (a box, '#### n', 'the "
        "answer is X' or a bare number; else no answer: no reference), none (boxes only) or "
        "number (also its last number: lenient, TTRL-style; an explicit choice).",
    )
