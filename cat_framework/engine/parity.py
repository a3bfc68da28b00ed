"""Weight parity between the trainer and a separate sampling engine (vLLM): after every push,
the engine must serve exactly the weights the trainer produced. A push that skips a tensor, or
an engine that silently ignores a name it does not load, would otherwise leave rollouts coming
from stale weights with no error anywhere.

The trainer records a float64 sum (and absolute sum) of each tensor while it streams them out
(:class:`Pushed`); once the engine has loaded them, the engine's own sums
(:meth:`cat_framework.components.Backend.weight_checksums`) are compared with them
(:func:`check_engine`). Cost: one pass over each tensor on the trainer side (after the first
check, in the engine's dtype only; the first push sums each lower precision too), in chunks (no
float64 copy of a whole tensor), and whatever the backend spends reading its weights (vLLM: a
sum per tensor, or one matrix-vector product per layer where its CPU kernels repacked them).
Sums cannot see a permutation within a tensor; they do see a stale, missing or damaged one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import structlog
import torch

from cat_framework.components import EXACT_RTOL, Backend, WeightChecksums
from cat_framework.errors import CatError

log = structlog.get_logger("cat_framework.parity")

_CHUNK = 1 << 22


def sums(tensor: torch.Tensor) -> tuple[float, float]:
    """(sum, sum of absolute values) in float64, summed in chunks."""
    total = absolute = 0.0
    for chunk in tensor.detach().reshape(-1).split(_CHUNK):
        wide = chunk.double()
        total += float(wide.sum())
        absolute += float(wide.abs().sum())
    return total, absolute


#: the lower precisions an engine may serve a float32 trainer's weights in
_ENGINE_DTYPES = (torch.bfloat16, torch.float16)


def sums_by_dtype(
    tensor: torch.Tensor, dtype: torch.dtype | None = None
) -> dict[torch.dtype, tuple[float, float]]:
    """:func:`sums` of ``tensor`` as it is and, for float32, as the lower precision an engine
    holds it in (``dtype``; unknown before the first check: each one it may be), so it is
    compared in the engine's dtype: a stale or zeroed tensor cannot hide in rounding."""
    out = {tensor.dtype: sums(tensor)}
    if tensor.dtype == torch.float32:
        for low in _ENGINE_DTYPES if dtype is None else (dtype,):
            if low in _ENGINE_DTYPES:
                out[low] = sums(tensor.to(low))
    return out


class Pushed:
    """The sums of the tensors a push carried, recorded as they stream past, and the names the
    trainer meant to push (``expected``): a name missing from the push is caught on the
    trainer's side, whatever the engine reports. ``summing=False`` records the names alone, for
    an engine known to report no checksums (its sums would be a wasted pass per tensor)."""

    def __init__(
        self,
        expected: Iterable[str] | None = None,
        dtype: torch.dtype | None = None,
        *,
        summing: bool = True,
    ) -> None:
        self.sums: dict[str, dict[torch.dtype, tuple[float, float]]] = {}
        self.names: set[str] = set()
        self.expected = None if expected is None else set(expected)
        self.dtype = dtype  # the engine's, once a check has told it
        self.summing = summing
        self.bytes = 0  # what the push carried

    def record(
        self, named_tensors: Iterable[tuple[str, torch.Tensor]]
    ) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in named_tensors:
            self.names.add(name)
            if self.summing:
                self.sums[name] = sums_by_dtype(tensor, self.dtype)
            self.bytes += tensor.numel() * tensor.element_size()
            yield name, tensor

    def skipped(self) -> list[str]:
        """The expected names the push did not carry."""
        return sorted((self.expected or set()) - self.names)

    def of(self, name: str, dtype: torch.dtype | None) -> tuple[float, float]:
        by_dtype = self.sums[name]
        return by_dtype.get(dtype) or next(iter(by_dtype.values()))  # type: ignore[arg-type]


def mismatches(served: WeightChecksums, pushed: Pushed) -> tuple[list[str], int]:
    """The served weights that differ from the pushed ones, and how many were compared. A
    served key none of whose parts the push carried is not compared (an engine may name a
    weight the trainer does not have)."""
    wrong, compared = [], 0
    for key, value in served.sums.items():
        parts = key.split("+")
        carried = [p in pushed.sums for p in parts]
        if not any(carried):
            continue
        compared += 1
        if not all(carried):  # a fused weight the push carried only part of
            wrong.append(f"{parts[carried.index(False)]} (not pushed)")
            continue
        total = math.fsum(pushed.of(p, served.dtype)[0] for p in parts)
        scale = math.fsum(pushed.of(p, served.dtype)[1] for p in parts)
        if math.isnan(total) and math.isnan(value):
            continue  # NaN weights are the trainer's problem, not the push's
        rtol = EXACT_RTOL if key in served.exact else served.rtol
        if not abs(value - total) <= rtol * scale:
            wrong.append(_shown(parts))
    return wrong, compared


def _shown(parts: list[str]) -> str:
    """``a.q_proj.weight (fused with k_proj, v_proj)`` for a fused weight."""
    if len(parts) == 1:
        return parts[0]
    others = ", ".join(p.rpartition(".")[0].rpartition(".")[2] for p in parts[1:])
    return f"{parts[0]} (fused with {others})"


def check_engine(backend: Backend, pushed: Pushed) -> WeightChecksums | None:
    """Compare what ``backend`` serves with what the push carried; raise :class:`CatError`
    naming the tensors that differ, or the push skipped. Returns what the engine reported
    (its dtype lets the next push sum only that one), None when it cannot report its weights
    (a skipped name is still caught)."""
    skipped = pushed.skipped()
    if skipped:
        raise CatError(
            f"weight parity check failed: the push to the {backend.name} engine skipped "
            f"{len(skipped)} of the trainer's tensor(s) ({', '.join(skipped[:3])}); rollouts "
            "would come from stale weights"
        )
    served = backend.weight_checksums()
    if served is None or not pushed.summing:  # nothing to compare this time
        return served
    wrong, compared = mismatches(served, pushed)
    if wrong:
        raise CatError(
            f"weight parity check failed after pushing the trained weights to the {backend.name} "
            f"engine{f' ({served.source})' if served.source else ''}: {len(wrong)} of {compared} tensor(s) differ from the trainer's "
            f"({', '.join(wrong[:3])}; relative tolerance {EXACT_RTOL:.0e} read directly, "
            f"{served.rtol:.1e} through a kernel); rollouts would "
            "come from other weights than the trainer's. A push that skipped or misnamed a "
            "tensor, or an engine that did not load it, causes this"
        )
    if compared == 0:
        log.warning(
            "weight parity: no tensor compared",
            backend=backend.name,
            served=len(served.sums),
            pushed=len(pushed.sums),
        )
    return served


__all__ = ["Pushed", "check_engine", "mismatches", "sums", "sums_by_dtype"]
