"""LoRA under FSDP2: what the sharded trainer pushes to whatever samples its rollouts.

The sharded PEFT model cannot generate per process, so rollouts come from a whole copy. Two
designs were possible: a whole *base* copy receiving merged weights after every step, or a whole
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

from collections.abc import Iterator
from typing import Any

import torch

from cat_framework.engine import fsdp

PEFT_PREFIX = "base_model.model."
ADAPTER = "default"  # the adapter name peft's get_peft_model gives


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
    "adapter_tensors",
    "base_name",
    "copy_adapters",
    "is_adapter",
    "merged_tensors",
    "push_adapters",
]
