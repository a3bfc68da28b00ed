"""Batched model-as-judge calls shared by the ``rubric``, ``human_rubric`` and ``judge`` rewards.

A judge is asked many small questions (G rollouts x n criteria per prompt). They all go to the
backend in **one** ``generate`` call, because a backend batches what it is given and one request
at a time wastes the accelerator. Outputs that cannot be parsed are re-asked, again in one
batched call for all of them, at most ``max_judge_retries`` times; whatever is still unparsed
comes back as ``None`` (the caller records it as ``met=None``). Retries sample at
``retry_temperature`` with a seed: re-asking a greedy judge would only repeat its answer.

A request that fails for good (a remote judge's :class:`PartialBatchError`, raised after the
backend's own retries) costs only itself: the answers that did arrive are kept, the failed item
comes back ``failed`` (``value=None``, ``error`` set) and is not re-asked here. Either way such an
item is *unscorable*; :func:`assess` applies the rewards' rule for a rollout with unscorable
verdicts (see "Unscorable rewards" in ``docs/concepts.md``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import structlog
from pydantic import Field

from cat_framework import (
    Backend,
    BackendError,
    ComponentParams,
    Criterion,
    GenerationRequest,
    Verdict,
)
from cat_plugins.backends.openai_wire import PartialBatchError
from cat_plugins.prompts import check_template, template_fields  # re-exported

log = structlog.get_logger("cat_plugins.rewards")

V = TypeVar("V")


class JudgeParams(ComponentParams):
    """Sampling and retry settings of the judge role."""

    judge_max_new_tokens: int = Field(
        32, ge=1, description="Token budget of one judge answer (yes/no needs very few)."
    )
    judge_temperature: float = Field(
        0.0, ge=0.0, description="Temperature of the first judge call (0 = greedy)."
    )
    max_judge_retries: int = Field(
        2, ge=0, description="Times an unparsed judge answer is re-asked before it counts as None."
    )
    retry_temperature: float = Field(
        0.7, ge=0.0, description="Temperature of retries (a greedy judge would repeat itself)."
    )
    seed: int = Field(0, description="Base seed of retry sampling (attempt k uses seed + k).")
    system_message: str | None = Field(
        None, description="Optional system message sent before every judge prompt."
    )
    judge_schedule: bool = Field(
        True,
        description="Deduplicate a step's judge questions, reuse greedy verdicts across steps and "
        "order requests by shared prefix (judge_schedule.py); false: ask every question as is.",
    )
    judge_cache_size: int = Field(
        100_000,
        ge=0,
        description="Most verdicts the run's judge cache keeps (LRU; 0 = no cache).",
    )


class ScorableParams(JudgeParams):
    """Judge settings of the rewards that score a rollout over several criteria."""

    max_unscorable_share: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Largest share of a rollout's criteria that may be unscorable (unparsed or "
        "failed verdicts) and still score it, over the scorable ones; above it the rollout "
        "gets no reward (None). 0: any unscorable verdict makes the rollout unscorable.",
    )


@dataclass(frozen=True)
class JudgeAnswer(Generic[V]):
    """One judged item: the parsed value (``None`` = unscorable), every raw output in order, and
    ``error`` when the request failed for good (then ``value`` is ``None``)."""

    value: V | None
    raws: tuple[str, ...]
    error: str | None = None

    @property
    def failed(self) -> bool:
        """The request failed after the backend's retries (no output, vs unparsed output)."""
        return self.error is not None

    @property
    def raw(self) -> str:
        """The output the value was parsed from (the last attempt's)."""
        return self.raws[-1] if self.raws else ""

    @property
    def attempts(self) -> int:
        return len(self.raws)


def chat(prompt: str, system_message: str | None = None) -> list[dict[str, str]]:
    """A one-turn chat (with an optional system message) for a rendered prompt."""
    head = [{"role": "system", "content": system_message}] if system_message else []
    return [*head, {"role": "user", "content": prompt}]


def ask_batched(
    backend: Backend,
    conversations: Sequence[Sequence[Mapping[str, str]]],
    parse: Callable[[str], V | None],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    max_retries: int = 0,
    retry_temperature: float = 0.7,
    seed: int = 0,
) -> list[JudgeAnswer[V]]:
    """Ask every conversation once, batched; re-ask only the unparsed ones, batched again.
    Requests that fail for good come back ``failed``; nothing that was answered is lost."""
    raws: list[list[str]] = [[] for _ in conversations]
    values: list[V | None] = [None] * len(conversations)
    errors: list[str | None] = [None] * len(conversations)
    pending = list(range(len(conversations)))
    for attempt in range(max_retries + 1):
        if not pending:
            break
        first = attempt == 0
        requests = [
            GenerationRequest(
                messages=conversations[i],
                n=1,
                temperature=temperature if first else retry_temperature,
                max_new_tokens=max_new_tokens,
                seed=None if first else seed + attempt,
            )
            for i in pending
        ]
        outputs, failures = _generate(backend, requests)
        still = []
        for i, out, failure in zip(pending, outputs, failures, strict=True):
            if failure is not None:
                errors[i] = failure  # the backend already retried it: not re-asked here
                continue
            raws[i].append(out[0].text if out else "")
            values[i] = parse(raws[i][-1])
            if values[i] is None:
                still.append(i)
        pending = still
    return [JudgeAnswer(v, tuple(r), e) for v, r, e in zip(values, raws, errors, strict=True)]


