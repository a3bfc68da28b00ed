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
            n=rollouts.n,
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
    references: list[Reference]
    rewards: list[Rewards]
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Teacher:
    """Aggregator + reward deriver: groups in, one reference and G rewards per group out."""

    aggregator: Aggregator
    reward: RewardDeriver

    def teach(self, groups: Sequence[RolloutGroup]) -> TeacherOutput:
        t0 = time.perf_counter()
        references = self.aggregator.aggregate(groups)
        t1 = time.perf_counter()
        rewards = self.reward.derive(groups, references)
        t2 = time.perf_counter()
        if len(references) != len(groups) or len(rewards) != len(groups):
            raise RuntimeError(
                f"teacher returned {len(references)} references and {len(rewards)} rewards for "
                f"{len(groups)} groups"
            )
        for g, r in zip(groups, rewards, strict=True):
            if len(r.values) != len(g.rollouts):
                raise RuntimeError(
                    f"reward deriver {self.reward.name!r} returned {len(r.values)} rewards for "
                    f"{len(g.rollouts)} rollouts"
                )
        return TeacherOutput(
            references, rewards, {"time/aggregate": t1 - t0, "time/reward": t2 - t1}
        )
