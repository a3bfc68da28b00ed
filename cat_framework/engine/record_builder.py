"""Build the :class:`~cat_framework.records.RunRecord` of one prompt, the same way in every mode.

Gold data enters here only, for the audit fields (``correct``, a reference's ``correct``), after
the teacher has finished: the teacher path never reads it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cat_framework.answers import answers_equivalent, extract_answer, read_answer
from cat_framework.engine.diagnostics import MajorityReading, majority_answer
from cat_framework.records import ReferenceRecord, RolloutRecord, RunRecord
from cat_framework.types import Reference, Rewards, RolloutGroup


def task_of(group: RolloutGroup) -> str:
    return str(group.prompt.meta.get("task", "math"))


def graded_answer(text: str) -> str | None:
    """A rollout's answer as graded against gold (the lenient extraction of the ``single``
    baseline: the committed answer, else the last number; the programmatic reward reads
    committed answers only unless a pipeline names ``fallback: number``)."""
    return extract_answer(text)


def reference_correct(ref: Reference, gold: str | None) -> bool | None:
    """Whether a math reference's *committed* answer is the gold one (None without gold). A
    reference without an answer is wrong: its text is never searched for a last number."""
    if gold is None:
        return None
    return answers_equivalent(ref.answer, gold)


def build_record(
    mode: Any,
    step: int,
    group: RolloutGroup,
    references: Mapping[str, Reference],
    primary: str | None,
    *,
    rewards: Rewards | None = None,
    advantages: Sequence[float] | None = None,
    scores: Mapping[str, float | None] | None = None,
    grading: Mapping[str, Mapping[str, Any]] | None = None,
    n_trained: int | None = None,
    majority: MajorityReading | None = None,
) -> RunRecord:
    """One record: ``rewards``/``advantages`` cover the trained rollouts (the first
    ``len(rewards.values)``, or ``n_trained``); the rest were sampled only for the reference
    (``rollouts.reference_n``). ``majority``: how the diagnostics' majority vote reads the
    rollouts (the run's :func:`~cat_framework.engine.diagnostics.majority_reading`)."""
    p = group.prompt
    math_task = task_of(group) == "math"
    gold = p.gold_answer if math_task else None
    if n_trained is None:
        n_trained = len(rewards.values) if rewards is not None else len(group.rollouts)
    rollouts = []
    for i, c in enumerate(group.rollouts):
        trained = i < n_trained
        answer = graded_answer(c.text) if math_task else None
        rollouts.append(
            RolloutRecord.of(
                c,
                trained=trained,
                reward=rewards.values[i] if rewards is not None and trained else None,
                advantage=float(advantages[i]) if advantages is not None and trained else None,
                answer=answer,
                correct=answers_equivalent(answer, gold) if gold is not None else None,
                details=dict(rewards.details[i]) if rewards is not None and trained else {},
            )
        )
    refs = {
        label: ReferenceRecord.of(
            ref,
            score=None if scores is None else scores.get(label),
            correct=reference_correct(ref, gold) if math_task else None,
            grading=dict((grading or {}).get(label) or {}),
        )
        for label, ref in references.items()
    }
    diagnostics: dict[str, Any] = {}
    if math_task:
        vote = majority or MajorityReading()
        read = [read_answer(c.text, fallback=vote.fallback) for c in group.rollouts]
        diagnostics["majority_answer"] = majority_answer(read, vote.mode)
        diagnostics["majority_reading"] = vote.to_dict()
    return RunRecord(
        mode=mode,
        step=step,
        prompt_id=p.id,
        messages=[dict(m) for m in p.messages],
        rollouts=rollouts,
        references=refs,
        primary=primary,
        gold_answer=p.gold_answer,
        diagnostics=diagnostics,
    )


__all__ = ["build_record", "graded_answer", "reference_correct", "task_of"]
