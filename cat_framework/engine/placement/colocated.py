"""Colocated: one process, or data parallelism (DDP) where every process holds whole weights;
the trained module samples its own rollouts, so no weights ever move."""

from __future__ import annotations

from cat_framework.engine.lora import AdapterDisabledBackend, add_lora
from cat_framework.engine.placement.contract import Loaded, Placement, Setup
from cat_framework.engine.placement.pi0 import whole_pi0


class Colocated(Placement):
    """The sampler is the trained module's own backend. Under LoRA, pi_0 is that module with
    its adapters off (no second copy); otherwise a frozen copy when one is needed."""

    topology = "colocated"

    def __init__(self, loaded: Loaded, setup: Setup) -> None:
        super().__init__(loaded, setup)
        if setup.lora is None:
            whole_pi0(self, loaded, setup)
            return
        self.model = add_lora(self.model, setup.lora)
        self.anchor = AdapterDisabledBackend(self.trainable, self.model)


__all__ = ["Colocated"]
