"""A separate sampler with weights of its own: an in-process engine (vLLM), or, for one-step-off
rollouts, a sampling copy of the trained module. After every update the trained tensors stream
to it one at a time (gathered from shards under FSDP2, LoRA merged in) and it must then serve
exactly them (:mod:`cat_framework.engine.parity`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import structlog
import torch

from cat_framework.components import Backend
from cat_framework.engine import fsdp, lora, parity
from cat_framework.engine.placement.contract import Loaded, Placement, Setup, frozen_copy
from cat_framework.engine.placement.pi0 import sharded_pi0, whole_pi0

log = structlog.get_logger("cat_framework.placement")


class SeparateEngine(Placement):
    """Pushes after every update and checks parity; the sampler sleeps during updates when it
    can (vLLM sleep mode). pi_0: the trained PEFT module with adapters off under LoRA (a
    frozen whole copy when sharded and pi_0 generates, else the engine stands in: before the
    first push it serves pi_0); without LoRA as :mod:`.pi0` says."""

    topology = "separate-engine"

    def __init__(self, loaded: Loaded, setup: Setup, sampler: Backend, *, sharded: bool) -> None:
        super().__init__(loaded, setup, sharded=sharded)
        self.sampler = sampler
        self._engine_dtype: Any = None  # the engine's, from the last parity check
        self._slept = False  # release logged once
        self._unchecked = False  # the sampler reports no checksums: names checked only
        if setup.lora is None:
            (sharded_pi0 if sharded else whole_pi0)(self, loaded, setup)
            return
        if sharded and setup.pi0_generates:  # pi_0 must generate whole; the engine gets merges
            self.frozen = frozen_copy(self.model)
        self.model = lora.add_lora(self.model, setup.lora)
        if self.frozen is not None:
            self.anchor = loaded.backend_for(self.frozen)
        elif sharded:
            self.anchor = sampler
        else:
            self.anchor = lora.AdapterDisabledBackend(self.trainable, self.model)

    @property
    def pushes_weights(self) -> bool:
        return True

    def release(self) -> None:
        if self.sampler.release_memory() and not self._slept:
            self._slept = True  # said once: it happens every step
            log.info("sampler sleeps during updates", backend=self.sampler.name)

    def after_update(self, step: int | None) -> dict[str, float]:
        return self.push()

    def push(self) -> dict[str, float]:
        """Stream the trained tensors by their base checkpoint names (every process consumes
        the whole stream: under FSDP2 each tensor is a collective), then compare what the
        engine serves with what was sent."""
        t0 = time.perf_counter()
        names = lora.engine_names(self.model) if self.lora else list(self.model.state_dict())
        pushed = parity.Pushed(names, self._engine_dtype, summing=not self._unchecked)
        self.send(pushed)
        seconds = time.perf_counter() - t0
        return {"time/training/push_weights": seconds, "sync/time": seconds,
                "sync/bytes": float(pushed.bytes)}  # fmt: skip

    def send(self, pushed: parity.Pushed) -> None:
        """The tensors to the sampler, recorded in ``pushed``, and the parity check."""
        self.sampler.update_weights(pushed.record(self.trained_tensors()))
        served = parity.check_engine(self.sampler, pushed)
        if served is not None:
            self._engine_dtype = served.dtype
            self._unchecked = False  # it reports again: sum the next push
        elif not self._unchecked:
            self._unchecked = True
            log.info("no weight parity check: the sampler cannot report what it serves",
                     backend=self.sampler.name)  # fmt: skip

    def trained_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The weights the engine needs, named as in the base checkpoint: gathered one tensor
        at a time (a collective each under FSDP2: every process consumes it all), LoRA merged
        into the streamed tensors (``W + s*B@A`` computed apart: merging into ``W`` and back,
        as PEFT's merge/unmerge, would round pi_0's base weights on every push)."""
        if self.lora:
            return lora.merged_tensors(self.model)
        return fsdp.full_tensors(self.model)


__all__ = ["SeparateEngine"]
