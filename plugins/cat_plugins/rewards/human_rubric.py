"""HealthBench's physician rubrics as reward: the oracle variant (and the benchmark's scorer).

The only reward that reads ``prompt.rubric``. Each (rollout, criterion) pair is graded with
HealthBench's own grader prompt (``healthbench_grader``, verbatim from openai/simple-evals), shown
the conversation as ``role: content`` turns (the prompt's messages plus the rollout as the
``assistant`` turn) and the item as ``[points] criterion``, with simple-evals' system message.
All pairs of a batch go to the judge in one batched call.

Score of one rollout (:func:`healthbench_score`, simple-evals' ``calculate_score``): the points of
the met criteria, negative ones included, over the sum of positive points; unclipped (it can be
negative); ``None`` when there are no positive points. The benchmark number is the mean clipped to
[0, 1] (:func:`healthbench_benchmark_score`).

Differences from simple-evals, all deliberate: the grader is greedy by default (simple-evals
samples at 0.5) and retries are bounded (simple-evals retries until it gets a bool). A verdict
that stays unparsed, or whose request failed, is *unscorable* (``met=None``). A text with
unscorable verdicts gets no score (``None``) unless their share of its criteria is at most
``max_unscorable_share`` (default 0); under it they are left out of both sums, recorded as
``n_scored < n_criteria``. A ``None`` score is a ``None`` reward in training and, as
``eval.scorer``, an unscored reference that the evaluation counts, never a silent 0.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import structlog
from pydantic import Field, model_validator

from cat_framework import (
    ConfigError,
    Criterion,
    Prompt,
    Reference,
    RewardDeriver,
    Rewards,
    RolloutGroup,
    Verdict,
)
from cat_plugins.prompts import render
from cat_plugins.rewards.judge_schedule import ask_judge
from cat_plugins.rewards.judging import (
    Assessment,
    JudgeAnswer,
    ScorableParams,
    assess,
    chat,
    check_template,
    format_conversation,
    log_unscorable,
    verdict_record,
)
from cat_plugins.rewards.length_penalty import LengthPenalty, count_tokens, penalize, penalized
from cat_plugins.rewards.xml_parsing import strip_fences

log = structlog.get_logger("cat_plugins.rewards")

#: simple-evals' grader system message (``OPENAI_SYSTEM_MESSAGE_API``)
GRADER_SYSTEM_MESSAGE = "You are a helpful assistant."

_CRITERIA_MET = re.compile(r"[\"']?criteria_met[\"']?\s*[:=]\s*[\"']?(true|false)\b", re.I)
_BOOL_WORDS = {"true": True, "false": False, "yes": True, "no": False}

# ------------------------------------------------------------------------------- pure functions


def healthbench_score(points: Sequence[float], met: Sequence[bool | None]) -> float | None:
    """simple-evals' ``calculate_score``: Σ points of met items / Σ positive points.

    Items with ``met=None`` (unscorable) count in neither sum: callers decide first whether the
    text is scorable at all (:func:`~cat_plugins.rewards.judging.assess`). ``None`` without
    positive points.
    """
    if len(points) != len(met):
        raise ValueError(f"{len(points)} criteria but {len(met)} verdicts")
    possible = sum(p for p, m in zip(points, met, strict=True) if p > 0 and m is not None)
    if possible <= 0:
        return None
    return sum(p for p, m in zip(points, met, strict=True) if m is True) / possible


def healthbench_benchmark_score(scores: Sequence[float | None]) -> float:
    """The benchmark number: ``np.clip(np.mean(scores), 0, 1)`` (simple-evals'
    ``_compute_clipped_stats``). ``None`` scores (no positive points) are left out."""
    values = [s for s in scores if s is not None]
    if not values:
        raise ValueError("no HealthBench scores to average")
    return float(np.clip(np.mean(values), 0, 1))


def format_points(points: float) -> str:
    """Points as simple-evals prints them: ``10`` for whole numbers (its data holds ints)."""
    return str(int(points)) if float(points).is_integer() else str(points)


def rubric_item(criterion: Criterion) -> str:
    """simple-evals' ``str(RubricItem)``: ``[points] criterion``."""
    return f"[{format_points(criterion.points)}] {criterion.text}"


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _BOOL_WORDS.get(value.strip().lower())
    return None


def parse_grader_json(text: str) -> tuple[bool | None, str | None]:
    """``(criteria_met, explanation)`` from a grader's reply; ``(None, None)`` when unreadable.

    Like simple-evals, fences are stripped and the JSON read; unlike it, a JSON object anywhere
    in the text is found (the last one with ``criteria_met`` wins), ``"true"``/``"false"``
    strings are accepted, and a bare ``"criteria_met": true`` is read from broken JSON.
    """
    text = strip_fences(text or "").strip()
    decoder = json.JSONDecoder()
    found: tuple[bool | None, str | None] = (None, None)
    for start in [m.start() for m in re.finditer(r"\{", text)]:
        try:
            obj, _ = decoder.raw_decode(text, start)
        except ValueError:
            continue
        if isinstance(obj, dict) and "criteria_met" in obj:
            met = _as_bool(obj["criteria_met"])
            if met is not None:
                explanation = obj.get("explanation")
                found = (met, explanation if isinstance(explanation, str) else None)
    if found[0] is not None:
        return found
    loose = _CRITERIA_MET.findall(text)
    return (loose[-1].lower() == "true", None) if loose else (None, None)


