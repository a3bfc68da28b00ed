"""The data that flows through a CaT run.

Every value is a frozen dataclass that round-trips through JSON (``to_dict`` / ``from_dict``), so
each step can be written to a run's audit log (``records.jsonl``) and read back for reports.
Sequences are stored as tuples so a frozen value really cannot change under a consumer's feet;
constructors accept lists for convenience.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

FinishReason = Literal["stop", "length"]
Message = Mapping[str, str]

T = TypeVar("T", bound="_Serializable")


def _freeze_messages(messages: Sequence[Message] | None) -> tuple[dict[str, str], ...] | None:
    if messages is None:
        return None
    frozen = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} must be a mapping with 'role' and 'content', got {m!r}")
        frozen.append({"role": str(m["role"]), "content": str(m["content"])})
    return tuple(frozen)


class _Serializable:
    """JSON round-trip shared by all data types."""

    def to_dict(self) -> dict[str, Any]:
        return _to_jsonable(self)

    @classmethod
    def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
        hooks = _NESTED.get(cls.__name__, {})
        kwargs = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name not in data:
                continue
            value = data[f.name]
            nested = hooks.get(f.name)
            if nested is not None and value is not None:
                target, many = nested
                value = [target.from_dict(v) for v in value] if many else target.from_dict(value)
            kwargs[f.name] = value
        return cls(**kwargs)


def _to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    return value


@dataclass(frozen=True)
class Prompt(_Serializable):
    """One task instance.

    ``gold_answer`` and ``rubric`` are for evaluation only: the teacher path never reads them
    (CaT is label-free), which a test enforces.
    """

    id: str
    messages: tuple[dict[str, str], ...]
    gold_answer: str | None = None
    rubric: tuple[Criterion, ...] | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "messages", _freeze_messages(self.messages))
        if self.rubric is not None:
            object.__setattr__(self, "rubric", tuple(self.rubric))

    @property
    def question(self) -> str:
        """The text of the last user turn (what a question-aware prompt would show)."""
        for m in reversed(self.messages):
            if m["role"] == "user":
                return m["content"]
        return self.messages[-1]["content"] if self.messages else ""


@dataclass(frozen=True)
class GenerationRequest(_Serializable):
    """What a backend is asked to sample: chat ``messages`` (templated by the backend) or raw
    ``text``, ``n`` samples each, with the usual sampling knobs."""

    messages: tuple[dict[str, str], ...] | None = None
    text: str | None = None
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "messages", _freeze_messages(self.messages))
        object.__setattr__(self, "stop", tuple(self.stop))
        if (self.messages is None) == (self.text is None):
            raise ValueError("GenerationRequest needs exactly one of 'messages' or 'text'")
        if self.n < 1:
            raise ValueError(f"GenerationRequest.n must be >= 1, got {self.n}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    def replace(self, **changes: Any) -> GenerationRequest:
        return dataclasses.replace(self, **changes)


def _number(value: Any) -> Any:
    """``value`` if it is a number: ``float("NaN")`` and ``int("7")`` would accept text (a
    run file's ``"NaN"`` log-prob), and ``True`` is no token id."""
    if isinstance(value, (str, bytes, bool)):
        raise TypeError(f"{value!r} is not a number")
    return value


@dataclass(frozen=True)
class Completion(_Serializable):
    """One sampled continuation. ``logprobs`` are the per-token log-probabilities of the sampled
    tokens under the sampling distribution (see the backend's docs for how temperature enters)."""

    text: str
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[float, ...] | None = None
    finish_reason: FinishReason = "stop"

    def __post_init__(self) -> None:
        object.__setattr__(self, "token_ids", tuple(int(_number(t)) for t in self.token_ids))
        if self.logprobs is not None:
            object.__setattr__(self, "logprobs", tuple(float(_number(x)) for x in self.logprobs))
        if self.finish_reason not in ("stop", "length"):
            raise ValueError(
                f"finish_reason must be 'stop' or 'length', not {self.finish_reason!r}"
            )

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


@dataclass(frozen=True)
class RolloutGroup(_Serializable):
    """The G rollouts the policy sampled for one prompt."""

    prompt: Prompt
    rollouts: tuple[Completion, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "rollouts", tuple(self.rollouts))

    def __len__(self) -> int:
        return len(self.rollouts)


@dataclass(frozen=True)
class Reference(_Serializable):
    """The teacher's estimate of a good answer for one group. ``answer`` is the extracted final
    answer when the task has one; ``details`` carries votes, perplexities, the anchor's raw output."""

    text: str
    method: str
    answer: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Criterion(_Serializable):
    """One binary rubric item. ``points`` may be negative (HealthBench penalties)."""

    text: str
    points: float = 1.0


@dataclass(frozen=True)
class Verdict(_Serializable):
    """A judge's decision on one (rollout, criterion). ``met is None`` means *unscorable*: the
    judge's output could not be parsed, or the request failed after its retries. An unscorable
    verdict is never counted as "no" nor dropped from the denominator: the rubric reward of a
    rollout with unscorable verdicts is itself unscorable (see :class:`Rewards`)."""

    criterion: Criterion
    met: bool | None
    raw: str = ""


@dataclass(frozen=True)
class Rewards(_Serializable):
    """One reward per rollout of a group, with per-rollout details (verdicts, answers).

    A value of ``None`` means *unscorable*: the teacher could not score that rollout (no reference
    answer, a judge that failed). GRPO leaves unscorable rollouts out of their group's mean and
    std and gives them advantage 0, so a teacher failure is never turned into a made-up reward.
    """

    values: tuple[float | None, ...]
    details: tuple[Mapping[str, Any], ...] = ()

    def __post_init__(self) -> None:
        values = tuple(None if v is None else float(v) for v in self.values)
        if any(v is not None and v != v for v in values):  # NaN: say None for unscorable
            raise ValueError("Rewards values must be numbers or None (unscorable), not NaN")
        object.__setattr__(self, "values", values)
        details = tuple(self.details) if self.details else tuple({} for _ in self.values)
        if len(details) != len(self.values):
            raise ValueError(
                f"Rewards has {len(self.values)} values but {len(details)} details entries"
            )
        object.__setattr__(self, "details", details)

    @property
    def scorable(self) -> tuple[bool, ...]:
        """Per rollout: whether the teacher produced a reward for it."""
        return tuple(v is not None for v in self.values)


_NESTED: dict[str, dict[str, tuple[type, bool]]] = {
    "Prompt": {"rubric": (Criterion, True)},
    "RolloutGroup": {"prompt": (Prompt, False), "rollouts": (Completion, True)},
    "Verdict": {"criterion": (Criterion, False)},
}

__all__ = [
    "Completion",
    "Criterion",
    "FinishReason",
    "GenerationRequest",
    "Message",
    "Prompt",
    "Reference",
    "Rewards",
    "RolloutGroup",
    "Verdict",
]
