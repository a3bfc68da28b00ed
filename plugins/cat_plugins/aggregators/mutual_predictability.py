"""Mutual predictability: the rollout that the other rollouts, shown first, make most predictable.

Why this baseline: the CaT paper compares synthesis with selection methods, mutual
predictability among them (v1 Result 4; v3 section 4.4, Eqs. 10-11): "For G = 8 rollouts we
construct eight prompts, where we pick each rollout answer in turn to include last in the prompt
and randomly order the other answers in the prompt before it", then takes the token-level
perplexity of that last answer and picks the lowest. The score comes from Wen et al. (2025),
"Unsupervised Elicitation of Language Models" (arXiv 2506.10139), whose mutual predictability
is ``sum_i log P(y_i | x_i, D without (x_i, y_i))``: each label predicted with all the other
examples in context. CaT's version is per candidate and length-normalised (perplexity), as here.

The prompt's wording is not published (our reconstruction, not the paper's text). Following Wen
et al.'s in-context layout, every other rollout is an earlier answer to the same conversation
(its non-system turns repeated before each answer, leading system turns once at the top, so chat
templates that demand alternating roles accept it) and the candidate is the last answer, scored
by teacher forcing on its sampled token ids. The order of the others is random but seeded by
the prompt id and the candidate, so batching and process splits do not change it. As in minPPL
the exponential is skipped (the lowest mean token NLL is the lowest perplexity); ties go to the
earliest rollout. With G = 1 there is nothing in context and it is minPPL.

Cost: G scoring passes per prompt, each over about G rollouts of context (the O(G^2) tokens are
what the paper's "9x less test-time compute" for synthesis is measured against). All passes of a
batch go to the backend in one ``score`` call, which packs them by its own token budget.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from cat_framework import Aggregator, ComponentParams, Reference, RolloutGroup
from cat_framework.answers import extract_answer
from cat_framework.types import Message
from cat_plugins.aggregators.answer_level import AnswerLevel, selected_answer_field
from cat_plugins.aggregators.minppl import argmin_first, mean_nll


def others_order(group: RolloutGroup, index: int, seed: int) -> list[int]:
    """The other rollouts' indices, in the random order they are shown before rollout ``index``
    (keyed by the prompt id, not the batch position: the same reference however prompts are
    batched or split across processes)."""
    order = [j for j in range(len(group.rollouts)) if j != index]
    random.Random(f"{seed}:{group.prompt.id}:{index}").shuffle(order)
    return order


def in_context(messages: Sequence[Message], answers: Sequence[str]) -> list[dict[str, str]]:
    """The conversation asked once per earlier answer and followed by it, then asked again: the
    scored candidate is the reply to that last ask. Leading system turns appear once, first."""
    lead = 0
    while lead < len(messages) and messages[lead]["role"] == "system":
        lead += 1
    system = [dict(m) for m in messages[:lead]]
    turns = [dict(m) for m in messages[lead:]]
    out = list(system)
    for answer in answers:
        out += [*turns, {"role": "assistant", "content": answer}]
    return out + turns


class MutualPredictabilityAggregator(Aggregator):
    """The rollout the others make most predictable (mutual predictability, Wen et al. 2025).

    Each rollout is scored last, after the other rollouts in context; the lowest mean token NLL
    wins (a CaT selection baseline: the module docstring has the paper's definition)."""

    name = "mutual_predictability"

    class Params(ComponentParams):
        scorer: Literal["anchor", "policy"] = Field(
            "policy",
            description="Model whose log-probs rank the rollouts (teacher forcing): the policy "
            "that sampled them (as minppl; at test time it is the anchor) or the frozen anchor.",
        )
        seed: int = Field(
            0, ge=0, le=2**32 - 1, description="Seed of the random order of the other rollouts."
        )
        fallback: AnswerLevel = selected_answer_field()

    def aggregate(self, groups: Sequence[RolloutGroup]) -> list[Reference]:
        roles = self.require_roles()
        backend = roles.anchor if self.params.scorer == "anchor" else roles.policy
        flat = [(g, i) for g in groups for i in range(len(g.rollouts))]
        orders = [others_order(g, i, self.params.seed) for g, i in flat]
        contexts = [
            in_context(g.prompt.messages, [g.rollouts[j].text for j in order])
            for (g, _), order in zip(flat, orders, strict=True)
        ]
        continuations = [
            list(g.rollouts[i].token_ids) if g.rollouts[i].token_ids else g.rollouts[i].text
            for g, i in flat
        ]
        scored = backend.score(contexts, continuations) if flat else []
        refs, k = [], 0
        for g in groups:
            n = len(g.rollouts)
            nlls = [mean_nll(scored[k + i]) for i in range(n)]
            best = argmin_first(nlls)
            text = g.rollouts[best].text
            # free-form text has no final answer (as ``single``): the reference is the text
            freeform = g.prompt.meta.get("task") == "freeform"
            answer = None if freeform else extract_answer(text, fallback=self.params.fallback)
            refs.append(
                Reference(
                    text=text,
                    method=self.name,
                    answer=answer,
                    details={
                        "index": best,
                        "mean_nll": [round(x, 6) for x in nlls],
                        "orders": orders[k : k + n],
                    },
                )
            )
            k += n
        return refs
