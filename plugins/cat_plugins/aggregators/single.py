"""The baseline: the first rollout is the reference."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from cat_framework import Aggregator, ComponentParams, Reference, RolloutGroup
from cat_framework.answers import extract_answer


class SingleParams(ComponentParams):
    fallback: Literal["none", "phrase", "number"] = Field(
        "number",
        description="Answer extraction when the rollout has no \\boxed{} or '#### n': none, "
        "phrase ('the answer is X'), or number (the phrase, else the last number).",
    )


class SingleAggregator(Aggregator):
    """The first rollout, unchanged (the single-sample baseline).

    ``answer`` is its extracted final answer, except for prompts whose ``meta["task"]`` is
    ``freeform`` (open-ended text has no final answer).
    """

    name = "single"
    Params = SingleParams

    params: SingleParams

    def aggregate(self, groups: Sequence[RolloutGroup]) -> list[Reference]:
        refs = []
        for g in groups:
            text = g.rollouts[0].text
            freeform = g.prompt.meta.get("task") == "freeform"
            answer = None if freeform else extract_answer(text, fallback=self.params.fallback)
            refs.append(Reference(text=text, method=self.name, answer=answer, details={"index": 0}))
        return refs
