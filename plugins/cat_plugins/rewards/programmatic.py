"""Programmatic reward for math: does the rollout's final answer match the reference's?"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from cat_framework import ComponentParams, Reference, RewardDeriver, Rewards, RolloutGroup
from cat_framework.answers import (
    Answer,
    Fallback,
    answers_equivalent,
    normalize_answer,
    read_answer,
)


class ProgrammaticParams(ComponentParams):
    mode: Literal["math_verify", "string"] = Field(
        "math_verify",
        description="Answer equivalence: math_verify (equal values match, e.g. \\frac{1}{2} and "
        "0.5; the reference's answer is math-verify's gold) or string (the paper's plain "
        "boxed-string match after light normalisation).",
    )
    fallback: Literal["none", "phrase", "number"] = Field(
        "phrase",
        description="What counts as a rollout's answer: phrase (default: a committed answer, the "
        "paper's level: \\boxed{}, '#### n', 'the final answer is X' or a response that is only "
        "a number), none (\\boxed{} or '#### n' only) or number (also the last number or "
        "expression anywhere: lenient, TTRL-style, an explicit choice; a number met along the way "
        "then counts). The reference text never goes beyond phrase: a reference must commit.",
    )


def _reference_level(fallback: Fallback) -> Fallback:
    return "none" if fallback == "none" else "phrase"


class ProgrammaticReward(RewardDeriver):
    """1.0 when a rollout's final answer is equivalent to the reference's, else 0.0 (math only).

    The paper's reward is ``1[boxed(o) == boxed(s)]``: only a rollout's committed final answer
    counts, so rollouts are read at ``phrase`` by default. At ``number`` (named in a pipeline), a
    rollout that never commits is graded by its last number ("... got 12 along the way" scores
    1 against 12): a reward for stopping on the right number, which a small model that seldom
    boxes may need for any signal at all (the quickstart names it).

    The reference's answer is ``reference.answer`` when set (an aggregator chose it), else the
    answer its text *commits* to: a box, ``#### n`` or an explicit "final answer is X", never its
    last number. A reference without one is no reference: every rollout of the group is
    unscorable (``None``, flagged ``reference_has_answer: False``), since scoring against a
    guessed target would train on noise. The prompt's gold answer is never read (CaT is
    label-free). Details per rollout: ``answer``, ``match``, ``reference_answer``,
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

    def _target(self, reference: Reference) -> Answer | None:
        if reference.answer is not None:
            if not normalize_answer(reference.answer):
                return None
            return Answer.of(reference.answer)
        return read_answer(reference.text, fallback=_reference_level(self.params.fallback))

    def _score(self, group: RolloutGroup, reference: Reference) -> Rewards:
        target = self._target(reference)
        values: list[float | None] = []
        details = []
        for rollout in group.rollouts:
            answer = read_answer(rollout.text, fallback=self.params.fallback)
            if target is None:
                match = None
                values.append(None)
            else:
                match = answers_equivalent(answer, target, self.params.mode)
                values.append(1.0 if match else 0.0)
            details.append(
                {
                    "answer": answer.text if answer is not None else None,
                    "match": match,
                    "reference_answer": target.text if target is not None else None,
                    "reference_has_answer": target is not None,
                }
            )
        return Rewards(values=values, details=details)
