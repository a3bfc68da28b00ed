"""LoRA: adapters on the trained module, pi_0 as that module with its adapters off, and what
a push carries to whatever samples the rollouts.

Without sharding, pi_0 under LoRA is the policy's own base weights with adapters disabled, so no
second copy exists (:class:`AdapterDisabledBackend`). Under FSDP2 the sharded PEFT model cannot
generate per process, so rollouts come from a whole copy.

Two designs were possible: a whole *base* copy receiving merged weights after every step, or a whole
*PEFT* copy (the same base plus the same adapters) whose frozen base never changes. The second is
used: a push gathers only the adapter tensors (a few MB where merged weights are the whole model,
every step), the copy never needs freeing and refilling, and pi_0 is that copy with its adapters
switched off, so synthesis needs no third set of weights. Its cost is that the base copy stays
resident while the sharded module trains; under LoRA the sharded side holds 1/N of a frozen base
and tiny optimizer states, so the whole copy is the run's peak either way.

A separate sampling engine cannot take adapters here: it gets merged weights streamed one tensor at
a time (:func:`merged_tensors`), the same numbers as PEFT's ``merge_adapter`` without sharding.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol, cast

import structlog
import torch

from cat_framework.components import Backend, TrainableBackend
from cat_framework.engine import fsdp
from cat_framework.pipeline.schema import Lora
from cat_framework.types import Completion, GenerationRequest, Message

log = structlog.get_logger("cat_framework.lora")

PEFT_PREFIX = "base_model.model."
ADAPTER = "default"  # the adapter name peft's get_peft_model gives


class PeftModel(Protocol):
    """What the engine uses of a peft-wrapped model (peft is an optional dependency)."""

    def disable_adapter(self) -> Any: ...


class AdapterDisabledBackend(Backend):
    """pi_0 under LoRA: a backend of the PEFT module with its adapters switched off per call."""

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


def lora_copy(whole: torch.nn.Module, model: torch.nn.Module, lora: Lora) -> Any:
    """Wrap a whole copy of the base (in place) with adapters equal to ``model``'s, without
    drawing from the global RNG, so a sharded run samples like an unsharded one."""
    with torch.random.fork_rng(devices=[]):
        peft_copy = add_lora(whole, lora)
    copy_adapters(model, peft_copy)
    return peft_copy.eval().requires_grad_(False)


def engine_names(model: torch.nn.Module) -> list[str]:
    """What a push of merged weights must carry: every base weight, by its checkpoint name."""
    return [base_name(n) for n in model.state_dict() if not is_adapter(n)]


def is_adapter(name: str) -> bool:
    return "lora_" in name


def base_name(peft_name: str) -> str:
    """``base_model.model.x.base_layer.weight`` -> ``x.weight`` (the base checkpoint's name)."""
    return peft_name.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".")


def _gathered(tensor: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def adapter_tensors(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The adapter tensors of a (sharded) PEFT model, whole, by PEFT name; only they are
    gathered. Every process must consume the iterator to the end (a collective per tensor)."""
    for name, tensor in model.state_dict().items():
        if is_adapter(name):
            yield name, _gathered(tensor)


def push_adapters(
    model: torch.nn.Module, generation: torch.nn.Module
) -> Iterator[tuple[str, torch.Tensor]]:
    """The trained adapters, named as in ``generation`` (the whole copy's inner model, which
    peft wrapped in place); once the consumer has taken them all, the copy's adapters must equal
    them (:func:`fsdp.check_parity`)."""
    served = {n: t for n, t in generation.state_dict().items() if is_adapter(n)}
    expected = {}
    for name, tensor in adapter_tensors(model):
        target = name.removeprefix(PEFT_PREFIX)
        if target in served:
            expected[target] = fsdp.checksum(tensor.to(served[target].dtype))
        yield target, tensor
    fsdp.check_parity(served, expected)


def copy_adapters(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Give ``target`` (a PEFT copy of the same base) exactly ``source``'s adapter values."""
    values = {n: t for n, t in source.state_dict().items() if is_adapter(n)}
    with torch.no_grad():
        for name, tensor in target.state_dict().items():
            if is_adapter(name):
                tensor.copy_(values[name])


def merged_tensors(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """The base weights with the adapters merged in (``W + scaling * B @ A``, as PEFT's
    ``merge_adapter``), named as in the base checkpoint, gathered one tensor at a time (the
    adapters first, all of them: they are small). Every process must consume it to the end."""
    from peft.tuners.lora import LoraLayer

    adapters = dict(adapter_tensors(model))
    layers = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer) and ADAPTER in module.scaling
    }
    for name, tensor in model.state_dict().items():
        if is_adapter(name):
            continue
        full = _gathered(tensor)
        owner = name.removesuffix(".base_layer.weight")
        if owner != name and owner in layers:
            full = full + _delta(layers[owner], adapters, owner).to(full.dtype)
        yield base_name(name), full


def _delta(layer: Any, adapters: dict[str, torch.Tensor], owner: str) -> torch.Tensor:
    a = adapters[f"{owner}.lora_A.{ADAPTER}.weight"]
    b = adapters[f"{owner}.lora_B.{ADAPTER}.weight"]
    compute = torch.float32 if a.dtype in (torch.float16, torch.bfloat16) else a.dtype
    delta = (b.to(compute) @ a.to(compute)) * layer.scaling[ADAPTER]
    return delta.T if getattr(layer, "fan_in_fan_out", False) else delta


__all__ = [
    "AdapterDisabledBackend",
    "PeftModel",
    "adapter_tensors",
    "add_lora",
    "base_name",
    "copy_adapters",
    "engine_names",
    "is_adapter",
    "lora_copy",
    "merged_tensors",
    "push_adapters",
]
