"""FSDP2 generating on the shards (``trainer.fsdp_gather_for_generation: false``): no whole
copy exists anywhere; the sharded policy (and a sharded pi_0) generate in lock-step
(:mod:`cat_framework.engine.lockstep`), so nothing is pushed after an update."""

from __future__ import annotations

from cat_framework.engine.placement.contract import Loaded, Placement, Setup
from cat_framework.engine.placement.pi0 import sharded_pi0


class OnShards(Placement):
    topology = "on-shards"

    def __init__(self, loaded: Loaded, setup: Setup) -> None:
        super().__init__(loaded, setup, sharded=True)
        if self.lockstep is not None:  # one process: its shards generate alone
            self.lockstep.attach(self.trainable)
        sharded_pi0(self, loaded, setup)


__all__ = ["OnShards"]
