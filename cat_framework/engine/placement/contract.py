"""The placement contract: where the trained weights, pi_0 and the sampler live, and how weights
move between them.

A training run holds three sets of weights in some topology: the module the optimizer updates
(whole or sharded, maybe PEFT-wrapped), whatever samples rollouts (that module itself, a gathered
copy, an in-process engine), and pi_0 (the frozen anchor for the teacher's roles and the KL
reference). Each topology is one subclass (:mod:`.colocated`, :mod:`.separate_engine`,
:mod:`.gathered_copy`, :mod:`.on_shards`; one-step-off sampling wraps any of them,
:mod:`.one_step_off`), chosen once by :mod:`.table`. The training loops meet a placement at two
moments per step, and know nothing of what happens there:

1. :meth:`Placement.sample` -- the step's rollouts, from weights that are in place;
2. ``with`` :meth:`Placement.update` -- entering: processes that generated in lock-step are
   settled, and the sampler's memory is released (or the next step's sampling starts);
   leaving: the new weights reach the sampler and are parity-checked. Its timings are returned.

Besides: :meth:`reference` (pi_0 log-probs), :meth:`settle` (where all processes meet outside
a step), :meth:`begin` and :meth:`resume`, :meth:`extra_state` (per-process checkpoint slots),
:attr:`checkpoint_layout`, :meth:`export` (the final model) and :meth:`close`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import structlog
import torch

from cat_framework.components import Backend, TrainableBackend
from cat_framework.engine import fsdp, lora
from cat_framework.engine.checkpoint import WHOLE, Checkpoint, SlotCheck, StateLayout
from cat_framework.engine.lockstep import Lockstep
from cat_framework.engine.lora import PeftModel
from cat_framework.engine.teacher import explore
from cat_framework.pipeline.schema import Lora, Rollouts
from cat_framework.types import Message, Prompt, RolloutGroup

log = structlog.get_logger("cat_framework.placement")


@dataclass
class Sampled:
    """A step's rollouts, how long sampling them took, how many updates old their weights are
    (0: sampled now; 1: one-step-off), whether the sampler's log-probs must correct the update
    whatever the configuration says (importance weights), and metrics to log."""

    groups: list[RolloutGroup]
    seconds: float
    staleness: int = 0
    off_policy: bool = False
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Moves:
    """What :meth:`Placement.update` did around an update, as step metrics (filled on exit)."""

    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Loaded:
    """The trained model as its backend loaded it, and how to serve another module alike."""

    cls: type[TrainableBackend]
    params: dict[str, Any]
    trainable: TrainableBackend
    model: torch.nn.Module
    tokenizer: Any

    def backend_for(self, module: torch.nn.Module) -> TrainableBackend:
        """A backend serving ``module`` (a copy, pi_0) with the policy's settings."""
        return self.cls.from_model(module, self.tokenizer, self.params)


@dataclass
class Setup:
    """What a topology is built from, beside the loaded model."""

    rollouts: Rollouts
    lora: Lora | None
    need_frozen: bool  # pi_0 must exist as weights: a KL term, or a role it plays
    pi0_generates: bool  # pi_0 plays the anchor or the judge, so it samples on its own
    accelerator: Any
    engine: Backend | None = None  # a sampler with weights of its own, when there is one
    on_shards: bool = False  # sharded modules generate (no whole copy anywhere)
    lockstep: Lockstep | None = None  # how processes generating on shards agree (2+ of them)
    rollout_dtype: torch.dtype | None = None  # a copy that samples holds this precision


