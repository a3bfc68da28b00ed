"""pi_0 beside the trained weights: the frozen anchor for the teacher's roles and the KL
reference, made once per topology by one of these two functions.

Memory is the point (DESIGN.md section 2). Whole weights: one frozen copy serves both roles, and
none exists when no KL term and no role needs it (the trained module is pi_0 until its first
update, which is all a reference-only ``sft`` needs). Sharded weights: the copy is sharded too
when it only gives KL log-probs (every process makes the same forward passes) or when it
generates in lock-step; it stays whole when it must generate on its own.
"""

from __future__ import annotations

from cat_framework.engine import fsdp
from cat_framework.engine.placement.contract import Loaded, Placement, Setup, frozen_copy


def whole_pi0(placement: Placement, loaded: Loaded, setup: Setup) -> None:
    """pi_0 for unsharded weights: a frozen copy when needed, else the trained module."""
    if setup.need_frozen:
        placement.frozen = frozen_copy(placement.model)
        placement.anchor = loaded.backend_for(placement.frozen)


def sharded_pi0(placement: Placement, loaded: Loaded, setup: Setup) -> None:
    """pi_0 for sharded weights (without LoRA). Without a copy, the sampler stands in for the
    anchor: before the first update it is pi_0, and a run whose pi_0 plays no role never asks
    it afterwards."""
    placement.anchor = placement.sampler
    if not setup.need_frozen:
        return
    frozen = frozen_copy(placement.model)
    if setup.on_shards or not setup.pi0_generates:
        frozen = fsdp.shard_frozen(frozen, setup.accelerator)  # forwards all together
    placement.frozen = frozen
    if setup.pi0_generates:
        placement.anchor = anchor = loaded.backend_for(frozen)
        if setup.lockstep is not None:  # a sharded pi_0 that generates: in lock-step too
            setup.lockstep.attach(anchor)


__all__ = ["sharded_pi0", "whole_pi0"]
