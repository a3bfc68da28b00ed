"""The model-as-judge baseline: a binary "is this rollout equivalent to the reference?" reward.

The paper's holistic alternative to rubrics: "π_J checks whether an output is semantically
equivalent to the estimated reference response to provide a binary reward". Its prompt is not
published; ``equivalence_judge`` is ours. Every rollout of the batch goes to the judge in one
batched call; unparsed answers are re-asked (batched, bounded). A rollout whose verdict stays
unparsed, or whose request failed after the backend's retries, is *unscorable*: reward ``None``
(``met=None`` in the details), never a made-up 0. So is every rollout of a group whose reference
is empty (``no_reference: true``; no judge calls). Works for math and free-form tasks alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import structlog
from pydantic import Field, model_validator

from cat_framework import (
    Criterion,
    Reference,
    RewardDeriver,
    Rewards,
    RolloutGroup,
)
from cat_plugins.prompts import render
from cat_plugins.rewards.judge_schedule import ask_judge
from cat_plugins.rewards.judging import (
    PROMPT_TAGS,
    JudgeParams,
    assess,
    chat,
    check_template,
    conversation_block,
    log_unscorable,
    neutralize_tags,
    verdict_record,
)
from cat_plugins.rewards.length_penalty import LengthPenalty, count_tokens, penalize, penalized
from cat_plugins.rewards.xml_parsing import parse_verdict

log = structlog.get_logger("cat_plugins.rewards")

#: the single "criterion" recorded in each rollout's verdicts
EQUIVALENCE = Criterion("equivalent to the reference")


class JudgeRewardParams(JudgeParams):
    judge_template: str = Field(
        "equivalence_judge",
        description="Template name or path, with $reference, $response and $question_block.",
    )
    judge_sees_question: bool = Field(
        False,
        description="Show the judge the conversation (not published; default: texts only).",
    )
    length_penalty: LengthPenalty | None = Field(
        None, description="Optional penalty for long rollouts (paper, HealthBench: -1 over 750)."
    )

    @model_validator(mode="after")
    def _template(self) -> JudgeRewardParams:
        check_template(  # checked at `validate`, not at the first judge call
            self.judge_template,
            required={"reference", "response"}
            | ({"question_block"} if self.judge_sees_question else set()),
            allowed={"reference", "response", "question_block"},
            param="judge_template",
        )
        return self


class JudgeReward(RewardDeriver):
    """Binary reward: the judge says whether a rollout is equivalent to the reference."""

    name = "judge"
    Params: ClassVar[type[JudgeRewardParams]] = JudgeRewardParams
    params: JudgeRewardParams

    def judge_prompt(self, group: RolloutGroup, reference: Reference, rollout_text: str) -> str:
        """The judge's prompt for one rollout; the conversation only if enabled."""
        qb = conversation_block(group.prompt.messages) if self.params.judge_sees_question else ""
        return render(
            self.params.judge_template,
            reference=neutralize_tags(reference.text.strip(), PROMPT_TAGS),
            response=neutralize_tags(rollout_text.strip(), PROMPT_TAGS),
            question_block=qb,
        )

    def derive(
        self, groups: Sequence[RolloutGroup], references: Sequence[Reference]
    ) -> list[Rewards]:
        if len(groups) != len(references):
            raise ValueError(f"{len(groups)} groups but {len(references)} references")
        p = self.params
        keys = [
            (g, r)
            for g, (group, ref) in enumerate(zip(groups, references, strict=True))
            if ref.text.strip()
            for r in range(len(group.rollouts))
        ]
        answers = ask_judge(
            self,
            [
                chat(
                    self.judge_prompt(groups[g], references[g], groups[g].rollouts[r].text),
                    p.system_message,
                )
                for g, r in keys
            ],
            parse_verdict,
        )
        judged = dict(zip(keys, answers, strict=True))
        out = []
        for g, group in enumerate(groups):
            values, details = [], []
            for r, rollout in enumerate(group.rollouts):
                answer = judged.get((g, r))
                check = assess([answer] if answer else [])
                met = answer.value if answer else None
                score = None if check.unscorable else float(met is True)
                n_tokens, exact = count_tokens(rollout)
                values.append(penalize(score, n_tokens, p.length_penalty))
                reason = None if score is not None else "verdicts" if answer else "no_reference"
                details.append(
                    {
                        "score": score,
                        "n_met": int(met is True),
                        **check.details(),
                        "unscorable_reason": reason,
                        "n_retried": int(answer is not None and answer.attempts > 1),
                        "verdicts": [verdict_record(EQUIVALENCE, answer)] if answer else [],
                        "no_reference": answer is None,
                        "n_tokens": n_tokens,
                        "tokens_exact": exact,
                        "length_penalized": penalized(n_tokens, p.length_penalty),
                    }
                )
            out.append(Rewards(values, details))
        log_unscorable("judge reward", answers)
        return out


__all__ = ["EQUIVALENCE", "JudgeReward", "JudgeRewardParams"]
