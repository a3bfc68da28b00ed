"""Programmatic reward for math: does the rollout's final answer match the reference's?"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from cat_framework import ComponentParams, Reference, RewardDeriver, Rewards, RolloutGroup
from cat_framework.answers import answers_equivalent, extract_answer, normalize_answer


class ProgrammaticParams(ComponentParams):
    mode: Literal["math_verify", "string"] = Field(
        "math_verify",
        description="Answer equivalence: math_verify (equal values match, e.g. \\frac{1}{2} and "
        "0.5; the reference's answer is math-verify's gold) or string (the paper's plain "
        "boxed-string match after light normalisation).",
    )
    fallback: Literal["none", "phrase", "number"] = Field(
        "number",
        description="Answer extraction when a text has no \\boxed{} or '#### n': none, phrase "
        "('the answer is X'), or number (the phrase, else the last number).",
    )


class ProgrammaticReward(RewardDeriver):
    """1.0 when a rollout's final answer is equivalent to the reference's, else 0.0 (math only).

    The reference's answer is ``reference.answer`` when set, else extracted from its text; the
    prompt's gold answer is never read (CaT is label-free). A reference without an answer gives
    every rollout 0.0, flagged ``reference_has_answer: False`` in each rollout's details so runs
    can count such groups. Details per rollout: ``answer``, ``match``, ``reference_answer``,
    ``reference_has_answer``.
    """

    name = "programmatic"
    tasks = frozenset({"math"})
    Params = ProgrammaticParams

    params: ProgrammaticParams

    def derive(
        self, groups: Sequence[RolloutGroup], references: Sequence[Reference]
    ) -> list[Rewards]:
        if len(groups) != len(references):
            raise ValueError(f"{len(groups)} groups but {len(references)} references")
        return [self._score(g, ref) for g, ref in zip(groups, references, strict=True)]

    def _score(self, group: RolloutGroup, reference: Reference) -> Rewards:
        fallback = self.params.fallback
        target = reference.answer
        if target is None:
            target = extract_answer(reference.text, fallback=fallback)
        has_answer = target is not None and normalize_answer(target) != ""
        values, details = [], []
        for rollout in group.rollouts:
            answer = extract_answer(rollout.text, fallback=fallback)
            match = has_answer and answers_equivalent(answer, target, self.params.mode)
            values.append(1.0 if match else 0.0)
            details.append(
                {
                    "answer": answer,
                    "match": match,
                    "reference_answer": target,
                    "reference_has_answer": has_answer,
                }
            )
        return Rewards(values=values, details=details)
