"""What a vLLM engine really serves, as one float64 sum per weight, for the trainer's weight-parity
check after a push (:meth:`cat_framework.components.Backend.weight_checksums`).

Two vLLM habits shape it. vLLM fuses layers (q/k/v into ``qkv_proj``, gate/up into
``gate_up_proj``; the model's ``packed_modules_mapping``): a sum is additive over concatenation,
so a fused weight is reported under its parts' checkpoint names joined by ``+``. vLLM's CPU build
repacks each linear weight into a kernel layout and frees the parameter (and serves the output
head from such a packed copy too): those sums are read through the engine's own kernel, as the
layer's output for an all-ones input (``W @ 1`` sums each row), which costs one decode-sized
matrix-vector product per layer. Readable parameters are summed directly.
"""

from __future__ import annotations

from typing import Any

import torch

from cat_framework import WeightChecksums

#: elements summed at a time (bounds the float64 copy)
_CHUNK = 1 << 22
#: float32 accumulation error of the all-ones probe, relative to the weight's absolute sum
PROBE_RTOL = 256 * torch.finfo(torch.float32).eps
HEAD = "lm_head.weight"


def float64_sum(tensor: torch.Tensor) -> float:
    """Sum in float64 without a float64 copy of the whole tensor."""
    flat = tensor.detach().reshape(-1)
    return sum(float(c.double().sum()) for c in flat.split(_CHUNK))


def checkpoint_key(name: str, packed: dict[str, list[str]]) -> str:
    """``...qkv_proj.weight`` -> ``...q_proj.weight+...k_proj.weight+...v_proj.weight``."""
    module, _, param = name.rpartition(".")
    parent, _, leaf = module.rpartition(".")
    parts = packed.get(leaf)
    if not parts:
        return name
    prefix = f"{parent}." if parent else ""
    return "+".join(f"{prefix}{part}.{param}" for part in parts)


def _probe(layer: torch.nn.Module, weight: torch.Tensor, width: int) -> float:
    """Sum of the weight a CPU kernel serves: its output for an all-ones input, bias left out."""
    ones = torch.ones(1, width, dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        return float64_sum(layer.cpu_linear(ones, weight, None))


def served_sums(model: torch.nn.Module) -> tuple[dict[str, float], set[str]]:
    """Float64 sum of every weight ``model`` (a vLLM model in this process) serves, by checkpoint
    name, and the names read element by element (the rest went through a kernel probe);
    weights that are neither readable nor probe-able are left out (nothing to compare)."""
    packed = dict(getattr(model, "packed_modules_mapping", None) or {})
    sums: dict[str, float] = {}
    exact: set[str] = set()
    for name, param in model.named_parameters():
        module_name, _, param_name = name.rpartition(".")
        layer = model.get_submodule(module_name)
        if param.numel():
            key = checkpoint_key(name, packed)
            sums[key] = float64_sum(param)
            exact.add(key)
        elif param_name == "weight" and hasattr(layer, "cpu_linear"):
            width = getattr(layer, "input_size_per_partition", None)
            if width:
                sums[checkpoint_key(name, packed)] = _probe(layer, param, int(width))
    head = getattr(model, "lm_head", None)
    if head is not None and hasattr(head, "cpu_linear") and hasattr(head, "weight"):
        sums[HEAD] = _probe(head, head.weight, int(head.embedding_dim))  # the packed copy
        exact.discard(HEAD)
    return sums, exact


def worker_sums(worker: Any) -> tuple[dict[str, float], set[str]]:
    """Run inside the engine's worker (``LLM.collective_rpc``)."""
    return served_sums(worker.model_runner.get_model())


def engine_checksums(llm: Any, dtype: Any) -> WeightChecksums | None:
    """What an in-process, single-worker engine serves (``None`` with several workers: each
    holds a part). Directly read weights compare exactly in the engine's ``dtype``; probed ones
    within the probe's float32 accumulation error plus the dtype's rounding."""
    results = llm.collective_rpc(worker_sums)
    if len(results) != 1:
        return None
    sums, exact = results[0]
    dtype = dtype if isinstance(dtype, torch.dtype) else torch.float32
    rtol = PROBE_RTOL + torch.finfo(dtype).eps
    return WeightChecksums(sums, rtol=rtol, dtype=dtype, exact=frozenset(exact))


__all__ = [
    "HEAD",
    "PROBE_RTOL",
    "checkpoint_key",
    "engine_checksums",
    "float64_sum",
    "served_sums",
    "worker_sums",
]
