"""One-step-off rollouts (``trainer.async_rollouts: 1``): the next step's rollouts are sampled
while this step's update runs.

Step t trains on rollouts sampled with the weights *before* step t-1's update: the sampler
(an engine or a sampling copy of the weights, never the trained module itself) keeps serving
the old weights until the update ends and the new ones are pushed. The one-step staleness is
corrected like an engine mismatch, by truncated per-token importance weights
``min(pi_theta_old / pi_sampler, cap)`` (:func:`cat_framework.engine.grpo.importance_weights`),
and every step records its staleness (``rollouts/staleness``: 0 for a step sampled in place).

Only rollout sampling overlaps the update (its reference log-probs included); the teacher runs
before the sampling starts, because its roles (a judge that is the policy, minPPL scoring with
the policy) may share the sampler, and a backend is not assumed to serve two threads at once.

Exact resume: a checkpoint taken after step t holds step t+1's rollouts, already sampled with
weights no checkpoint keeps, as plain JSON (``pending-rollouts-<process>.json``); a resumed run
trains on exactly those (the placement keeps them in its per-process checkpoint slot
:data:`SLOT`).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
import torch

from cat_framework.components import Backend
from cat_framework.engine.checkpoint import Checkpoint, load_extra
from cat_framework.engine.checkpoint_check import FLAG_SLOTS
from cat_framework.engine.teacher import explore
from cat_framework.errors import CatError
from cat_framework.pipeline.schema import Rollouts
from cat_framework.types import Completion, Prompt, RolloutGroup

log = structlog.get_logger("cat_framework.async_rollouts")

#: the checkpoint slot holding each process's rollouts sampled ahead (pending-rollouts-<i>.json)
SLOT = "pending-rollouts"
FLAG_SLOTS["pending_rollouts"] = SLOT  # how checkpoints before the generic slots marked it

#: what a step needs to sample: its prompts and their seeds (None: no such step)
Plan = Callable[[int], "tuple[Sequence[Prompt], Sequence[int]] | None"]


@dataclass
class Taken:
    """A step's rollouts and how many updates ago their weights were current."""

    groups: list[RolloutGroup]
    sample_seconds: float  # how long sampling them took (in the background for staleness 1)
    staleness: int


class RolloutsAhead:
    """Samples step t+1's rollouts on a background thread while step t updates."""

    def __init__(self, sampler: Backend, rollouts: Rollouts, plan: Plan) -> None:
        self.sampler, self.rollouts, self.plan = sampler, rollouts, plan
        self._thread: threading.Thread | None = None
        self._outcome: tuple[int, list[RolloutGroup], float] | BaseException | None = None
        self._pending: tuple[int, list[RolloutGroup], float] | None = None
        self._device: int | None = None

    def take(self, step: int, prompts: Sequence[Prompt], seeds: Sequence[int]) -> Taken:
        """``step``'s rollouts: those sampled ahead, or (the first step, the first after a
        resume without any) sampled now with the current weights."""
        if self._pending is not None and self._pending[0] == step:
            _, groups, seconds = self._pending
            self._pending = None
            return Taken(groups, seconds, staleness=1)
        return Taken(*self._explore(prompts, seeds), staleness=0)

    def _explore(
        self, prompts: Sequence[Prompt], seeds: Sequence[int]
    ) -> tuple[list[RolloutGroup], float]:
        t0 = time.perf_counter()
        groups = explore(self.sampler, prompts, self.rollouts, seeds=seeds)
        return groups, time.perf_counter() - t0

    def start(self, step: int) -> None:
        """Begin sampling ``step``'s rollouts with the weights the sampler holds now."""
        planned = self.plan(step)
        if planned is None:
            return
        prompts, seeds = planned
        self._outcome = None
        self._device = torch.cuda.current_device() if torch.cuda.is_initialized() else None
        self._thread = threading.Thread(
            target=self._sample, args=(step, list(prompts), list(seeds)),
            name="cat-rollouts-ahead", daemon=True,
        )  # fmt: skip
        self._thread.start()

    def _sample(self, step: int, prompts: list[Prompt], seeds: list[int]) -> None:
        try:
            if self._device is not None:  # a new thread starts on GPU 0, not the process's own
                torch.cuda.set_device(self._device)
            self._outcome = (step, *self._explore(prompts, seeds))
        except BaseException as exc:  # re-raised on the training thread by join()
            self._outcome = exc

    def join(self) -> float:
        """Wait for the background sampling (before new weights reach the sampler); returns the
        seconds the update waited for it. An error in the sampling is raised here."""
        if self._thread is None:
            return 0.0
        t0 = time.perf_counter()
        self._thread.join()
        self._thread = None
        outcome, self._outcome = self._outcome, None
        if isinstance(outcome, BaseException):
            raise outcome
        assert outcome is not None
        self._pending = outcome
        return time.perf_counter() - t0

    def close(self) -> None:
        """Let a background sampling finish, dropping its rollouts (a run that failed mid-step:
        the sampler must not be closed under it)."""
        if self._thread is not None:
            self._thread.join()
            self._thread, self._outcome = None, None

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any] | None:
        """The sampled-ahead rollouts as plain data (for this process's checkpoint file)."""
        if self._pending is None:
            return None
        step, groups, seconds = self._pending
        return {
            "step": step,
            "sample_seconds": seconds,
            "prompt_ids": [g.prompt.id for g in groups],
            "rollouts": [[c.to_dict() for c in g.rollouts] for g in groups],
        }

    def resume(
        self,
        ckpt: Checkpoint,
        step: int,
        prompts: Sequence[Prompt],
        processes: int,
        index: int,
        vocab: int | None = None,
    ) -> None:
        """Train ``step`` (the one after ``ckpt``) on the rollouts the checkpoint holds for it,
        sampled with weights no checkpoint keeps; ``prompts`` are that step's prompts for this
        process (``index`` of ``processes``) by the run's schedule, which the file must name in
        order; its token ids must be inside the model's ``vocab``. With another process count
        than the checkpoint's (each process kept its own share) there are none to use: ``step``
        then samples in place, one step less stale."""
        written = ckpt.state.get("processes", 1)
        if SLOT in ckpt.extra and written != processes:
            log.warning(
                "the checkpoint's sampled-ahead rollouts were split over another process count: "
                "sampling them again with the current weights",
                checkpoint=str(ckpt.path), processes=written, now=processes,
            )  # fmt: skip
            return
        pending = load_extra(ckpt, SLOT, index)
        if pending is not None:
            data, where = pending
            groups, seconds = parse_pending(
                data, step, prompts, self.rollouts.sampled, str(where), vocab
            )
            self._pending = (step, groups, seconds)


