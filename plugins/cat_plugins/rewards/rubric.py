"""CaT's reward for non-verifiable tasks: a self-proposed rubric, checked by a judge.

1. **Proposal.** The frozen anchor turns the reference ``s`` (its text alone: never the question,
   never gold data) into a rubric of at least ``min_criteria`` binary criteria, in XML. One
   batched anchor call covers every group of the batch. When fewer than ``min_criteria`` criteria
   can be parsed, those groups are re-asked (batched, at most ``max_retries`` times, sampled at
   ``retry_temperature``). Then, with ``fallback: partial`` (default) the attempt with the most
   criteria is used if it has any (``rubric_status: partial``); otherwise, or with
   ``fallback: unscorable``, the group has no rubric (``rubric_status: failed``) and every rollout
   is *unscorable* (reward ``None``: GRPO gives the group no advantage, i.e. no made-up learning
   signal, and metrics count it). A generic rubric was rejected as a fallback: criteria not
   derived from ``s`` would reward style, not content. At most ``max_criteria`` criteria are kept
   (bounding the judge's cost).
2. **Judging.** The judge answers yes/no for every (rollout, criterion) pair: all pairs of the batch
   in one batched call (deduplicated, cached across steps, ordered by shared prefix:
   :mod:`.judge_schedule`), greedy, a few tokens each; unparsed answers are re-asked (batched,
   bounded) and then recorded as ``met=None``; a request that failed after the backend's retries
   is recorded ``met=None, failed=true``. Both are *unscorable* verdicts.
3. **Reward** = criteria met / criteria (the paper's ``R_rub``). A rollout with unscorable
   verdicts is itself unscorable (``None``) unless their share is at most
   ``max_unscorable_share`` (default 0): then the reward is met / scorable criteria, recorded as
   ``n_scored < n_criteria``. Never "no" for an unscorable verdict, never a silent
   re-normalisation. Then the optional length penalty (:mod:`.length_penalty`: add or replace),
   on scorable rewards only.

Whether the paper's judge saw the question is not published: ``judge_sees_question`` (default
off) shows it the conversation (``prompt.messages``), never ``gold_answer`` or ``rubric``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import structlog
from pydantic import Field, model_validator

from cat_framework import (
    Completion,
    Criterion,
    Reference,
    RewardDeriver,
    Rewards,
    RolloutGroup,
)
from cat_plugins.prompts import render
from cat_plugins.rewards.judge_schedule import ask_judge, judge_scheduler
from cat_plugins.rewards.judging import (
    PROMPT_TAGS,
    JudgeAnswer,
    ScorableParams,
    ask_batched,
    assess,
    chat,
    check_template,
    conversation_block,
    neutralize_tags,
    verdict_record,
)
from cat_plugins.rewards.length_penalty import LengthPenalty, count_tokens, penalize, penalized
from cat_plugins.rewards.xml_parsing import RubricMethod, RubricParse, parse_rubric, parse_verdict

log = structlog.get_logger("cat_plugins.rewards")

RubricStatus = Literal["ok", "partial", "failed"]
RubricFallback = Literal["partial", "unscorable"]


@dataclass(frozen=True)
class ProposedRubric:
    """The rubric used for one group, with how it was obtained (recorded in every detail)."""

    criteria: tuple[str, ...]
    status: RubricStatus
    attempts: int
    method: RubricMethod = "none"
    n_dropped: int = 0
    raw: str = ""
    error: str | None = None  # the anchor's request failed after its retries


def choose_rubric(
    parses: Sequence[RubricParse], *, min_criteria: int, max_criteria: int, fallback: str
) -> ProposedRubric:
    """Pick the rubric from a group's proposal attempts (the rules of the module docstring)."""
    if not parses:
        return ProposedRubric((), "failed", 0)
    best = max(parses, key=lambda p: len(p.criteria))  # first of equals: the earliest attempt
    n = len(best.criteria)
    if n >= min_criteria:
        status: RubricStatus = "ok"
    elif n and fallback == "partial":
        status = "partial"
    else:
        return ProposedRubric((), "failed", len(parses), best.method)
    kept = best.criteria[:max_criteria]
    return ProposedRubric(kept, status, len(parses), best.method, n - len(kept))


