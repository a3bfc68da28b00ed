"""The trained policy and its frozen twins: the anchor (pi_0, synthesis and rubrics) and the KL
reference.

Memory is the point (DESIGN.md section 2): under LoRA the anchor and the reference are the
policy's own base weights with adapters disabled, so no second copy exists; without LoRA one
frozen copy serves both. By default rollouts are sampled by a backend wrapping the trained model
itself (same tensors); a policy backend that cannot wrap a model (vLLM) keeps its own engine and
receives the trainer's weights after every optimizer step.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import structlog
import torch

from cat_framework.components import Backend, Roles, TrainableBackend
from cat_framework.engine import fsdp, parity
from cat_framework.engine import lora as lora_push
from cat_framework.engine.lockstep import Lockstep, for_run
from cat_framework.engine.lora import base_name
from cat_framework.errors import CatError, UnknownComponentError
from cat_framework.pipeline import Pipeline
from cat_framework.pipeline.build import BackendPool
from cat_framework.pipeline.schema import Lora
from cat_framework.plugins import Plugins
from cat_framework.types import Completion, GenerationRequest, Message

log = structlog.get_logger("cat_framework.policy")


class PeftModel(Protocol):
    """What the engine uses of a peft-wrapped model (peft is an optional dependency)."""

    def disable_adapter(self) -> Any: ...


class AdapterDisabledBackend(Backend):
    """The anchor under LoRA: the policy's own backend with its adapters switched off per call."""

    name = "initial-policy"

    def __init__(self, inner: TrainableBackend, peft_model: Any) -> None:
        super().__init__(None)
        self.inner = inner
        self.peft_model = cast(PeftModel, peft_model)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        with self.peft_model.disable_adapter():
            return self.inner.generate(requests)

    def score(
        self,
        contexts: Sequence[Sequence[Message] | str],
        continuations: Sequence[str | Sequence[int]],
    ) -> list[list[float]]:
        with self.peft_model.disable_adapter():
            return self.inner.score(contexts, continuations)

    def encode_context(self, context: Sequence[Message] | str) -> list[int]:
        return self.inner.encode_context(context)


