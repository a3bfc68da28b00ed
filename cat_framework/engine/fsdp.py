"""FSDP2 (``torch.distributed.fsdp.fully_shard``) through accelerate: what the sharded trainer
needs beyond data parallelism.

Under FSDP2 each process holds 1/N of the policy's weights, gradients and optimizer states, and
every forward pass all-gathers layer by layer: a collective that all processes must enter
together. Rollouts make a different number of forward passes on each process, so by default the
trainer keeps a *generation copy*: full weights, no gradients, refreshed after every optimizer
step by streaming the sharded parameters one at a time (``full_tensor()``, never the whole model
at once). The frozen pi_0 is sharded the same way when it only gives KL-reference log-probs (same
number of forward passes on every process); when it is also the anchor or the judge it generates,
so it stays whole. With ``trainer.fsdp_gather_for_generation: false`` neither exists whole: the
sharded modules generate in lock-step (:mod:`cat_framework.engine.lockstep`).

accelerate only builds FSDP on accelerators; on a CPU it launches gloo data parallelism and
ignores the FSDP settings. :func:`enable_on_cpu` turns such a launch into an FSDP2 one (the same
plugin, read from the same environment), so the sharded trainer is checked on CPU in CI.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

import structlog
import torch

from cat_framework.errors import CatError

log = structlog.get_logger("cat_framework.fsdp")


def requested() -> bool:
    """Whether ``accelerate launch`` was given an FSDP config (it exports this variable)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def is_fsdp2(accelerator: Any) -> bool:
    """Whether ``accelerator`` shards with FSDP2 (then even one process holds sharded tensors)."""
    return bool(getattr(accelerator, "is_fsdp2", False))


def check_version(accelerator: Any) -> None:
    """FSDP1 wraps modules in a way the trainer does not support: refuse it with the fix."""
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if plugin is not None and getattr(plugin, "fsdp_version", 1) != 2:
        raise CatError(
            "the accelerate config asks for FSDP version 1; the trainer supports FSDP2 only: set "
            "fsdp_config.fsdp_version: 2 (see pipelines/accelerate/fsdp2.yaml)"
        )


def enable_on_cpu(accelerator: Any, mixed_precision: str) -> None:
    """Make a CPU launch with an FSDP config shard with FSDP2 over its gloo process group."""
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if accelerator.num_processes < 2 or is_fsdp2(accelerator):
        return
    plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables accelerate exported
    if plugin.fsdp_version != 2:
        raise CatError(
            "the accelerate config asks for FSDP version 1; the trainer supports FSDP2 only: set "
            "fsdp_config.fsdp_version: 2 (see pipelines/accelerate/fsdp2_cpu_2proc.yaml)"
        )
    if mixed_precision != "no":
        plugin.set_mixed_precision(mixed_precision)
    # accelerate copies the process-level state into every later AcceleratorState(): set both
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin
    log.info("fsdp2 on cpu", processes=accelerator.num_processes)


def shard_frozen(module: torch.nn.Module, accelerator: Any) -> torch.nn.Module:
    """Shard a gradient-free module (pi_0 as KL reference) with the policy's FSDP2 settings."""
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    return fsdp2_prepare_model(accelerator, module)


def full_tensors(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``model.state_dict()`` with every sharded tensor gathered, one at a time. Every process
    must iterate it to the end (each ``full_tensor()`` is a collective)."""
    from torch.distributed.tensor import DTensor

    for name, tensor in model.state_dict().items():
        yield name, tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model on the main process's CPU (other processes get ``{}``); a collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of a sharded tensor (a plain tensor as it is)."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``value`` (a saved local shard) as a tensor sharded like ``param``."""
    from torch.distributed.tensor import DTensor

    if not isinstance(param, DTensor) or value.shape == param.shape:
        return value.to(param.device)
    return DTensor.from_local(
        value.to(param.device),
        param.device_mesh,
        param.placements,
        run_check=False,
        shape=param.shape,
        stride=param.stride(),
    )


def local_optimizer_state(optimizer: Any) -> dict[str, Any]:
    """The optimizer's state with each sharded tensor replaced by this process's shard."""
    state = optimizer.state_dict()
    return {
        **state,
        "state": {
            k: {n: local_tensor(v) if isinstance(v, torch.Tensor) else v for n, v in s.items()}
            for k, s in state["state"].items()
        },
    }


def load_local_optimizer_state(optimizer: Any, state: dict[str, Any]) -> None:
    """Inverse of :func:`local_optimizer_state`: shards become sharded tensors again."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    restored = {}
    for key, per_param in state["state"].items():
        param = params[int(key)]
        restored[int(key)] = {
            n: like(v, param) if isinstance(v, torch.Tensor) and v.dim() > 0 else v
            for n, v in per_param.items()
        }
    optimizer.load_state_dict({**state, "state": restored})


class ShardedLayout:
    """The checkpoint layout of FSDP2 weights (:class:`~cat_framework.engine.checkpoint.
    StateLayout`): each process writes and restores its own shards."""

    sharded = True
    description = "sharded weights (FSDP2)"

    def local(self, tensor: torch.Tensor) -> torch.Tensor:
        return local_tensor(tensor)

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        return local_optimizer_state(optimizer)

    def load_optimizer_state(self, optimizer: Any, state: dict[str, Any]) -> None:
        load_local_optimizer_state(optimizer, state)


SHARDED = ShardedLayout()


def release(module: torch.nn.Module) -> None:
    """Free a module's parameter storage (shapes kept) until :func:`restore`: the generation copy
    is not needed while the sharded module trains, and it is the largest per-process cost."""
    for param in module.parameters():
        if param.numel():
            param._cat_shape = param.shape  # type: ignore[attr-defined]
            param.data = torch.empty(0, dtype=param.dtype, device=param.device)


def restore(module: torch.nn.Module) -> None:
    """Allocate (uninitialised) storage for the parameters :func:`release` freed."""
    for param in module.parameters():
        shape = getattr(param, "_cat_shape", None)
        if shape is not None and not param.numel():
            param.data = torch.empty(shape, dtype=param.dtype, device=param.device)


def checksum(tensor: torch.Tensor) -> float:
    return float(tensor.detach().double().sum())


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))  # NaN weights are the trainer's problem


def check_parity(served: dict[str, torch.Tensor], expected: dict[str, float]) -> None:
    """After a push: the generation copy must hold every pushed tensor; a push that skipped or
    damaged one would sample from weights the trainer never had, silently."""
    wrong = [name for name in served if name not in expected]
    wrong += [n for n, value in expected.items() if not _same(checksum(served[n]), value)]
    if wrong:
        raise CatError(
            f"weight parity check failed after pushing the trained weights to the generation "
            f"copy: {len(wrong)} tensor(s) differ or were not pushed ({', '.join(wrong[:3])}); "
            "rollouts would come from other weights than the trainer's"
        )


__all__ = [
    "SHARDED",
    "ShardedLayout",
    "check_parity",
    "check_version",
    "checksum",
    "enable_on_cpu",
    "full_state_dict",
    "full_tensors",
    "is_fsdp2",
    "load_local_optimizer_state",
    "local_optimizer_state",
    "local_tensor",
    "release",
    "requested",
    "restore",
    "shard_frozen",
]