def _enough(parsed: RubricParse, min_criteria: int) -> RubricParse | None:
    """A proposal counts as parsed (no retry) once it has ``min_criteria`` criteria."""
    return parsed if len(parsed.criteria) >= min_criteria else None


class RubricParams(ScorableParams):
    min_criteria: int = Field(
        5, ge=1, description="Fewest criteria a proposal must have (paper: n >= 5)."
    )
    max_criteria: int = Field(
        10, ge=1, description="Criteria kept per rubric (the first ones); bounds judge calls."
    )
    max_retries: int = Field(
        1, ge=0, description="Extra anchor calls for a group whose proposal had too few criteria."
    )
    fallback: RubricFallback = Field(
        "partial",
        description="After the retries: 'partial' uses a short rubric if it has any criterion; "
        "'unscorable' gives the group no reward (None: no signal). Counted in details.",
    )
    proposal_template: str = Field(
        "rubric_proposal",
        description="Template name or path, with $reference and optionally $min_criteria.",
    )
    judge_template: str = Field(
        "rubric_judge",
        description="Template name or path, with $response, $criterion and $question_block.",
    )
    proposal_max_new_tokens: int = Field(
        512, ge=1, description="Token budget of the anchor's rubric."
    )
    proposal_temperature: float = Field(
        0.0, ge=0.0, description="Temperature of the first proposal (0 = greedy)."
    )
    judge_sees_question: bool = Field(
        False,
        description="Show the judge the conversation (not published; default: response only).",
    )
    length_penalty: LengthPenalty | None = Field(
        None, description="Optional penalty for long rollouts (paper, HealthBench: -1 over 750)."
    )

    @model_validator(mode="after")
    def _bounds(self) -> RubricParams:
        if self.max_criteria < self.min_criteria:
            raise ValueError(
                f"max_criteria ({self.max_criteria}) < min_criteria ({self.min_criteria})"
            )
        # templates are checked here, so `validate` (not the first judge call) reports them
        check_template(
            self.proposal_template,
            required={"reference"},
            allowed={"reference", "min_criteria"},
            param="proposal_template",
        )
        check_template(
            self.judge_template,
            required={"response", "criterion"}
            | ({"question_block"} if self.judge_sees_question else set()),
            allowed={"response", "criterion", "question_block"},
            param="judge_template",
        )
        return self