@dataclass
class PolicyModels:
    """What a training run holds: the module it optimises and the backends around it."""

    model: torch.nn.Module  # the trained module (PEFT-wrapped under LoRA)
    tokenizer: Any
    trainable: TrainableBackend  # wraps ``model`` (tokenisation, scoring)
    sampler: Backend  # samples rollouts: ``trainable`` itself, or an engine fed new weights
    anchor: Backend  # frozen pi_0
    frozen: torch.nn.Module | None  # the pi_0 copy (under LoRA only beside an engine + FSDP2)
    lora: bool
    sharded: bool = False  # FSDP2: ``model`` holds shards; ``sampler`` a gathered copy
    generation: torch.nn.Module | None = None  # that gathered copy (FSDP2 only)
    lockstep: Lockstep | None = None  # FSDP2 without a copy: the sharded modules generate
    _slept: bool = field(default=False, init=False, repr=False)  # release_memory logged
    _pushed: parity.Pushed | None = field(default=None, init=False, repr=False)
    _parity_unchecked: bool = field(default=False, init=False, repr=False)  # logged once
    _engine_dtype: Any = field(default=None, init=False, repr=False)  # from the last check

    def sync_generation(self) -> None:
        """Under lock-step generation, keep stepping until every process is done generating;
        call it where all processes arrive before their next other collective."""
        if self.lockstep is not None:
            self.lockstep.drain()

    @property
    def pushes_weights(self) -> bool:
        return self.sampler is not self.trainable

    def encode(self, messages: Sequence[Message]) -> list[int]:
        return self.trainable.encode_context(messages)

    @property
    def peft(self) -> PeftModel:
        return cast(PeftModel, self.model)

    @contextmanager
    def reference(self, model: torch.nn.Module | None = None) -> Iterator[torch.nn.Module]:
        """The module giving pi_0 log-probs: the frozen copy, or ``model`` with adapters off."""
        if self.frozen is not None:
            yield self.frozen
            return
        if not self.lora:
            raise RuntimeError("no reference: the run was built without a frozen copy")
        with self.peft.disable_adapter():
            yield model if model is not None else self.model

    def push_weights(self) -> None:
        """Send the trained weights to the sampler (an engine, or the gathered generation copy),
        then check that an engine serves exactly them (:mod:`cat_framework.engine.parity`; the
        copy is checked while it is filled). Under FSDP2 every process pushes to its own."""
        self.sampler.update_weights(self.trained_tensors())
        pushed, self._pushed = self._pushed, None
        if pushed is None:
            return
        served = parity.check_engine(self.sampler, pushed)
        if served is not None:
            self._engine_dtype = served.dtype
            return
        if not self._parity_unchecked:
            self._parity_unchecked = True
            log.info("no weight parity check: the sampler cannot report what it serves",
                     backend=self.sampler.name)  # fmt: skip

    def trained_tensors(self) -> Iterable[tuple[str, torch.Tensor]]:
        """The weights a separate sampling engine needs, named as in the base checkpoint (LoRA
        merged into the pushed tensors, never into the trained module's own). Sharded weights are gathered one tensor at a
        time, so every process must consume the whole iterator (a collective per tensor). What
        goes to an engine is recorded for :meth:`push_weights`'s parity check."""
        if self.generation is not None:
            yield from self._trained_tensors()
            return
        self._pushed = parity.Pushed(expected=self._push_names(), dtype=self._engine_dtype)
        yield from self._pushed.record(self._trained_tensors())

    def _push_names(self) -> list[str]:
        """What a push must carry: every weight, by its base checkpoint name (no gathering)."""
        names = self.model.state_dict().keys()
        if not self.lora:
            return list(names)
        return [base_name(n) for n in names if not lora_push.is_adapter(n)]

    def _trained_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        if self.sharded and self.lora:  # the whole PEFT copy takes adapters; an engine, merged
            if self.generation is not None:
                yield from lora_push.push_adapters(self.model, self.generation)
            else:
                yield from lora_push.merged_tensors(self.model)
            return
        if self.sharded:
            if self.generation is None:
                yield from fsdp.full_tensors(self.model)
                return
            fsdp.restore(self.generation)
            served = self.generation.state_dict()
            expected = {}
            for name, tensor in fsdp.full_tensors(self.model):
                if name in served:  # what the copy must hold once the consumer has copied it
                    expected[name] = fsdp.checksum(tensor.to(served[name].dtype))
                yield name, tensor
            fsdp.check_parity(served, expected)  # runs once the consumer has taken them all
            return
        if not self.lora:
            yield from self.model.state_dict().items()
            return
        # W + s*B@A computed apart: merging into W and back (PEFT's merge/unmerge) would round
        # pi_0's base weights in low precision on every push
        yield from lora_push.merged_tensors(self.model)

    def release_sampler_memory(self) -> None:
        """Before the update: free the gathered generation copy's weights (under LoRA its base
        never changes: kept), or ask a separate engine to release its memory (vLLM sleep mode);
        the next :meth:`push_weights` brings them back."""
        if self.generation is not None:
            if not self.lora:
                fsdp.release(self.generation)
        elif self.pushes_weights and self.sampler.release_memory() and not self._slept:
            self._slept = True  # said once: it happens every step
            log.info("sampler sleeps during updates", backend=self.sampler.name)

    def close(self) -> None:
        if self.lockstep is not None:
            log.info("lockstep generation", **self.lockstep.summary())
        for backend in {id(b): b for b in (self.sampler, self.trainable)}.values():
            backend.close()