def _generate(
    backend: Backend, requests: list[GenerationRequest]
) -> tuple[list[Any], list[str | None]]:
    """``(outputs, failures)``: a failed request has output ``None`` and its error message."""
    try:
        outputs: list[Any] = list(backend.generate(requests))
        failures: list[str | None] = [None] * len(outputs)
    except PartialBatchError as exc:
        outputs = list(exc.results)
        errs = exc.errors if len(exc.errors) == len(outputs) else [None] * len(outputs)
        failures = [
            str(errs[i] or exc) if i in exc.failed or out is None else None
            for i, out in enumerate(outputs)
        ]
        log.warning(
            "requests failed after their retries; those items are unscorable",
            backend=backend.name,
            failed=sum(f is not None for f in failures),
            total=len(requests),
            error=next((f for f in failures if f is not None), str(exc)),
        )
    if len(outputs) != len(requests):
        raise BackendError(
            f"judge backend {backend.name!r} returned {len(outputs)} results "
            f"for {len(requests)} requests"
        )
    return outputs, failures


@dataclass(frozen=True)
class Assessment:
    """Whether a rollout judged on several criteria can be scored, and how many could not."""

    n_criteria: int
    n_unparsed: int
    n_failed: int
    unscorable: bool

    @property
    def n_unscorable(self) -> int:
        return self.n_unparsed + self.n_failed

    @property
    def n_scored(self) -> int:
        """Criteria the reward is computed over (all of them unless some were unscorable)."""
        return 0 if self.unscorable else self.n_criteria - self.n_unscorable

    def details(self) -> dict[str, Any]:
        return {
            "n_criteria": self.n_criteria,
            "n_scored": self.n_scored,
            "n_unparsed": self.n_unparsed,
            "n_failed": self.n_failed,
            "n_unscorable": self.n_unscorable,
            "unscorable": self.unscorable,
        }


def assess(answers: Sequence[JudgeAnswer[Any]], max_unscorable_share: float = 0.0) -> Assessment:
    """The rule for a rollout's verdicts: unscorable when it has none, when none is scorable, or
    when the unscorable share exceeds ``max_unscorable_share``; never re-normalised silently."""
    n = len(answers)
    failed = sum(1 for a in answers if a.failed)
    unparsed = sum(1 for a in answers if a.value is None and not a.failed)
    bad = failed + unparsed
    unscorable = n == 0 or bad == n or bad / n > max_unscorable_share
    return Assessment(n, unparsed, failed, unscorable)


def verdict_record(criterion: Criterion, answer: JudgeAnswer[bool]) -> dict[str, Any]:
    """A verdict as recorded in reward details: ``failed`` tells a failed request (no output,
    ``error`` says why) from an unparsed output (``met=None`` with its ``raw``)."""
    record = {**Verdict(criterion, answer.value, answer.raw).to_dict(), "failed": answer.failed}
    if answer.error is not None:
        record["error"] = answer.error
    return record


def format_conversation(messages: Sequence[Mapping[str, str]]) -> str:
    """``role: content`` turns separated by blank lines (HealthBench's conversation format)."""
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def neutralize_tags(text: str, tags: Sequence[str]) -> str:
    """Defuse our delimiter tags inside model text (``</response>`` -> ``&lt;/response>``) so a
    rollout cannot close its slot in a judge prompt and write instructions after it."""
    if not tags:
        return text
    pattern = re.compile(r"<(\s*/?\s*(?:" + "|".join(map(re.escape, tags)) + r")\b)", re.I)
    return pattern.sub(r"&lt;\1", text)


#: the delimiter tags of the judge prompts, defused inside any model or user text put into them
PROMPT_TAGS = ("response", "reference", "criterion", "conversation", "answer", "rubric")


def conversation_block(messages: Sequence[Mapping[str, str]]) -> str:
    """The ``$question_block`` of a question-aware judge prompt: the conversation, delimited."""
    text = neutralize_tags(format_conversation(messages), PROMPT_TAGS)
    return f"\n<conversation>\n{text}\n</conversation>\n"


def log_unscorable(what: str, answers: Sequence[JudgeAnswer[Any]]) -> None:
    """One warning per batch with unscorable verdicts: how many were unparsed, how many failed."""
    failed = sum(1 for a in answers if a.failed)
    unscorable = sum(1 for a in answers if a.value is None)
    if unscorable:
        log.warning(
            f"{what} unscorable verdicts",
            unparsed=unscorable - failed,
            failed=failed,
            total=len(answers),
        )


__all__ = [
    "PROMPT_TAGS",
    "Assessment",
    "JudgeAnswer",
    "JudgeParams",
    "ScorableParams",
    "ask_batched",
    "assess",
    "chat",
    "check_template",
    "conversation_block",
    "format_conversation",
    "log_unscorable",
    "neutralize_tags",
    "template_fields",
    "verdict_record",
]
