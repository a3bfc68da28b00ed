"""Turn one ``records.jsonl`` line (evaluate or train layout, or something close) into a view.

The readers are deliberately lenient: a field may live on the record, on its ``prompt``, on each
rollout, or in the reward details, and any of them may be missing. A rollout *disagrees with the
reference* when its answer differs from the reference's answer (or its reward details say
``match: false``), or when its reward is below the best of its group. Being wrong against gold
(``correct: false``, evaluate runs) is a separate mark.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cat_framework.report.load import numeric

#: the reference that rollouts are compared with in evaluate records (first present wins)
PRIMARY_LABELS = ("synthesis", "reference")


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


def _messages(raw: Any) -> list[tuple[str, str]]:
    if isinstance(raw, str):
        return [("user", raw)]
    out = []
    for m in raw if isinstance(raw, Sequence) else []:
        if isinstance(m, Mapping):
            out.append((_text(m.get("role", "?")), _text(m.get("content", ""))))
        else:
            out.append(("?", _text(m)))
    return out


def _verdicts(raw: Any) -> list[VerdictView]:
    out = []
    for v in raw if isinstance(raw, Sequence) and not isinstance(raw, str) else []:
        if not isinstance(v, Mapping):
            continue
        crit = v.get("criterion")
        if isinstance(crit, Mapping):
            text, points = _text(crit.get("text")), numeric(crit.get("points"))
        else:
            text, points = _text(crit), numeric(v.get("points"))
        met = v.get("met")
        out.append(
            VerdictView(
                text,
                met if isinstance(met, bool) else None,
                points,
                _text(v.get("raw")),
                v.get("failed") is True,
                _text(v.get("error")),
            )
        )
    return out


def _rubric(raw: Any) -> list[tuple[str, float | None]]:
    out = []
    for c in raw if isinstance(raw, Sequence) and not isinstance(raw, str) else []:
        if isinstance(c, Mapping):
            out.append((_text(c.get("text")), numeric(c.get("points"))))
        else:
            out.append((_text(c), None))
    return out


def _reference(label: str, raw: Any) -> ReferenceView:
    if not isinstance(raw, Mapping):
        return ReferenceView(label=label, text=_text(raw))
    grading = raw.get("grading") if isinstance(raw.get("grading"), Mapping) else {}
    details = raw.get("details") if isinstance(raw.get("details"), Mapping) else {}
    return ReferenceView(
        label=label,
        text=_text(raw.get("text")),
        method=_opt_str(raw.get("method")),
        answer=_opt_str(raw.get("answer")),
        score=numeric(raw.get("score")),
        verdicts=_verdicts(grading.get("verdicts")),
        details=dict(details),
    )


def _references(rec: Mapping[str, Any]) -> list[ReferenceView]:
    refs = rec.get("references")
    if isinstance(refs, Mapping):
        return [_reference(str(k), v) for k, v in refs.items()]
    if isinstance(refs, Sequence) and not isinstance(refs, str):
        return [
            _reference(_text(r.get("method") if isinstance(r, Mapping) else None) or f"#{i}", r)
            for i, r in enumerate(refs)
        ]
    ref = rec.get("reference")
    if ref is None:
        return []
    label = ref.get("method") if isinstance(ref, Mapping) else None
    return [_reference(_text(label) or "reference", ref)]


def _rewards(rec: Mapping[str, Any]) -> tuple[list[Any], list[Mapping[str, Any]]]:
    """Reward values and details, from ``rewards`` as a list or as a ``Rewards`` dict."""
    raw = rec.get("rewards")
    values: list[Any] = []
    details: list[Any] = []
    if isinstance(raw, Mapping):
        values = list(raw.get("values") or [])
        details = list(raw.get("details") or [])
    elif isinstance(raw, Sequence) and not isinstance(raw, str):
        for v in raw:
            if isinstance(v, Mapping):
                values.append(v.get("value", v.get("reward")))
                details.append(v.get("details") or {})
            else:
                values.append(v)
    for key in ("reward_details", "details"):
        if not details and isinstance(rec.get(key), Sequence):
            details = list(rec[key])
    return values, [d if isinstance(d, Mapping) else {} for d in details]


def _at(seq: Sequence[Any], i: int) -> Any:
    return seq[i] if i < len(seq) else None


def _rollout(raw: Any, reward: Any, advantage: Any, details: Mapping[str, Any]) -> RolloutView:
    ro = raw if isinstance(raw, Mapping) else {"text": raw}
    own = ro.get("details") or ro.get("reward_details")
    det: Mapping[str, Any] = own if isinstance(own, Mapping) and own else details
    correct = ro.get("correct")
    tokens = numeric(ro.get("tokens", ro.get("n_tokens", det.get("n_tokens"))))
    if tokens is None and isinstance(ro.get("token_ids"), Sequence):
        tokens = float(len(ro["token_ids"]))
    view = RolloutView(
        text=_text(ro.get("text", ro.get("completion", ro.get("content")))),
        reward=numeric(ro.get("reward", reward)),
        advantage=numeric(ro.get("advantage", advantage)),
        correct=correct if isinstance(correct, bool) else None,
        answer=_opt_str(ro.get("answer", det.get("answer"))),
        tokens=None if tokens is None else int(tokens),
        finish_reason=_opt_str(ro.get("finish_reason")),
        verdicts=_verdicts(det.get("verdicts")),
    )
    if det.get("match") is False:
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


def prompt_view(rec: Mapping[str, Any]) -> PromptView:
    """A :class:`PromptView` of one record; unknown keys are ignored, missing ones left empty."""
    prompt = rec.get("prompt")
    p: Mapping[str, Any] = prompt if isinstance(prompt, Mapping) else {}
    messages = _messages(rec.get("messages", p.get("messages", prompt if prompt else [])))
    if not messages and p.get("question"):
        messages = [("user", _text(p["question"]))]
    group = rec.get("group") if isinstance(rec.get("group"), Mapping) else {}
    raw_rollouts = rec.get("rollouts", rec.get("completions", group.get("rollouts"))) or []
    if not isinstance(raw_rollouts, Sequence) or isinstance(raw_rollouts, str):
        raw_rollouts = []
    values, details = _rewards(rec)
    advantages = rec.get("advantages") if isinstance(rec.get("advantages"), Sequence) else []
    rollouts = [
        _rollout(ro, _at(values, i), _at(advantages, i), _at(details, i) or {})
        for i, ro in enumerate(raw_rollouts)
    ]
    references = _references(rec)
    primary = next(
        (r for lab in PRIMARY_LABELS for r in references if r.label == lab),
        references[0] if references else None,
    )
    _mark_disagreements(rollouts, primary)
    first = details[0] if details else {}
    rubric = _rubric(rec.get("rubric", first.get("rubric")))
    if not rubric:
        rubric = [(v.criterion, v.points) for v in next((r.verdicts for r in rollouts), [])]
    step = numeric(rec.get("step"))
    return PromptView(
        prompt_id=_text(rec.get("prompt_id", p.get("id", "?"))),
        step=None if step is None else int(step),
        messages=messages,
        gold_answer=_opt_str(rec.get("gold_answer", p.get("gold_answer"))),
        rollouts=rollouts,
        references=references,
        rubric=rubric,
        rubric_status=_opt_str(rec.get("rubric_status", first.get("rubric_status"))),
    )
