"""The paper's reference diagnostics, as rates with counts, for any aggregator.

Computed from run records (:mod:`cat_framework.records`), so a training step, a periodic
evaluation and ``mode: evaluate`` report the same numbers, and a third-party aggregator gets
them too: nothing here looks at an aggregator's name, only at the reference it produced.

For each rate ``name`` the metrics carry ``name`` (the rate, absent when nothing was counted),
``name/count`` (numerator) and ``name/total`` (denominator):

* ``reference/no_answer``: references without a committed final answer (math), over prompts.
  Such a reference is *no reference*: its group gets no learning signal, unless
  ``trainer.reference_fallback`` replaced it (counted here too, and as ``reference/fallback``).
* ``reference/disagree_majority``: the reference's answer differs from the rollouts' majority
  answer, over prompts where both exist. Synthesis that never disagrees is only a vote. The
  majority is the run's own (:func:`majority_reading`): rollouts read at the answer level and
  compared as its ``majority`` aggregator does, so a majority estimator never disagrees with it.
* ``reference/correct_when_disagreeing`` (audit, gold only): the reference is right, over the
  disagreeing prompts.
* ``reference/correct_when_all_wrong`` (audit, gold only): the reference is right, over prompts
  where every rollout is wrong: what selection can never do.
* ``reward/unscorable``: trained rollouts the teacher could not score, over trained rollouts.
* ``reward/length_corr``: Pearson correlation of reward and length over scorable rollouts
  (the known length hack shows up as a large positive value).
* ``judge/failed``, ``judge/unparsed`` (judge-based rewards, whose details count verdicts): the
  (rollout, criterion) requests that failed after their retries, or whose answer could not be
  parsed, over all verdicts asked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cat_framework.answers import (
    EquivalenceMode,
    Fallback,
    answers_equivalent,
    cluster_answers,
    normalize_answer,
)
from cat_framework.answers.equivalence import AnswerLike
from cat_framework.records import RunRecord

if TYPE_CHECKING:
    from cat_framework.pipeline import Pipeline


@dataclass(frozen=True)
class MajorityReading:
    """How the diagnostics' majority vote reads and compares rollout answers: the answer level
    (``fallback``) and the equivalence (``mode``) of the run's majority vote."""

    fallback: Fallback = "phrase"
    mode: EquivalenceMode = "math_verify"

    def to_dict(self) -> dict[str, str]:
        return {"fallback": self.fallback, "mode": self.mode}

    @classmethod
    def from_dict(cls, data: Any) -> MajorityReading:
        """A record's ``majority_reading``; records written before it existed voted at phrase."""
        if not isinstance(data, dict):
            return cls()
        return cls(data.get("fallback", "phrase"), data.get("mode", "math_verify"))


def majority_reading(pipeline: Pipeline, *, evaluation: bool) -> MajorityReading:
    """The run's majority vote, so ``reference/disagree_majority`` compares against the very
    vote the run configures: the first answer-vote aggregator it names (``majority``, or any
    aggregator class with ``is_answer_vote``), those of the records' own part first
    (``eval.aggregators`` for an ``evaluation``'s records, else the teacher's
    ``aggregator`` and ``trainer.reference_fallback``), else the ``reward``'s reading of
    rollouts (its ``fallback``), else the ``majority`` aggregator's defaults (``phrase``,
    ``math_verify``)."""
    comps = pipeline.components
    evals = sorted((k for k in comps if k[:2] == ("eval", "aggregators")), key=lambda k: k[2])
    teacher = [("aggregator",), ("trainer", "reference_fallback")]
    order = evals + teacher if evaluation else teacher + evals
    for key in order:
        comp = comps.get(key)
        if comp is not None and getattr(comp.cls, "is_answer_vote", False):
            return _reading_of(comp.params)
    reward = comps.get(("reward",))
    return _reading_of(reward.params) if reward is not None else MajorityReading()


def _reading_of(params: Any) -> MajorityReading:
    default = MajorityReading()
    fallback = getattr(params, "fallback", default.fallback)
    mode = getattr(params, "mode", default.mode)
    return MajorityReading(
        fallback if fallback in ("none", "phrase", "number") else default.fallback,
        mode if mode in ("math_verify", "string") else default.mode,
    )


def majority_answer(
    answers: Sequence[AnswerLike], mode: EquivalenceMode = "math_verify"
) -> str | None:
    """The most common answer (clusters of answers equal both ways, as the ``majority``
    aggregator forms them; a tie goes to the cluster with the smallest normalised answer, so
    the result does not depend on rollout order)."""
    clusters = cluster_answers(list(answers), mode)
    if not clusters:
        return None
    best = max(len(c) for c in clusters)
    heads = [_head([_text(answers[i]) for i in c]) for c in clusters if len(c) == best]
    return _head(heads)


