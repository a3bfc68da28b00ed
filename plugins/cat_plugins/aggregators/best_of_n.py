"""Self-BoN: the model is shown the question and the numbered rollouts and picks one."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from cat_framework import Aggregator, ComponentParams, GenerationRequest, Reference, RolloutGroup
from cat_framework.answers import extract_answer
from cat_plugins.aggregators.answer_level import AnswerLevel, selected_answer_field
from cat_plugins.aggregators.slots import escape, numbered_responses
from cat_plugins.prompts import render

_CHOICE = re.compile(r"<choice>\s*(\d+)\s*</choice>", re.IGNORECASE)
_LOOSE = re.compile(r"(?:candidate|response|choice|number)\D{0,12}(\d+)", re.IGNORECASE)


def parse_choice(text: str, count: int) -> int | None:
    """0-based index chosen in ``text`` (last ``<choice>N</choice>``, else a loose mention)."""
    for pattern in (_CHOICE, _LOOSE):
        found = [int(m) for m in pattern.findall(text) if 1 <= int(m) <= count]
        if found:
            return found[-1] - 1
    return None


class BestOfNAggregator(Aggregator):
    """Self-selection (Self-BoN): the model picks the best of its own numbered rollouts."""

    name = "best_of_n"

    class Params(ComponentParams):
        role: Literal["anchor", "policy"] = Field("anchor", description="Which model selects.")
        template: str = Field(
            "best_of_n", description="Template name or path ($question, $count, $responses)."
        )
        max_new_tokens: int = Field(512, ge=1, description="Budget for the selector's reasoning.")
        temperature: float = Field(0.0, ge=0.0, description="Selector temperature (0 = greedy).")
        fallback: AnswerLevel = selected_answer_field()

    def aggregate(self, groups: Sequence[RolloutGroup]) -> list[Reference]:
        roles = self.require_roles()
        backend = roles.anchor if self.params.role == "anchor" else roles.policy
        requests = [
            GenerationRequest(
                messages=[
                    {
                        "role": "user",
                        "content": render(
                            self.params.template,
                            question=escape(g.prompt.question),
                            count=str(len(g.rollouts)),
                            responses=numbered_responses([r.text for r in g.rollouts]),
                        ),
                    }
                ],
                max_new_tokens=self.params.max_new_tokens,
                temperature=self.params.temperature,
            )
            for g in groups
        ]
        outputs = backend.generate(requests) if requests else []
        refs = []
        for g, out in zip(groups, outputs, strict=True):
            raw = out[0].text
            choice = parse_choice(raw, len(g.rollouts))
            index = 0 if choice is None else choice
            text = g.rollouts[index].text
            refs.append(
                Reference(
                    text=text,
                    method=self.name,
                    answer=extract_answer(text, fallback=self.params.fallback),
                    details={"index": index, "unparsed": choice is None, "raw": raw},
                )
            )
        return refs
