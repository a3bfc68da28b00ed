"""Scheduling a step's judge questions: deduplicate, reuse verdicts, order by shared prefix.

A rubric reward asks G x |criteria| yes/no questions per prompt, every step. Many are repeats:
rollouts of a group are often identical (short answers), and a rollout text judged on a criterion
in one step can come back in a later one. :class:`JudgeScheduler` sits in front of
:func:`~cat_plugins.rewards.judging.ask_batched` and, per call:

1. **Deduplicates** identical conversations: each is asked once and its answer fanned out.
2. **Reuses verdicts** from a per-reward-instance (= per-run) cache keyed by the judge (backend
   name, model id, token budget) and a hash of the exact rendered conversation (which covers
   criterion, response and template). Only answers parsed on the *greedy first attempt* are
   cached: with ``judge_temperature > 0`` nothing is cached (a sampled judge is asked again, as
   it should be), answers that needed a sampled retry are not cached, and unparsed or failed
   ones are re-asked next time. Nothing is cached when the judge is the policy being trained
   (its weights change between steps). The cache is an LRU bounded by ``judge_cache_size``.
3. **Orders by prefix**: the remaining requests are sorted by their rendered text, so those
   sharing the longest prefix are adjacent, whatever the template (with ``rubric_judge`` the
   response comes first, so a rollout's criteria sit together). An engine with prefix caching
   (vLLM ``enable_prefix_caching``) then finds the shared prefix still cached, and a padded
   batch packs prompts of similar length. Answers are mapped back to the caller's order.

Everything left still goes to the backend in **one** ``generate`` call per attempt.
``judge_schedule: false`` restores the plain :func:`ask_batched` call (one request per question).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from cat_framework import Backend, Component
from cat_plugins.rewards.judging import JudgeAnswer, JudgeParams, ask_batched

log = structlog.get_logger("cat_plugins.rewards")

V = TypeVar("V")


@dataclass
class ScheduleStats:
    """Counts of one call (or, summed, of a run): questions, distinct ones, cache hits, asked."""

    requests: int = 0
    unique: int = 0
    cache_hits: int = 0
    asked: int = 0

    def add(self, other: ScheduleStats) -> None:
        self.requests += other.requests
        self.unique += other.unique
        self.cache_hits += other.cache_hits
        self.asked += other.asked

    def to_dict(self) -> dict[str, int]:
        return {
            "judge_requests": self.requests,
            "judge_unique": self.unique,
            "judge_cache_hits": self.cache_hits,
            "judge_asked": self.asked,
        }


def conversation_text(messages: Sequence[Mapping[str, str]]) -> str:
    """The rendered conversation as one string, turn by turn: its sort key and hash input."""
    return "\x1e".join(f"{m['role']}\x1f{m['content']}" for m in messages)


def judge_identity(backend: Backend) -> tuple[str, str | None]:
    """Which judge answered: backend name and, when its params have one, the model id."""
    model = getattr(getattr(backend, "params", None), "model", None)
    return backend.name, None if model is None else str(model)


class JudgeScheduler:
    """Deduplicating, caching, prefix-ordering front of :func:`ask_batched` (module docstring).

    One instance per reward instance, so the cache lives as long as the run; the cached values
    are what that reward's ``parse`` made of the outputs, so one scheduler serves one parser."""

    def __init__(self, cache_size: int = 100_000) -> None:
        self.cache_size = cache_size
        self._cache: OrderedDict[Hashable, JudgeAnswer[Any]] = OrderedDict()
        self.last = ScheduleStats()
        self.total = ScheduleStats()

    def __len__(self) -> int:
        return len(self._cache)

    def ask(
        self,
        backend: Backend,
        conversations: Sequence[Sequence[Mapping[str, str]]],
        parse: Callable[[str], V | None],
        *,
        max_new_tokens: int,
        cacheable: bool = True,
        **options: Any,
    ) -> list[JudgeAnswer[V]]:
        """:func:`ask_batched`'s answers for ``conversations``, in their order, asking the
        backend only for distinct, uncached ones, sorted by their text (``options``: the rest of
        :func:`ask_batched`'s keywords)."""
        use_cache = cacheable and options.get("temperature", 0.0) == 0.0 and self.cache_size > 0
        judge = (*judge_identity(backend), max_new_tokens)
        texts = [conversation_text(c) for c in conversations]
        first: dict[str, int] = {}  # text -> index of its first occurrence
        for i, text in enumerate(texts):
            first.setdefault(text, i)
        found: dict[str, JudgeAnswer[Any]] = {}
        keys: dict[str, Hashable] = {}
        for text in first:
            key = (*judge, hashlib.sha256(text.encode()).hexdigest())
            keys[text] = key
            hit = self._cache.get(key) if use_cache else None
            if hit is not None:
                self._cache.move_to_end(key)
                found[text] = hit
        todo = sorted(t for t in first if t not in found)
        answers = ask_batched(
            backend,
            [conversations[first[t]] for t in todo],
            parse,
            max_new_tokens=max_new_tokens,
            **options,
        )
        for text, answer in zip(todo, answers, strict=True):
            found[text] = answer
            if (
                use_cache
                and answer.value is not None
                and not answer.failed
                and answer.attempts == 1
            ):
                self._store(keys[text], answer)
        self.last = ScheduleStats(len(texts), len(first), len(first) - len(todo), len(todo))
        self.total.add(self.last)
        return [found[t] for t in texts]

    def _store(self, key: Hashable, answer: JudgeAnswer[Any]) -> None:
        self._cache[key] = answer
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)


def ask_judge(
    reward: Component,
    conversations: Sequence[Sequence[Mapping[str, str]]],
    parse: Callable[[str], V | None],
) -> list[JudgeAnswer[V]]:
    """Ask ``reward``'s judge role every conversation with the reward's :class:`JudgeParams`:
    through the reward's own :class:`JudgeScheduler` (created on first use), or plainly with
    ``judge_schedule: false``."""
    p = reward.params
    if not isinstance(p, JudgeParams):
        raise TypeError(f"{type(reward).__name__}.params must be JudgeParams, not {type(p)}")
    roles = reward.require_roles()
    options: dict[str, Any] = {
        "max_new_tokens": p.judge_max_new_tokens,
        "temperature": p.judge_temperature,
        "max_retries": p.max_judge_retries,
        "retry_temperature": p.retry_temperature,
        "seed": p.seed,
    }
    if not p.judge_schedule:
        return ask_batched(roles.judge, conversations, parse, **options)
    scheduler = judge_scheduler(reward)
    answers = scheduler.ask(
        roles.judge, conversations, parse, cacheable=roles.judge is not roles.policy, **options
    )
    log.debug("judge schedule", reward=reward.name, **scheduler.last.to_dict())
    return answers


def judge_scheduler(reward: Component) -> JudgeScheduler:
    """The reward's scheduler (its verdict cache), created on first use."""
    scheduler = reward.__dict__.get("_judge_scheduler")
    if scheduler is None:
        scheduler = JudgeScheduler(reward.params.judge_cache_size)  # type: ignore[attr-defined]
        reward.__dict__["_judge_scheduler"] = scheduler
    return scheduler


__all__ = [
    "JudgeScheduler",
    "ScheduleStats",
    "ask_judge",
    "conversation_text",
    "judge_identity",
    "judge_scheduler",
]
