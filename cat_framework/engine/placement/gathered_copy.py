"""FSDP2 with a gathered generation copy (``trainer.fsdp_gather_for_generation: true``): each
process holds 1/N of the trained weights and a whole, gradient-free copy that samples. After
every update the shards are gathered one tensor at a time into the copy, whose every tensor
is then checked against what was gathered; the copy's storage is freed during updates. With
``trainer.rollout_dtype`` the copy holds that precision (checked in it).

Under LoRA the copy is a whole PEFT copy (same base, same adapters): a push carries only the
adapters, the base is never freed nor refilled, and pi_0 is the copy with its adapters off
(:mod:`cat_framework.engine.lora` says why).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch

from cat_framework.engine import fsdp, lora
from cat_framework.engine.placement.contract import Loaded, Placement, Setup, frozen_copy
from cat_framework.engine.placement.pi0 import sharded_pi0


class GatheredCopy(Placement):
    topology = "gathered-copy"

    def __init__(self, loaded: Loaded, setup: Setup) -> None:
        super().__init__(loaded, setup, sharded=True)
        self.generation = frozen_copy(self.model, setup.rollout_dtype)
        self.sampler = sampler = loaded.backend_for(self.generation)
        if setup.lora is None:
            sharded_pi0(self, loaded, setup)
            return
        self.model = lora.add_lora(self.model, setup.lora)
        peft_copy = lora.lora_copy(self.generation, self.model, setup.lora)
        self.anchor = lora.AdapterDisabledBackend(sampler, peft_copy)

    @property
    def pushes_weights(self) -> bool:
        return True

    def release(self) -> None:
        if not self.lora:  # under LoRA the copy's base never changes: kept
            fsdp.release(self.generation)

    def after_update(self, step: int | None) -> dict[str, float]:
        return self.push()

    def push(self) -> dict[str, float]:
        t0 = time.perf_counter()
        self.sampler.update_weights(self.gathered())
        return {"time/training/push_weights": time.perf_counter() - t0}

    def gathered(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The tensors the copy must receive, gathered one at a time; once the consumer has
        taken them all, the copy must hold every one (:func:`fsdp.check_parity`)."""
        if self.lora:
            yield from lora.push_adapters(self.model, self.generation)
            return
        fsdp.restore(self.generation)
        served = self.generation.state_dict()
        expected = {}
        for name, tensor in fsdp.full_tensors(self.model):
            if name in served:  # what the copy must hold once the consumer has copied it
                expected[name] = fsdp.checksum(tensor.to(served[name].dtype))
            yield name, tensor
        fsdp.check_parity(served, expected)


__all__ = ["GatheredCopy"]