# ------------------------------------------------------------------------------- the reward


@dataclass(frozen=True)
class Graded:
    """One text graded against a physician rubric. ``score is None``: unscorable (too many
    unscorable verdicts, or no positive points among the scored criteria)."""

    score: float | None
    verdicts: tuple[Verdict, ...]
    n_retried: int
    assessment: Assessment
    records: tuple[dict[str, Any], ...] = ()

    def details(self) -> dict[str, Any]:
        """The grading as recorded per rollout (or per graded reference in evaluation)."""
        reason = None
        if self.score is None:
            reason = "verdicts" if self.assessment.unscorable else "no_positive_points"
        return {
            "score": self.score,
            "n_met": sum(1 for v in self.verdicts if v.met is True),
            **self.assessment.details(),
            "unscorable": self.score is None,
            "unscorable_reason": reason,
            "n_retried": self.n_retried,
            "verdicts": list(self.records),
        }


class HumanRubricParams(ScorableParams):
    judge_max_new_tokens: int = Field(
        512, ge=1, description="Token budget of one grader reply (an explanation plus JSON)."
    )
    system_message: str | None = Field(
        GRADER_SYSTEM_MESSAGE, description="System message of the grader (simple-evals')."
    )
    grader_template: str = Field(
        "healthbench_grader",
        description="Template name or path, with $conversation and $rubric_item "
        "(default: HealthBench's grader prompt, verbatim).",
    )
    length_penalty: LengthPenalty | None = Field(
        None, description="Optional penalty for long rollouts (paper, HealthBench: -1 over 750)."
    )

    @model_validator(mode="after")
    def _template(self) -> HumanRubricParams:
        fields = {"conversation", "rubric_item"}  # checked at `validate`, not at the first call
        check_template(
            self.grader_template, required=fields, allowed=fields, param="grader_template"
        )
        return self


class HumanRubricReward(RewardDeriver):
    """Physician rubrics (HealthBench points, negatives allowed) graded by the judge: the oracle."""

    name = "human_rubric"
    tasks = frozenset({"freeform"})
    Params: ClassVar[type[HumanRubricParams]] = HumanRubricParams
    params: HumanRubricParams

    def grader_prompt(self, prompt: Prompt, text: str, criterion: Criterion) -> str:
        """HealthBench's grader prompt for one (response text, criterion)."""
        turns = [*prompt.messages, {"role": "assistant", "content": text}]
        return render(
            self.params.grader_template,
            conversation=format_conversation(turns),
            rubric_item=rubric_item(criterion),
        )

    def grade(self, items: Sequence[tuple[Prompt, str]]) -> list[Graded]:
        """Grade each ``(prompt, text)`` against the prompt's physician rubric: every
        (text, criterion) pair in one batched judge call. Also how evaluation scores a
        reference."""
        for prompt, _ in items:
            if not prompt.rubric:
                raise ConfigError(
                    f"human_rubric needs physician rubrics, but prompt {prompt.id!r} has none: "
                    "use a dataset that provides them (healthbench)"
                )
        p = self.params
        keys = [(i, c) for i, (prompt, _) in enumerate(items) for c in prompt.rubric or ()]
        answers = ask_judge(
            self,
            [
                chat(self.grader_prompt(items[i][0], items[i][1], c), p.system_message)
                for i, c in keys
            ],
            lambda text: parse_grader_json(text)[0],
        )
        per_item: list[list[tuple[Criterion, JudgeAnswer[bool]]]] = [[] for _ in items]
        for (i, c), a in zip(keys, answers, strict=True):
            per_item[i].append((c, a))
        graded = []
        for pairs in per_item:
            verdicts = tuple(Verdict(c, a.value, a.raw) for c, a in pairs)
            check = assess([a for _, a in pairs], p.max_unscorable_share)
            score = None
            if not check.unscorable:
                score = healthbench_score(
                    [v.criterion.points for v in verdicts], [v.met for v in verdicts]
                )
            graded.append(
                Graded(
                    score,
                    verdicts,
                    sum(1 for _, a in pairs if a.attempts > 1),
                    check,
                    tuple(verdict_record(c, a) for c, a in pairs),
                )
            )
        log_unscorable("human_rubric", answers)
        return graded

    def derive(
        self, groups: Sequence[RolloutGroup], references: Sequence[Reference]
    ) -> list[Rewards]:
        """Rewards from physician rubrics (``references`` are not used: this is the oracle)."""
        p = self.params
        graded = iter(self.grade([(g.prompt, o.text) for g in groups for o in g.rollouts]))
        out = []
        for group in groups:
            values, details = [], []
            for rollout in group.rollouts:
                result = next(graded)
                n_tokens, exact = count_tokens(rollout)
                values.append(penalize(result.score, n_tokens, p.length_penalty))
                details.append(
                    {
                        **result.details(),
                        "n_tokens": n_tokens,
                        "tokens_exact": exact,
                        "length_penalized": penalized(n_tokens, p.length_penalty),
                    }
                )
            out.append(Rewards(values, details))
        return out


__all__ = [
    "GRADER_SYSTEM_MESSAGE",
    "Graded",
    "HumanRubricReward",
    "format_points",
    "healthbench_benchmark_score",
    "healthbench_score",
    "parse_grader_json",
    "rubric_item",
]