def _head(texts: Sequence[str | None]) -> str | None:
    present = [t for t in texts if t is not None]
    return min(present, key=lambda a: (normalize_answer(a), a)) if present else None


def _text(answer: AnswerLike) -> str | None:
    return answer if answer is None or isinstance(answer, str) else answer.text


def same_answer(a: str | None, b: str | None, mode: EquivalenceMode = "math_verify") -> bool:
    """The equality majority voting uses (math-verify both ways: it treats its first argument
    as gold)."""
    return answers_equivalent(a, b, mode, symmetric=True)


def _rate(out: dict[str, float], name: str, count: int, total: int) -> None:
    out[f"{name}/count"] = float(count)
    out[f"{name}/total"] = float(total)
    if total:
        out[name] = count / total


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson correlation; None when undefined (fewer than 2 points or a constant series)."""
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx <= 0 or syy <= 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def reference_diagnostics(
    records: Sequence[RunRecord], label: str | None = None, *, task: str = "math"
) -> dict[str, float]:
    """Rates over ``records`` for the reference ``label`` (default: each record's primary)."""
    out: dict[str, float] = {}
    refs = [(r, r.references.get(label) if label else r.reference) for r in records]
    refs = [(r, ref) for r, ref in refs if ref is not None]
    if task == "math" and refs:
        replaced = sum("fallback_from" in ref.details for _, ref in refs)
        missing = sum(ref.answer is None or "fallback_from" in ref.details for _, ref in refs)
        _rate(out, "reference/no_answer", missing, len(refs))  # the aggregator's own reference
        if replaced:
            _rate(out, "reference/fallback", replaced, len(refs))
        both = [
            (r, ref)
            for r, ref in refs
            if ref.answer is not None and r.diagnostics.get("majority_answer") is not None
        ]
        disagree = [
            (r, ref)
            for r, ref in both
            if not same_answer(
                ref.answer,
                r.diagnostics["majority_answer"],
                MajorityReading.from_dict(r.diagnostics.get("majority_reading")).mode,
            )
        ]
        _rate(out, "reference/disagree_majority", len(disagree), len(both))
        audited = [(r, ref) for r, ref in disagree if ref.correct is not None]
        _rate(
            out,
            "reference/correct_when_disagreeing",
            sum(bool(ref.correct) for _, ref in audited),
            len(audited),
        )
        all_wrong = [
            (r, ref)
            for r, ref in refs
            if ref.correct is not None
            and r.rollouts
            and all(ro.correct is False for ro in r.rollouts)
        ]
        _rate(
            out,
            "reference/correct_when_all_wrong",
            sum(bool(ref.correct) for _, ref in all_wrong),
            len(all_wrong),
        )
    return out


def reward_diagnostics(records: Sequence[RunRecord]) -> dict[str, float]:
    """Unscorable share and reward-length correlation over the trained rollouts."""
    out: dict[str, float] = {}
    trained = [ro for r in records for ro in r.rollouts if r.mode != "evaluate" and ro.trained]
    if not trained:
        return out
    _rate(out, "reward/unscorable", sum(ro.reward is None for ro in trained), len(trained))
    judged = [ro.details for ro in trained if "n_criteria" in ro.details]
    if judged:  # a judge-based reward: its (rollout, criterion) verdicts
        total = sum(int(d.get("n_criteria") or 0) for d in judged)
        _rate(out, "judge/failed", sum(int(d.get("n_failed") or 0) for d in judged), total)
        _rate(out, "judge/unparsed", sum(int(d.get("n_unparsed") or 0) for d in judged), total)
    scored = [ro for ro in trained if ro.reward is not None]
    corr = pearson([float(ro.reward) for ro in scored], [float(ro.tokens) for ro in scored])  # type: ignore[arg-type]
    if corr is not None:
        out["reward/length_corr"] = corr
    return out


def step_diagnostics(records: Sequence[RunRecord], task: str) -> dict[str, Any]:
    """Everything a training step reports about its teacher."""
    return {**reference_diagnostics(records, task=task), **reward_diagnostics(records)}


def teacher_metrics(records: Sequence[RunRecord], task: str) -> dict[str, float]:
    """What a training step logs about its teacher: the reference diagnostics (rates with
    counts) and how often the reference matched gold, where prompts carry it (audit only, like
    TTRL's label accuracy). Our trainer and the TRL adapter log the same."""
    out = dict(step_diagnostics(records, task))
    judged = [
        rec.reference.correct
        for rec in records
        if rec.reference is not None and rec.reference.correct is not None
    ]
    if judged:
        out["reference/accuracy"] = sum(judged) / len(judged)
    return out


__all__ = [
    "MajorityReading",
    "majority_answer",
    "majority_reading",
    "pearson",
    "reference_diagnostics",
    "reward_diagnostics",
    "same_answer",
    "step_diagnostics",
    "teacher_metrics",
]