def check_values(completion: Any, vocab: int | None) -> str | None:
    """What is wrong with one rollout's numbers as a run file holds them (None: nothing): the
    token ids index the model's embeddings (an id outside them fails deep in a forward pass),
    and the sampler's log-probs weigh the update (a NaN there ends in NaN weights)."""
    if not isinstance(completion, dict):
        return None  # Completion.from_dict says what it needs
    ids, logps = completion.get("token_ids", []), completion.get("logprobs")
    if isinstance(ids, list):
        for t in ids:
            if type(t) is not int:
                return f"token id {t!r} is not an integer"
            if t < 0 or (vocab is not None and t >= vocab):
                limit = f"0 to {vocab - 1}" if vocab is not None else "0 or more"
                return f"token id {t} is outside the model's vocabulary ({limit})"
    if isinstance(logps, list):
        for x in logps:
            # a sampler's rounding can give a log-prob a hair above 0; a real one is never more
            if type(x) not in (int, float) or not math.isfinite(x) or x > LOGP_ROUNDING:
                return f"log-prob {x!r} is not a finite number <= 0 (a log-probability)"
    return None


def pending_values(vocab: int | None) -> Callable[[Any], str | None]:
    """A checkpoint check (``latest_checkpoint``): what is wrong with the numbers of a
    pending-rollouts file's content, so a resume falls back to an older checkpoint instead of
    failing on one process while the others wait."""

    def problem(data: Any) -> str | None:
        rows = data.get("rollouts") if isinstance(data, dict) else None
        for k, completions in enumerate(rows if isinstance(rows, list) else ()):
            for j, c in enumerate(completions if isinstance(completions, list) else ()):
                if (fault := check_values(c, vocab)) is not None:
                    return f"group {k}, rollout {j}: {fault}"
        return None

    return problem


#: how far above 0 a stored log-prob may be from float rounding alone
LOGP_ROUNDING = 1e-4


def parse_pending(
    data: Any,
    step: int,
    prompts: Sequence[Prompt],
    per_group: int,
    where: str,
    vocab: int | None = None,
) -> tuple[list[RolloutGroup], float]:
    """Validate a pending-rollouts file's content (it comes from a run directory: data, never
    trusted) against the prompts the schedule gives for its step and the model's ``vocab``."""

    def bad(why: str) -> CatError:
        return CatError(f"{where}: {why}; resume from an earlier checkpoint or start the run again")

    if not isinstance(data, dict) or type(data.get("step")) is not int:
        raise bad("not a pending-rollouts object with an integer 'step'")
    if data["step"] != step:
        raise bad(f"it holds rollouts for step {data['step']}, but the run resumes at step {step}")
    seconds = data.get("sample_seconds", 0.0)
    if type(seconds) not in (int, float) or not 0 < seconds < float("inf"):
        raise bad(f"'sample_seconds' is {seconds!r}, not a positive number")
    ids, rows = data.get("prompt_ids"), data.get("rollouts")
    if not isinstance(ids, list) or not isinstance(rows, list) or len(ids) != len(rows):
        raise bad("'prompt_ids' and 'rollouts' must be lists of the same length")
    expected = [p.id for p in prompts]
    if ids != expected:
        raise bad(
            f"its rollouts are for prompts {ids[:3]}, but step {data['step']} samples "
            f"{expected[:3]} (was data.train, trainer.prompts_per_step or the seed changed?)"
        )
    groups = []
    for k, (prompt, completions) in enumerate(zip(prompts, rows, strict=True)):
        try:
            if not isinstance(completions, list) or len(completions) != per_group:
                raise TypeError(f"a list of {per_group} completions is required (rollouts.n)")
            for j, c in enumerate(completions):
                if (fault := check_values(c, vocab)) is not None:
                    raise bad(f"group {k}, rollout {j}: {fault}")
            rollouts = tuple(Completion.from_dict(c) for c in completions)
        except (TypeError, ValueError, AttributeError) as exc:
            raise bad(f"group {k} is not valid rollouts ({exc})") from None
        if any(c.logprobs is not None and len(c.logprobs) != len(c.token_ids) for c in rollouts):
            raise bad(f"group {k} has rollouts whose log-probs and tokens differ in length")
        groups.append(RolloutGroup(prompt, rollouts))
    return groups, float(seconds)


__all__ = [
    "SLOT",
    "Plan",
    "RolloutsAhead",
    "Taken",
    "check_values",
    "parse_pending",
    "pending_values",
]