class Placement:
    """One topology of trained weights, sampler and pi_0 (see the module docstring).

    Attributes every placement sets: ``model`` (what the optimizer updates), ``tokenizer``,
    ``trainable`` (the backend around ``model``: tokenisation, scoring), ``sampler`` (samples
    rollouts), ``anchor`` (pi_0 as a backend, for the teacher's roles), ``frozen`` (a separate
    pi_0 module, or None) and ``lockstep`` (the agreement of processes generating on shards,
    or None)."""

    #: a name for logs and docs
    topology = "placement"

    def __init__(self, loaded: Loaded, setup: Setup, *, sharded: bool = False) -> None:
        self.loaded = loaded
        self.setup = setup
        self.model: torch.nn.Module = loaded.model
        self.tokenizer = loaded.tokenizer
        self.trainable: TrainableBackend = loaded.trainable
        self.sampler: Backend = loaded.trainable
        self.anchor: Backend = loaded.trainable
        self.frozen: torch.nn.Module | None = None
        self.lockstep: Lockstep | None = setup.lockstep
        self.rollouts = setup.rollouts
        self.lora = setup.lora is not None
        self.sharded = sharded
        self.checkpoint_layout: StateLayout = fsdp.SHARDED if sharded else WHOLE

    # ------------------------------------------------------------------ the two moments
    def sample(self, step: int, prompts: Sequence[Prompt], seeds: Sequence[int]) -> Sampled:
        """``step``'s rollouts for this process's ``prompts``, from the current weights."""
        t0 = time.perf_counter()
        groups = explore(self.sampler, prompts, self.rollouts, seeds=seeds)
        return Sampled(groups, time.perf_counter() - t0)

    @contextmanager
    def update(self, step: int | None = None) -> Iterator[Moves]:
        """Around the optimizer steps that follow ``step``'s sampling (or a whole ``sft``
        training: ``step`` None): settle and make room on entry; on a clean exit, bring the
        new weights to the sampler and check them."""
        moves = Moves()
        self.settle()
        self.before_update(step)
        yield moves
        moves.timings.update(self.after_update(step))

    # ------------------------------------------------------------------ what topologies change
    def before_update(self, step: int | None) -> None:
        """Make room for the update: by default, :meth:`release`."""
        self.release()

    def release(self) -> None:
        """Free the sampler's memory until the next push (nothing by default)."""

    def after_update(self, step: int | None) -> dict[str, float]:
        """Bring new weights to the sampler; returns timings (nothing to move by default)."""
        return {}

    @property
    def pushes_weights(self) -> bool:
        """Whether the sampler holds weights of its own that each update must refresh."""
        return False

    def push(self) -> dict[str, float]:
        """Bring the trained weights to the sampler now (after an update or a resume)."""
        return {}

    @contextmanager
    def reference(self) -> Iterator[torch.nn.Module]:
        """The module giving pi_0 log-probs (the KL reference): the frozen copy, or the
        trained PEFT module with its adapters off."""
        if self.frozen is not None:
            yield self.frozen
            return
        if not self.lora:
            raise RuntimeError("no reference: the run was built without a frozen copy")
        with cast(PeftModel, self.model).disable_adapter():
            yield self.model

    def settle(self) -> None:
        """Where every process arrives before its next other collective: processes that
        generate in lock-step keep stepping until all are done."""
        if self.lockstep is not None:
            self.lockstep.drain()

    # ------------------------------------------------------------------ checkpoints, the end
    def extra_state(self) -> dict[str, Any]:
        """This process's extra checkpoint slots (name -> plain JSON data)."""
        return {}

    def extra_checks(self) -> dict[str, SlotCheck]:
        """Per slot name, what checks a slot file's content before a checkpoint is chosen."""
        return {}

    def begin(self) -> dict[str, float]:
        """Before anything samples (a resume then brings the checkpoint's weights): the
        sampler gets the weights the run starts from, pi_0 (nothing by default: every
        in-process sampler loaded them itself)."""
        return {}

    def resume(self, ckpt: Checkpoint) -> None:
        """After ``ckpt`` is loaded into ``model``: the sampler gets the restored weights."""
        if self.pushes_weights:
            self.push()

    def export(self) -> dict[str, torch.Tensor] | None:
        """The state dict ``save_pretrained`` writes for the final model (None: the module's
        own). Every process calls it: sharded weights are gathered (the sampler's memory is
        released first to make room), and under LoRA only the adapters."""
        if not self.sharded:
            return None
        self.release()
        if self.lora:  # the adapter folder needs the adapters only: never gather the base
            return dict(lora.adapter_tensors(self.model))
        return fsdp.full_state_dict(self.model)

    def encode(self, messages: Sequence[Message]) -> list[int]:
        return self.trainable.encode_context(messages)

    def close(self) -> None:
        if self.lockstep is not None:
            log.info("lockstep generation", **self.lockstep.summary())
        for backend in {id(b): b for b in (self.sampler, self.trainable)}.values():
            backend.close()


def frozen_copy(model: torch.nn.Module, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """A gradient-free copy of ``model`` in eval mode (pi_0, or weights to sample from), its
    parameters cast to ``dtype`` if given (``trainer.rollout_dtype``), as loading the model at
    that dtype would: buffers such as rotary frequencies and the modules the model keeps in
    float32 (``_keep_in_fp32_modules``) keep their precision."""
    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    if dtype is not None:
        keep = getattr(model, "_keep_in_fp32_modules", None) or []
        for name, param in frozen.named_parameters():  # a tied weight is one parameter
            if not any(k in name.split(".") for k in keep):
                param.data = param.data.to(dtype)
    return frozen


__all__ = ["Loaded", "Moves", "Placement", "Sampled", "Setup", "frozen_copy"]
