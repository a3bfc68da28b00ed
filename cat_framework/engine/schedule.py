"""Which prompts a step trains on, and the seeds it samples with: pure functions of (seed, step).

Making the data position and the sampling seeds functions of the step, rather than of mutable
iterator or RNG state, is what makes ``--resume`` exact: a resumed run recomputes step k's
prompts and seeds instead of restoring a sampler.
"""

from __future__ import annotations

import hashlib
import random


def derive_seed(*parts: object) -> int:
    """A 62-bit seed from any parts (stable across processes and Python versions)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2


def epoch_order(num_prompts: int, seed: int, epoch: int) -> list[int]:
    """A fresh permutation of the prompt indices per epoch."""
    order = list(range(num_prompts))
    random.Random(derive_seed("epoch", seed, epoch)).shuffle(order)
    return order


def step_prompts(num_prompts: int, per_step: int, step: int, seed: int) -> list[int]:
    """Indices of the prompts of 1-based ``step``: consecutive slices of the concatenated
    per-epoch permutations (an epoch boundary may fall inside a step)."""
    if num_prompts <= 0:
        raise ValueError("no prompts to train on")
    start = (step - 1) * per_step
    out: list[int] = []
    epoch = start // num_prompts
    offset = start % num_prompts
    while len(out) < per_step:
        order = epoch_order(num_prompts, seed, epoch)
        out.extend(order[offset : offset + per_step - len(out)])
        epoch, offset = epoch + 1, 0
    return out


def shard(items: list[int], rank: int, world: int) -> list[int]:
    """This process's share of a step's prompts: whole prompts, so groups are never split."""
    return items[rank::world]


__all__ = ["derive_seed", "epoch_order", "shard", "step_prompts"]