class RubricReward(RewardDeriver):
    """Self-proposed rubric: the anchor writes criteria from the reference, a judge checks them."""

    name = "rubric"
    tasks = frozenset({"freeform"})
    Params: ClassVar[type[RubricParams]] = RubricParams
    params: RubricParams

    # ------------------------------------------------------------------------------ proposal

    def proposal_prompt(self, reference: Reference) -> str:
        """The anchor's prompt: built from the reference text only."""
        return render(
            self.params.proposal_template,
            reference=neutralize_tags(reference.text.strip(), PROMPT_TAGS),
            min_criteria=str(self.params.min_criteria),
        )

    def propose(self, references: Sequence[Reference]) -> list[ProposedRubric]:
        """One rubric per reference; all proposals (and each retry round) in one anchor call."""
        p = self.params
        todo = [i for i, r in enumerate(references) if r.text.strip()]
        answers = ask_batched(
            self.require_roles().anchor,
            [chat(self.proposal_prompt(references[i])) for i in todo],
            lambda text: _enough(parse_rubric(text), p.min_criteria),
            max_new_tokens=p.proposal_max_new_tokens,
            temperature=p.proposal_temperature,
            max_retries=p.max_retries,
            retry_temperature=p.retry_temperature,
            seed=p.seed,
        )
        rubrics = [ProposedRubric((), "failed", 0)] * len(references)
        for i, answer in zip(todo, answers, strict=True):
            chosen = choose_rubric(
                [parse_rubric(raw) for raw in answer.raws],
                min_criteria=p.min_criteria,
                max_criteria=p.max_criteria,
                fallback=p.fallback,
            )
            if chosen.status != "ok":
                chosen = replace(chosen, raw=answer.raw, error=answer.error)
            rubrics[i] = chosen
        return rubrics

    # ------------------------------------------------------------------------------ judging

    def judge_prompt(self, group: RolloutGroup, rollout_text: str, criterion: str) -> str:
        """The judge's prompt for one (rollout, criterion); the conversation only if enabled."""
        qb = conversation_block(group.prompt.messages) if self.params.judge_sees_question else ""
        return render(
            self.params.judge_template,
            response=neutralize_tags(rollout_text.strip(), PROMPT_TAGS),
            criterion=neutralize_tags(criterion, PROMPT_TAGS),
            question_block=qb,
        )

    def derive(
        self, groups: Sequence[RolloutGroup], references: Sequence[Reference]
    ) -> list[Rewards]:
        if len(groups) != len(references):
            raise ValueError(f"{len(groups)} groups but {len(references)} references")
        p = self.params
        rubrics = self.propose(references)
        keys = [
            (g, r, c)
            for g, group in enumerate(groups)
            for r in range(len(group.rollouts))
            for c in range(len(rubrics[g].criteria))
        ]
        answers = ask_judge(
            self,
            [
                chat(
                    self.judge_prompt(
                        groups[g], groups[g].rollouts[r].text, rubrics[g].criteria[c]
                    ),
                    p.system_message,
                )
                for g, r, c in keys
            ],
            parse_verdict,
        )
        judged = dict(zip(keys, answers, strict=True))
        out = []
        for g, group in enumerate(groups):
            n = len(rubrics[g].criteria)
            scored = [
                self._score(rubrics[g], rollout, [judged[(g, r, c)] for c in range(n)])
                for r, rollout in enumerate(group.rollouts)
            ]
            out.append(Rewards([v for v, _ in scored], [d for _, d in scored]))
        self._log_batch(rubrics, answers)
        return out

    def _score(
        self, rubric: ProposedRubric, rollout: Completion, asked: Sequence[JudgeAnswer[bool]]
    ) -> tuple[float | None, dict[str, Any]]:
        """One rollout's reward and details from its verdicts (module docstring, step 3)."""
        p = self.params
        check = assess(asked, p.max_unscorable_share)
        n_met = sum(1 for a in asked if a.value is True)
        score = None if check.unscorable else n_met / check.n_scored
        n_tokens, exact = count_tokens(rollout)
        reason = None
        if check.unscorable:
            reason = "rubric_failed" if not rubric.criteria else "verdicts"
        details = {
            "score": score,
            "n_met": n_met,
            **check.details(),
            "unscorable_reason": reason,
            "n_retried": sum(1 for a in asked if a.attempts > 1),
            "verdicts": [
                verdict_record(Criterion(text), a)
                for text, a in zip(rubric.criteria, asked, strict=True)
            ],
            "rubric": list(rubric.criteria),
            "rubric_status": rubric.status,
            "rubric_attempts": rubric.attempts,
            "rubric_method": rubric.method,
            "rubric_dropped": rubric.n_dropped,
            **({"rubric_raw": rubric.raw} if rubric.status != "ok" else {}),
            **({"rubric_error": rubric.error} if rubric.error else {}),
            "n_tokens": n_tokens,
            "tokens_exact": exact,
            "length_penalized": penalized(n_tokens, p.length_penalty),
        }
        return penalize(score, n_tokens, p.length_penalty), details

    def _log_batch(self, rubrics: Sequence[ProposedRubric], answers: Sequence[Any]) -> None:
        fallbacks = sum(1 for r in rubrics if r.status != "ok")
        unscorable = sum(1 for a in answers if a.value is None)
        if fallbacks or unscorable:
            log.warning(
                "rubric reward fallbacks",
                rubric_partial=sum(1 for r in rubrics if r.status == "partial"),
                rubric_failed=sum(1 for r in rubrics if r.status == "failed"),
                verdicts_unparsed=sum(1 for a in answers if a.value is None and not a.failed),
                verdicts_failed=sum(1 for a in answers if a.failed),
                verdicts_total=len(answers),
                **(judge_scheduler(self).last.to_dict() if self.params.judge_schedule else {}),
            )
