"""CaT synthesis: the frozen anchor reads only the rollouts and writes one reference.

Question-blind by default (the paper's setting: the anchor must reconcile the rollouts rather
than answer the question afresh). Rollouts are shuffled with a seeded RNG, so position bias does
not favour the first sample, and delimited so a rollout cannot escape its slot.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Literal

from pydantic import Field, field_validator

from cat_framework import Aggregator, ComponentParams, GenerationRequest, Reference, RolloutGroup
from cat_framework.answers import extract_answer
from cat_plugins.aggregators.slots import numbered_responses, question_block
from cat_plugins.prompts import check_template, render

TEMPLATES = {"reasoning": "synthesis_reasoning", "freeform": "synthesis_freeform"}
#: the placeholders build_prompt fills
PLACEHOLDERS = {"count", "responses", "question_block"}


class SynthesisAggregator(Aggregator):
    """The anchor synthesizes one reference from the G rollouts (question-blind by default)."""

    name = "synthesis"

    class Params(ComponentParams):
        template: str = Field(
            "auto",
            description="'reasoning' (math: fix errors, final answer in \\boxed{}), 'freeform' "
            "(combine into the best response), 'auto' (by the prompt's task), or a path to a "
            "template file with $count, $responses and $question_block.",
        )
        question_aware: bool = Field(
            False, description="Show the anchor the question too (an ablation; paper: blind)."
        )
        shuffle: bool = Field(True, description="Shuffle rollouts before showing them.")
        seed: int = Field(
            0, ge=0, le=2**32 - 1, description="Seed of the shuffle and of the anchor's sampling."
        )
        role: Literal["anchor", "policy"] = Field(
            "anchor", description="Which model synthesizes (paper: the frozen anchor)."
        )
        temperature: float = Field(0.6, ge=0.0, description="Anchor sampling temperature.")
        top_p: float = Field(0.95, gt=0.0, le=1.0, description="Anchor nucleus sampling.")
        max_new_tokens: int = Field(
            1536, ge=1, le=262_144, description="Length budget of the reference."
        )
        fallback: Literal["none", "phrase"] = Field(
            "phrase",
            description="How the reference's final answer is read (math): phrase (a box, "
            "'#### n', 'the answer is X' or a bare number) or none (boxes only). Never its last "
            "number: a reference that commits to no answer is no reference.",
        )

        @field_validator("template")
        @classmethod
        def _placeholders(cls, v: str) -> str:
            # at `validate`, not at the first anchor call: an unknown $name fails the whole run
            for name in TEMPLATES.values() if v == "auto" else [TEMPLATES.get(v, v)]:
                check_template(name, required={"responses"}, allowed=PLACEHOLDERS, param="template")
            return v

    def template_for(self, group: RolloutGroup) -> str:
        t = self.params.template
        if t == "auto":
            t = "freeform" if group.prompt.meta.get("task") == "freeform" else "reasoning"
        return TEMPLATES.get(t, t)

    def build_prompt(self, group: RolloutGroup, index: int = 0) -> tuple[str, list[int]]:
        """The synthesis prompt and the order in which rollouts were shown."""
        order = list(range(len(group.rollouts)))
        if self.params.shuffle:
            # keyed by the prompt id alone: the same references however prompts are batched or
            # split across processes (``index`` is kept for callers, not used)
            random.Random(f"{self.params.seed}:{group.prompt.id}").shuffle(order)
        texts = [group.rollouts[i].text for i in order]
        qb = question_block(group.prompt.question) if self.params.question_aware else ""
        prompt = render(
            self.template_for(group),
            count=str(len(texts)),
            responses=numbered_responses(texts),
            question_block=qb,
        )
        return prompt, order

    def aggregate(self, groups: Sequence[RolloutGroup]) -> list[Reference]:
        roles = self.require_roles()
        backend = roles.anchor if self.params.role == "anchor" else roles.policy
        built = [self.build_prompt(g, i) for i, g in enumerate(groups)]
        requests = [
            GenerationRequest(
                messages=[{"role": "user", "content": prompt}],
                n=1,
                temperature=self.params.temperature,
                top_p=self.params.top_p,
                max_new_tokens=self.params.max_new_tokens,
                seed=self.params.seed,
            )
            for prompt, _ in built
        ]
        outputs = backend.generate(requests) if requests else []
        refs = []
        for group, (_, order), out in zip(groups, built, outputs, strict=True):
            completion = out[0]
            is_math = self.template_for(group) != TEMPLATES["freeform"]
            refs.append(
                Reference(
                    text=completion.text,
                    method=self.name,
                    answer=(
                        extract_answer(completion.text, fallback=self.params.fallback)
                        if is_math
                        else None
                    ),
                    details={
                        "order": order,
                        "finish_reason": completion.finish_reason,
                        "tokens": len(completion.token_ids),
                    },
                )
            )
        return refs
