"""The launch as the trainer sees it: the accelerate ``Accelerator`` (data parallelism or
FSDP2, CPU or GPU), what it requires of the batch, and what crosses processes outside a step."""

from __future__ import annotations

from typing import Any

import structlog
import torch

from cat_framework.engine import fsdp
from cat_framework.engine.process_group import join_process_group
from cat_framework.errors import CatError

log = structlog.get_logger("cat_framework.training")

#: accelerate launch modes the trainer supports: data parallelism (every process keeps whole
#: weights) and FSDP2 (sharded weights)
SUPPORTED_DISTRIBUTED = (
    "NO", "MULTI_CPU", "MULTI_GPU", "MULTI_XPU", "MULTI_NPU", "MULTI_MLU", "FSDP",
)  # fmt: skip


def make_accelerator(mixed_precision: str) -> Any:
    from accelerate import Accelerator

    join_process_group()  # first, in bounded time: the Accelerator reuses the group
    acc = Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())
    if fsdp.requested() and not torch.cuda.is_available():
        fsdp.enable_on_cpu(acc, mixed_precision)  # accelerate alone would run plain gloo DDP
    kind = str(getattr(acc.distributed_type, "value", acc.distributed_type))
    if kind not in SUPPORTED_DISTRIBUTED:
        raise CatError(
            f"accelerate distributed type {kind} is not supported by the trainer: use FSDP2 "
            "(pipelines/accelerate/fsdp2.yaml) to shard weights, gradients and optimizer "
            "states, or data parallelism (pipelines/accelerate/ddp.yaml)"
        )
    fsdp.check_version(acc)
    return acc


def check_processes(prompts_per_step: int, accelerator: Any) -> None:
    """Every process must get the same number of whole prompts (groups are never split, and
    per-step tensors are gathered across processes)."""
    world = accelerator.num_processes
    if prompts_per_step % world:
        raise CatError(
            f"trainer.prompts_per_step ({prompts_per_step}) must be a multiple of the number of "
            f"processes ({world}): set it to {world * max(1, round(prompts_per_step / world))} "
            "with --set trainer.prompts_per_step=N"
        )


def check_replicas_agree(model: torch.nn.Module, acc: Any) -> None:
    """Data-parallel processes must end with identical weights; a silent divergence (a step
    that skipped the gradient all-reduce) would otherwise surface only as bad results."""
    if acc.num_processes == 1:
        return
    if fsdp.is_fsdp2(acc):  # shards, not replicas: each holds different tensors by design
        log.info("sharded weights: no replica check", processes=acc.num_processes)
        return
    with torch.no_grad():
        local = torch.stack(
            [p.detach().double().sum() for p in model.parameters() if p.requires_grad]
        ).to(acc.device)
    everyone = acc.gather(local[None]).cpu()
    spread = float((everyone - everyone[0]).abs().max())
    if spread > 1e-6:
        raise CatError(f"data-parallel replicas diverged (max parameter-sum difference {spread})")
    log.info("replicas agree", processes=acc.num_processes, max_difference=spread)


def gather_records(acc: Any, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every process's records, in process order, on every process."""
    if acc.num_processes == 1:
        return records
    from accelerate.utils import gather_object

    return list(gather_object(records))


__all__ = [
    "SUPPORTED_DISTRIBUTED",
    "check_processes",
    "check_replicas_agree",
    "gather_records",
    "make_accelerator",
]