def trainable_class(comp_cls: type[Backend], plugins: Plugins) -> type[TrainableBackend]:
    """The :class:`TrainableBackend` that trains the policy: its own backend when it is one;
    otherwise (an engine that samples but cannot wrap a module) the one it names in
    ``trains_with``, or else the only trainable backend installed."""
    if issubclass(comp_cls, TrainableBackend):
        return comp_cls
    if comp_cls.trains_with is not None:
        cls = plugins.get("backend", comp_cls.trains_with)
        if not issubclass(cls, TrainableBackend):
            raise CatError(
                f"backend {comp_cls.name!r} trains with {comp_cls.trains_with!r}, which is not "
                "a TrainableBackend (cat_framework.components): it cannot wrap a module"
            )
        return cls
    found: dict[str, type[TrainableBackend]] = {}
    registry = plugins.registry("backend")
    for name in registry.names():
        try:
            cls = registry.get(name)
        except UnknownComponentError:  # a plugin that fails to import trains nothing
            continue
        if isinstance(cls, type) and issubclass(cls, TrainableBackend):
            found[name] = cls
    if len(found) == 1:
        return next(iter(found.values()))
    names = ", ".join(sorted(found)) or "none is installed"
    raise CatError(
        f"models.policy: backend {comp_cls.name!r} cannot wrap a model, so the trainer needs a "
        f"TrainableBackend to load the same model ({names}); the {comp_cls.name!r} backend "
        "should name one in its trains_with attribute"
    )


def build_policy(
    pipeline: Pipeline,
    plugins: Plugins,
    pool: BackendPool,
    device: torch.device,
    *,
    need_frozen: bool,
    accelerator: Any = None,
) -> PolicyModels:
    """Load the policy once on ``device``, add LoRA adapters if configured, and build pi_0.

    Under FSDP2 (``accelerator`` shards) the trained module is sharded later by
    ``accelerator.prepare``; rollouts come from a whole generation copy that the trainer
    refreshes after every optimizer step, and pi_0 is sharded too unless it must generate.
    Under LoRA and FSDP2 the copy carries the same adapters (pushes carry only them) and pi_0 is
    that copy with adapters off for generation, the sharded module with adapters off for KL.
    With ``trainer.fsdp_gather_for_generation: false`` there is no copy: the sharded policy
    (and a sharded pi_0) generate in lock-step (:mod:`cat_framework.engine.lockstep`)."""
    cfg = pipeline.config
    sharded = accelerator is not None and fsdp.is_fsdp2(accelerator)
    comp = pipeline.component("models", "policy")
    if comp is None:
        raise CatError("the pipeline has no models.policy")
    cls = trainable_class(comp.cls, plugins)
    if cls is not comp.cls and comp.cls.update_weights is Backend.update_weights:
        raise CatError(
            f"models.policy: backend {comp.name!r} cannot receive the trainer's weights, so it "
            "cannot serve a policy being trained; use a trainable backend (`cat-framework "
            "components` lists them) or an engine that receives weights (a remote server can "
            "still be the judge or the anchor)"
        )
    params = comp.params.model_dump()
    if cls is not comp.cls:  # e.g. vllm samples; a transformers twin of the same model trains
        params = {"model": params["model"]}
    if params.get("device", "auto") == "auto":
        params["device"] = "cpu" if device.type == "cpu" else str(device)  # FSDP2: "cpu:0"
    trainable = cls(params)
    model, tokenizer = trainable.model, trainable.tokenizer
    if not isinstance(model, torch.nn.Module):
        raise CatError(
            f"backend {cls.name!r} is a TrainableBackend but its model is a "
            f"{type(model).__name__}, not a torch.nn.Module"
        )
    lora = cfg.trainer.lora
    sampler: Backend = trainable if cls is comp.cls else pool.get(comp)
    generation = None
    on_shards = sharded and not cfg.trainer.fsdp_gather_for_generation
    lockstep = for_run(pipeline.config.trainer, cls, accelerator) if on_shards else None
    if on_shards and cfg.trainer.async_rollouts and cfg.mode == "train":
        raise CatError(
            "trainer.async_rollouts: 1 samples from whole weights while the update runs, but "
            "trainer.fsdp_gather_for_generation: false generates on the shards (every forward a "
            "collective of all processes): set one of them back"
        )
    if sharded and not on_shards and sampler is trainable:  # whole weights: a gathered copy
        generation = _frozen_copy(model)
        sampler = cls.from_model(generation, tokenizer, params)
    elif cfg.trainer.async_rollouts and cfg.mode == "train" and sampler is trainable:
        # one-step-off: sampling must keep the old weights while the update changes them
        sampler = cls.from_model(_frozen_copy(model), tokenizer, params)
        log.info("one-step-off rollouts sample from a copy of the weights, refreshed per step")
    if lockstep is not None and sampler is trainable:  # generate on the shards, all together
        lockstep.attach(trainable)
    if cfg.trainer.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    frozen = None
    if lora is not None:
        engine = sharded and generation is None and sampler is not trainable
        if engine and pi0_generates(pipeline):  # also in sft: the final evaluation's anchor
            frozen = _frozen_copy(model)  # pi_0 must generate whole, and the engine gets merges
        model = add_lora(model, lora)
        anchor: Backend = AdapterDisabledBackend(trainable, model)
        if generation is not None:  # FSDP2: a whole PEFT copy (engine/lora.py says why)
            peft_copy = _lora_copy(generation, model, lora)
            anchor = AdapterDisabledBackend(cast(TrainableBackend, sampler), peft_copy)
        elif frozen is not None:
            anchor = cls.from_model(frozen, tokenizer, params)
        elif engine:  # pi_0 serves no role that generates: the engine stands in
            anchor = sampler
    else:
        if need_frozen:
            frozen = _frozen_copy(model)
        # sharded, the trained module cannot generate: pi_0 is the generation copy before step 1
        anchor = sampler if sharded else trainable
        if frozen is not None and sharded and (on_shards or not pi0_generates(pipeline)):
            frozen = fsdp.shard_frozen(frozen, accelerator)  # forwards in lock-step
        if frozen is not None and (not sharded or pi0_generates(pipeline)):
            anchor = cls.from_model(frozen, tokenizer, params)
            if lockstep is not None:  # a sharded pi_0 that generates: in lock-step too
                lockstep.attach(cast(TrainableBackend, anchor))
    model.train()
    return PolicyModels(
        model, tokenizer, trainable, sampler, anchor, frozen, lora is not None, sharded,
        generation, lockstep,
    )  # fmt: skip


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model).eval().requires_grad_(False)


