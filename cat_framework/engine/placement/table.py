"""Which placement a run gets, and every combination refused, with its fix, before anything
is loaded.

One table maps the launch and the pipeline to a topology:

================  ====================  ========================================
weights           policy backend        topology
================  ====================  ========================================
whole             trains itself         :class:`.Colocated` (one process, DDP)
whole             an engine (vLLM)      :class:`.SeparateEngine`
sharded (FSDP2)   trains itself         :class:`.GatheredCopy`, or :class:`.OnShards`
                                        with ``fsdp_gather_for_generation: false``
sharded (FSDP2)   an engine             :class:`.SeparateEngine` (gathers to push)
either            servers (shared)      :class:`.Server` (the main process pushes)
================  ====================  ========================================

``trainer.async_rollouts: 1`` (``mode: train``) wraps the result in :class:`.OneStepOff`; its
sampler needs weights of its own, so a colocated run samples from an in-process copy (a
:class:`.SeparateEngine` whose engine is that copy). ``trainer.rollout_dtype`` other than
``same`` makes that copy too, at its precision (under FSDP2 the gathered copy is at it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
import torch

from cat_framework.components import Backend, TrainableBackend
from cat_framework.engine import fsdp
from cat_framework.engine.async_rollouts import Plan
from cat_framework.engine.lockstep import Lockstep
from cat_framework.engine.placement.colocated import Colocated
from cat_framework.engine.placement.contract import Loaded, Placement, Setup, frozen_copy
from cat_framework.engine.placement.gathered_copy import GatheredCopy
from cat_framework.engine.placement.on_shards import OnShards
from cat_framework.engine.placement.one_step_off import OneStepOff
from cat_framework.engine.placement.separate_engine import SeparateEngine
from cat_framework.engine.placement.server import Server
from cat_framework.errors import CatError, UnknownComponentError
from cat_framework.pipeline import Pipeline
from cat_framework.pipeline.build import BackendPool
from cat_framework.plugins import Plugins

log = structlog.get_logger("cat_framework.placement")


@dataclass(frozen=True)
class Launch:
    """What the launch decides: sharded weights (FSDP2) and how many processes."""

    sharded: bool = False
    processes: int = 1

    @classmethod
    def of(cls, accelerator: Any) -> Launch:
        return cls(fsdp.is_fsdp2(accelerator), accelerator.num_processes)


@dataclass(frozen=True)
class Choice:
    """The table's answer for one run."""

    trains_with: type[TrainableBackend]  # the backend class that wraps the trained module
    engine: bool  # the policy backend is a separate engine fed weights
    sharded: bool
    on_shards: bool  # sharded modules generate in lock-step
    one_step_off: bool
    server: bool = False  # that engine is servers every process shares
    rollout_dtype: torch.dtype | None = None  # samples from an in-process copy at this dtype

    @property
    def topology(self) -> type[Placement]:
        if self.engine and self.server:
            return Server
        copy = self.one_step_off or self.rollout_dtype is not None  # weights of its own
        if self.engine or (copy and not self.sharded):
            return SeparateEngine
        if self.sharded:
            return OnShards if self.on_shards else GatheredCopy
        return Colocated


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


_ON_SHARDS = "trainer.fsdp_gather_for_generation: false"
_ROLLOUT_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}

#: (refused when, why and what to do): checked in this order, each with the run's choice
REFUSALS: list[tuple[Callable[[Choice, Pipeline], bool], str]] = [
    (
        lambda c, p: c.on_shards and p.config.trainer.lora is not None,
        f"{_ON_SHARDS} does not support trainer.lora yet: set "
        "trainer.fsdp_gather_for_generation: true (a gathered generation copy) to train LoRA "
        "under FSDP2",
    ),
    (
        lambda c, p: c.on_shards and not c.trains_with.supports_lockstep(),
        "{where}: backend {name!r} cannot generate in lock-step on sharded weights (it "
        "implements no idle_forward, see TrainableBackend in cat_framework.components); set "
        "trainer.fsdp_gather_for_generation: true",
    ),
    (
        lambda c, p: c.on_shards and c.one_step_off,
        "trainer.async_rollouts: 1 samples from whole weights while the update runs, but "
        f"{_ON_SHARDS} generates on the shards (every forward a collective of all processes): "
        "set one of them back",
    ),
    (
        lambda c, p: c.rollout_dtype is not None and c.engine,
        "trainer.rollout_dtype: {dtype} makes an in-process sampling copy, but models.policy's "
        "backend {policy!r} samples on its own engine: set that engine's precision in its own "
        "params (e.g. dtype: bfloat16) and trainer.rollout_dtype: same",
    ),
    (
        lambda c, p: c.rollout_dtype is not None and c.on_shards,
        "trainer.rollout_dtype: {dtype} samples from a whole copy of the weights, but "
        f"{_ON_SHARDS} generates on the shards: set one of them back",
    ),
]


