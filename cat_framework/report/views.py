"""Turn one :class:`~cat_framework.records.RunRecord` into what the sample section shows.

The record's layout is the engine's one schema; only a rollout's ``details`` are free-form (each
reward plugin's own), and of those the view reads the judge verdicts, the rubric and the
programmatic ``match``. A rollout *disagrees with the reference* when its answer differs from
the primary reference's answer (or its reward details say ``match: false``), or when its reward
is below the best of its group. Being wrong against gold (``correct: false``, an audit field)
is a separate mark.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cat_framework.records import ReferenceRecord, RolloutRecord, RunRecord
from cat_framework.report.load import numeric

#: an evaluation record has no ``primary``: rollouts are compared with CaT's own reference
EVALUATE_PRIMARY = "synthesis"


@dataclass
class VerdictView:
    criterion: str
    met: bool | None
    points: float | None = None
    raw: str = ""
    failed: bool = False  # the judge request failed (vs. an answer that could not be parsed)
    error: str = ""

    @property
    def word(self) -> str:
        """yes / no / unparsed / failed: what a reader should see for this verdict."""
        if self.met is not None:
            return "yes" if self.met else "no"
        return "failed" if self.failed else "unparsed"


@dataclass
class ReferenceView:
    label: str
    text: str
    method: str | None = None
    answer: str | None = None
    score: float | None = None
    verdicts: list[VerdictView] = field(default_factory=list)  # gold grading (evaluate)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class RolloutView:
    text: str
    reward: float | None = None
    advantage: float | None = None
    correct: bool | None = None
    answer: str | None = None
    tokens: int | None = None
    finish_reason: str | None = None
    verdicts: list[VerdictView] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)  # why it disagrees with the reference
    trained: bool = True  # False: sampled only to build the reference (rollouts.reference_n)

    @property
    def disagrees(self) -> bool:
        return bool(self.reasons)


@dataclass
class PromptView:
    prompt_id: str
    step: int | None
    messages: list[tuple[str, str]]
    gold_answer: str | None
    rollouts: list[RolloutView]
    references: list[ReferenceView]
    rubric: list[tuple[str, float | None]]
    rubric_status: str | None = None
    primary: ReferenceView | None = None  # the one rollouts are compared with

    @property
    def question(self) -> str:
        """The last user turn (else the last message), for the one-line summary."""
        for role, content in reversed(self.messages):
            if role == "user":
                return content
        return self.messages[-1][1] if self.messages else ""


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _opt_str(value: Any) -> str | None:
    return None if value is None else _text(value)


def _items(raw: Any) -> list[Any]:
    """A JSON list from free-form ``details`` (a plugin's own keys), else nothing."""
    return list(raw) if isinstance(raw, list) else []


def _mapping(raw: Any) -> Mapping[str, Any]:
    """A record's free-form map (``details``, ``grading``); a hand-edited non-map reads empty."""
    return raw if isinstance(raw, Mapping) else {}


def _verdicts(raw: Any) -> list[VerdictView]:
    """A reward's ``verdicts`` detail: the judge plugins' ``verdict_record`` layout
    (``{"criterion": {"text", "points"}, "met", "raw", "failed", "error"?}``)."""
    out = []
    for v in _items(raw):
        if not isinstance(v, Mapping):
            continue
        crit = v.get("criterion") if isinstance(v.get("criterion"), Mapping) else {}
        met = v.get("met")
        out.append(
            VerdictView(
                _text(crit.get("text")),
                met if isinstance(met, bool) else None,
                numeric(crit.get("points")),
                _text(v.get("raw")),
                v.get("failed") is True,
                _text(v.get("error")),
            )
        )
    return out


def _reference(label: str, ref: ReferenceRecord) -> ReferenceView:
    return ReferenceView(
        label=label,
        text=_text(ref.text),
        method=_opt_str(ref.method),
        answer=_opt_str(ref.answer),
        score=numeric(ref.score),
        verdicts=_verdicts(_mapping(ref.grading).get("verdicts")),
        details=dict(_mapping(ref.details)),
    )


def _rollout(ro: RolloutRecord) -> RolloutView:
    det = _mapping(ro.details)
    tokens = numeric(ro.tokens)
    view = RolloutView(
        text=_text(ro.text),
        reward=numeric(ro.reward),
        advantage=numeric(ro.advantage),
        correct=ro.correct if isinstance(ro.correct, bool) else None,
        answer=_opt_str(ro.answer),
        tokens=None if tokens is None else int(tokens),
        finish_reason=_opt_str(ro.finish_reason),
        verdicts=_verdicts(det.get("verdicts")),
        trained=ro.trained is not False,
    )
    if det.get("match") is False:  # the programmatic reward's verdict
        view.reasons.append("answer differs from reference")
    return view


def _same_answer(a: str, b: str) -> bool:
    if a.strip() == b.strip():
        return True
    try:
        from cat_framework.answers import answers_equivalent

        return bool(answers_equivalent(a, b))
    except Exception:  # a report never fails on a grader problem
        return False


def _mark_disagreements(rollouts: list[RolloutView], primary: ReferenceView | None) -> None:
    ref_answer = primary.answer if primary else None
    rewards = [r.reward for r in rollouts if r.reward is not None]
    best = max(rewards) if rewards else None
    spread = bool(rewards) and max(rewards) > min(rewards)
    for r in rollouts:
        if (
            ref_answer is not None
            and r.answer is not None
            and not r.reasons
            and not _same_answer(r.answer, ref_answer)
        ):
            r.reasons.append("answer differs from reference")
        if spread and r.reward is not None and best is not None and r.reward < best:
            r.reasons.append("reward below group best")


def _primary(rec: RunRecord, references: list[ReferenceView]) -> ReferenceView | None:
    """The record's ``primary`` (train, sft), else the CaT reference of an evaluation."""
    for label in (rec.primary, EVALUATE_PRIMARY):
        found = next((r for r in references if r.label == label), None)
        if found is not None:
            return found
    return references[0] if references else None


def prompt_view(rec: RunRecord) -> PromptView:
    """A :class:`PromptView` of one run record."""
    rollouts = [_rollout(ro) for ro in rec.rollouts]
    references = [_reference(label, ref) for label, ref in rec.references.items()]
    primary = _primary(rec, references)
    _mark_disagreements(rollouts, primary)
    first = next((d for ro in rec.rollouts if (d := _mapping(ro.details))), {})
    rubric = [(_text(c), None) for c in _items(first.get("rubric"))]  # the rubric reward's
    if not rubric:  # a fixed rubric (human_rubric): the criteria of the verdicts
        rubric = [(v.criterion, v.points) for v in next((r.verdicts for r in rollouts), [])]
    return PromptView(
        prompt_id=_text(rec.prompt_id),
        step=rec.step,
        messages=[(_text(m.get("role", "?")), _text(m.get("content"))) for m in rec.messages],
        gold_answer=_opt_str(rec.gold_answer),
        rollouts=rollouts,
        references=references,
        primary=primary,
        rubric=rubric,
        rubric_status=_opt_str(first.get("rubric_status")),
    )