def _lora_copy(generation: torch.nn.Module, model: torch.nn.Module, lora: Lora) -> Any:
    """Wrap the whole generation copy with adapters equal to ``model``'s (without drawing from
    the global RNG, so a sharded run samples like an unsharded one)."""
    with torch.random.fork_rng(devices=[]):
        peft_copy = add_lora(generation, lora)
    lora_push.copy_adapters(model, peft_copy)
    return peft_copy.eval().requires_grad_(False)


def pi0_generates(pipeline: Pipeline) -> bool:
    """Whether pi_0 serves a role (anchor or judge), so it must sample on its own."""
    models = pipeline.config.models
    return models.anchor == "initial-policy" or models.judge == "initial-policy"


def add_lora(model: torch.nn.Module, lora: Lora) -> torch.nn.Module:
    """Wrap ``model`` with fresh LoRA adapters (peft); the base weights are frozen in place."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    n_train = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in peft_model.parameters())
    log.info("lora", trainable=n_train, total=n_all, share=round(n_train / max(n_all, 1), 4))
    return peft_model


def build_training_roles(pipeline: Pipeline, pool: BackendPool, policy: PolicyModels) -> Roles:
    """Policy = the sampler of the current weights; anchor = pi_0 unless the pipeline names its
    own backend; judge = the anchor unless told otherwise."""
    models = pipeline.config.models

    def spec_backend(path: str) -> Backend:
        comp = pipeline.component("models", path)
        assert comp is not None, f"models.{path} has no backend spec"
        return pool.get(comp)

    named = {"policy": policy.sampler, "initial-policy": policy.anchor}
    anchor = named.get(models.anchor) if isinstance(models.anchor, str) else None
    anchor = anchor or spec_backend("anchor")
    if isinstance(models.judge, str):
        judge = anchor if models.judge == "anchor" else named[models.judge]
    else:
        judge = spec_backend("judge")
    return Roles(policy=policy.sampler, anchor=anchor, judge=judge)


def needs_frozen_copy(pipeline: Pipeline) -> bool:
    """Whether pi_0 must exist as weights: a KL term, or an anchor/judge that is pi_0."""
    return pipeline.config.trainer.beta > 0 or pi0_generates(pipeline)


__all__ = [
    "AdapterDisabledBackend",
    "PolicyModels",
    "add_lora",
    "build_policy",
    "build_training_roles",
    "needs_frozen_copy",
    "trainable_class",
]
