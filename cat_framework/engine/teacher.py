"""The CaT teacher: explore (G policy rollouts per prompt), estimate a reference per group, derive
rewards. Shared by test-time evaluation and the trainer; it never reads gold data."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from cat_framework.components import Aggregator, Backend, RewardDeriver
from cat_framework.engine.schedule import derive_seed
from cat_framework.pipeline.schema import Rollouts
from cat_framework.types import GenerationRequest, Prompt, Reference, Rewards, RolloutGroup


def rollout_requests(
    prompts: Sequence[Prompt],
    rollouts: Rollouts,
    seed: int | None,
    seeds: Sequence[int] | None = None,
) -> list[GenerationRequest]:
    """One request per prompt asking for G samples (the backend batches them). Each request gets
    its own seed derived from ``seed`` and its position, so prompts never share a random stream;
    ``seeds`` gives them explicitly (the trainer ties them to a prompt's place in the global batch,
    so a run samples the same rollouts whatever the number of processes)."""
    if seeds is None:
        seeds = [derive_seed(seed, i) for i in range(len(prompts))] if seed is not None else None
    return [
        GenerationRequest(
            messages=p.messages,
            n=rollouts.sampled,
            temperature=rollouts.temperature,
            top_p=rollouts.top_p,
            top_k=rollouts.top_k,
            max_new_tokens=rollouts.max_new_tokens,
            stop=tuple(rollouts.stop),
            seed=None if seeds is None else seeds[i],
        )
        for i, p in enumerate(prompts)
    ]


def explore(
    policy: Backend,
    prompts: Sequence[Prompt],
    rollouts: Rollouts,
    seed: int | None = None,
    seeds: Sequence[int] | None = None,
) -> list[RolloutGroup]:
    """Sample G rollouts for every prompt in one batched backend call."""
    outputs = policy.generate(rollout_requests(prompts, rollouts, seed, seeds))
    if len(outputs) != len(prompts):
        raise RuntimeError(f"backend returned {len(outputs)} results for {len(prompts)} prompts")
    return [RolloutGroup(p, tuple(o)) for p, o in zip(prompts, outputs, strict=True)]


@dataclass
class TeacherOutput:
    """References (one per group, built from *all* its rollouts) and rewards (one per
    *trained* rollout: the first ``n_trained`` of each group; ``None`` = unscorable)."""

    references: list[Reference]
    rewards: list[Rewards]
    timings: dict[str, float] = field(default_factory=dict)
    trained: list[RolloutGroup] = field(default_factory=list)


def trained_part(groups: Sequence[RolloutGroup], n: int | None) -> list[RolloutGroup]:
    """The rollouts GRPO trains on: the first ``n`` of each group (samples are i.i.d., so the
    first ``n`` are an unbiased subset of the ``reference_n`` the reference was built from)."""
    if n is None:
        return list(groups)
    return [RolloutGroup(g.prompt, g.rollouts[:n]) for g in groups]


def needs_answer(group: RolloutGroup) -> bool:
    """Math references must commit to a final answer to be a reference at all."""
    return group.prompt.meta.get("task", "math") == "math"


@dataclass
class Teacher:
    """Aggregator + reward deriver: groups in, one reference and G rewards per group out.

    With ``fallback`` (``trainer.reference_fallback``), a math reference without a committed
    answer is replaced by the fallback aggregator's reference for that group (recorded in its
    details as ``fallback_from``); without one, the reward deriver sees the answerless reference
    and (programmatic reward) scores the group as unscorable: no learning signal."""

    aggregator: Aggregator
    reward: RewardDeriver | None
    fallback: Aggregator | None = None

    def references(self, groups: Sequence[RolloutGroup]) -> list[Reference]:
        """One reference per group, from all its rollouts (CaT-SFT stops here)."""
        references = self.aggregator.aggregate(groups)
        if len(references) != len(groups):
            raise RuntimeError(
                f"aggregator {self.aggregator.name!r} returned {len(references)} references for "
                f"{len(groups)} groups"
            )
        return self._apply_fallback(groups, references)

    def teach(self, groups: Sequence[RolloutGroup], n_trained: int | None = None) -> TeacherOutput:
        if self.reward is None:
            raise RuntimeError("this teacher has no reward deriver")
        t0 = time.perf_counter()
        references = self.references(groups)
        t1 = time.perf_counter()
        trained = trained_part(groups, n_trained)
        rewards = self.reward.derive(trained, references)
        t2 = time.perf_counter()
        if len(rewards) != len(groups):
            raise RuntimeError(
                f"reward deriver {self.reward.name!r} returned {len(rewards)} rewards for "
                f"{len(groups)} groups"
            )
        for g, r in zip(trained, rewards, strict=True):
            if len(r.values) != len(g.rollouts):
                raise RuntimeError(
                    f"reward deriver {self.reward.name!r} returned {len(r.values)} rewards for "
                    f"{len(g.rollouts)} rollouts"
                )
        return TeacherOutput(
            references, rewards, {"time/aggregate": t1 - t0, "time/reward": t2 - t1}, trained
        )

    def _apply_fallback(
        self, groups: Sequence[RolloutGroup], references: list[Reference]
    ) -> list[Reference]:
        if self.fallback is None:
            return references
        missing = [
            i for i, (g, r) in enumerate(zip(groups, references, strict=True))
            if needs_answer(g) and r.answer is None
        ]  # fmt: skip
        if not missing:
            return references
        replacements = self.fallback.aggregate([groups[i] for i in missing])
        out = list(references)
        for i, ref in zip(missing, replacements, strict=True):
            out[i] = Reference(
                ref.text,
                ref.method,
                ref.answer,
                {**ref.details, "fallback_from": references[i].to_dict()},
            )
        return out