def choose(pipeline: Pipeline, plugins: Plugins, launch: Launch) -> Choice:
    """The run's placement, after every refusal (a :class:`CatError` with the fix)."""
    cfg = pipeline.config
    comp = pipeline.component("models", "policy")
    if comp is None:
        raise CatError("the pipeline has no models.policy")
    cls = trainable_class(comp.cls, plugins)
    engine = cls is not comp.cls  # e.g. vllm samples; a transformers twin of the model trains
    if engine and comp.cls.update_weights is Backend.update_weights:
        raise CatError(
            f"models.policy: backend {comp.name!r} cannot receive the trainer's weights, so it "
            "cannot serve a policy being trained; use a trainable backend (`cat-framework "
            "components` lists them) or an engine that receives weights (a remote server can "
            "still be the judge or the anchor)"
        )
    on_shards = launch.sharded and not cfg.trainer.fsdp_gather_for_generation
    one_step_off = bool(cfg.trainer.async_rollouts) and cfg.mode == "train"
    server = engine and comp.cls.shared_sampler
    dtype = _ROLLOUT_DTYPES.get(cfg.trainer.rollout_dtype)
    choice = Choice(cls, engine, launch.sharded, on_shards, one_step_off, server, dtype)
    for refused, why in REFUSALS:
        if refused(choice, pipeline):
            raise CatError(
                why.format(
                    where=_ON_SHARDS, name=cls.name, policy=comp.name,
                    dtype=cfg.trainer.rollout_dtype,
                )
            )  # fmt: skip
    return choice


def check_placement(pipeline: Pipeline, plugins: Plugins) -> None:
    """What ``validate`` can know without a launch: the refusals of a one-process run, and,
    when the pipeline asks to generate on FSDP2 shards (a setting that only means something
    under FSDP2), those of a sharded one."""
    choose(pipeline, plugins, Launch())
    if not pipeline.config.trainer.fsdp_gather_for_generation:
        choose(pipeline, plugins, Launch(sharded=True, processes=2))


def pi0_generates(pipeline: Pipeline) -> bool:
    """Whether pi_0 serves a role (anchor or judge), so it must sample on its own."""
    models = pipeline.config.models
    return models.anchor == "initial-policy" or models.judge == "initial-policy"


def needs_frozen_copy(pipeline: Pipeline) -> bool:
    """Whether pi_0 must exist as weights: a KL term, or an anchor/judge that is pi_0."""
    return pipeline.config.trainer.beta > 0 or pi0_generates(pipeline)


def load_trained(pipeline: Pipeline, cls: type[TrainableBackend], device: Any) -> Loaded:
    """Load the policy once, on ``device``, with the backend class that trains it."""
    comp = pipeline.component("models", "policy")
    assert comp is not None
    params = comp.params.model_dump()
    if cls is not comp.cls:  # the trainer's twin of an engine: the same model, its own defaults
        params = {"model": params["model"]}
    if params.get("device", "auto") == "auto":
        params["device"] = "cpu" if device.type == "cpu" else str(device)  # FSDP2: "cpu:0"
    trainable = cls(params)
    model = trainable.model
    if not isinstance(model, torch.nn.Module):
        raise CatError(
            f"backend {cls.name!r} is a TrainableBackend but its model is a "
            f"{type(model).__name__}, not a torch.nn.Module"
        )
    if pipeline.config.trainer.gradient_checkpointing:  # before LoRA: peft prepares for it
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return Loaded(cls, params, trainable, model, trainable.tokenizer)


def build_placement(
    pipeline: Pipeline,
    plugins: Plugins,
    pool: BackendPool,
    accelerator: Any,
    *,
    need_frozen: bool,
    plan: Plan | None = None,
) -> Placement:
    """Load the policy and build the run's placement (:func:`choose`); ``plan`` gives a step's
    prompts and seeds to one-step-off sampling."""
    cfg = pipeline.config
    choice = choose(pipeline, plugins, Launch.of(accelerator))
    loaded = load_trained(pipeline, choice.trains_with, accelerator.device)
    lockstep = None
    if choice.on_shards and accelerator.num_processes > 1:
        lockstep = Lockstep(accelerator.device)
    setup = Setup(
        cfg.rollouts, cfg.trainer.lora, need_frozen, pi0_generates(pipeline), accelerator,
        on_shards=choice.on_shards, lockstep=lockstep, rollout_dtype=choice.rollout_dtype,
    )  # fmt: skip
    topology = choice.topology
    if issubclass(topology, SeparateEngine):
        comp = pipeline.component("models", "policy")
        assert comp is not None
        if choice.engine:
            sampler: Backend = pool.get(comp)
        else:  # one-step-off or a lower precision: a sampling copy of its own
            sampler = loaded.backend_for(frozen_copy(loaded.model, choice.rollout_dtype))
            log.info("rollouts sample from a copy of the weights, refreshed per step",
                     dtype=str(choice.rollout_dtype or "same"))  # fmt: skip
        placement: Placement = topology(loaded, setup, sampler, sharded=choice.sharded)
    else:
        placement = topology(loaded, setup)
    placement.model.train()
    log.info("placement", topology=placement.topology, lora=placement.lora)
    if choice.one_step_off:
        assert plan is not None, "one-step-off sampling needs the run's plan"
        placement = OneStepOff(placement, plan)
    return placement


__all__ = [
    "Choice",
    "Launch",
    "build_placement",
    "check_placement",
    "choose",
    "needs_frozen_copy",
    "pi0_generates",
    "trainable_class",
]
