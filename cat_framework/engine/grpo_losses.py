"""GRPO loss aggregations, registered by name: the one place a ``loss_type`` is spelled.

``grpo.grpo_loss`` computes one loss per token and hands it, with the mask and the batch-wide
normalisers, to the pure function registered here under ``loss_type`` (as verl's
``core_algos``). The pipeline schema's ``trainer.loss_type`` is :data:`LossType`, built from the
registry, so adding a variant here is all it takes to make it selectable and documented.

A variant registered later with :func:`register_loss` (e.g. by a third-party package) can be
passed to ``grpo_loss`` directly; the pipeline schema knows the names registered when this
module is imported, i.e. the built-in ones.

No torch import at run time: validating a pipeline imports this module and stays light.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Normalisers:
    """Counts a loss may divide by. Pass the whole batch's (all micro-batches and processes) so
    micro-batch losses sum to the batch's loss."""

    num_sequences: int
    num_tokens: float | None = None  # None: the tokens of this call's mask
    max_completion_length: int | None = None


#: ``fn(per_token [B,T], mask [B,T], normalisers) -> scalar loss``
Aggregate = Callable[["torch.Tensor", "torch.Tensor", Normalisers], "torch.Tensor"]


@dataclass(frozen=True)
class LossVariant:
    """A registered aggregation and the normalisers it cannot do without."""

    name: str
    aggregate: Aggregate
    requires: tuple[str, ...] = ()

    def check(self, norm: Normalisers) -> None:
        """Fail before any compute when a required normaliser is missing or below 1."""
        for field in self.requires:
            value = getattr(norm, field)
            if value is None or value < 1:
                raise ValueError(f"loss_type={self.name!r} needs a positive {field}")


#: name -> variant, in registration order (the order the schema and its docs list them)
LOSSES: dict[str, LossVariant] = {}


def register_loss(name: str, *, requires: tuple[str, ...] = ()) -> Callable[[Aggregate], Aggregate]:
    """Decorator: make ``fn`` the aggregation of ``loss_type: name``.

    ``requires`` names :class:`Normalisers` fields that must be positive for this variant.
    A name is registered once, so a plugin cannot silently change a built-in loss.
    """
    known = {f.name for f in fields(Normalisers)}
    unknown = [r for r in requires if r not in known]
    if unknown:
        raise ValueError(f"requires {unknown} are not Normalisers fields {sorted(known)}")

    def add(fn: Aggregate) -> Aggregate:
        if name in LOSSES:
            raise ValueError(f"loss_type {name!r} is already registered")
        LOSSES[name] = LossVariant(name, fn, tuple(requires))
        return fn

    return add


def loss_names() -> tuple[str, ...]:
    """The registered ``loss_type`` names, in registration order."""
    return tuple(LOSSES)


def get_loss(name: str) -> LossVariant:
    """The variant registered as ``name``; a ValueError listing the registered names if none."""
    variant = LOSSES.get(name)
    if variant is None:
        raise ValueError(f"loss_type must be one of {loss_names()}, got {name!r}")
    return variant


@register_loss("grpo")
def sequence_mean(per_token: torch.Tensor, mask: torch.Tensor, norm: Normalisers) -> torch.Tensor:
    """Masked token mean of each sequence, summed and divided by ``num_sequences`` (GRPO; a row
    without tokens adds 0). Long and short completions weigh the same."""
    per_seq = (per_token * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1.0)
    return per_seq.sum() / norm.num_sequences


@register_loss("dr_grpo", requires=("max_completion_length",))
def constant_normaliser(
    per_token: torch.Tensor, mask: torch.Tensor, norm: Normalisers
) -> torch.Tensor:
    """Token sum over ``num_sequences * max_completion_length`` (Dr. GRPO): a constant
    denominator, so no length bias from normalising by each completion's own length."""
    assert norm.max_completion_length is not None  # LossVariant.check
    return (per_token * mask).sum() / (norm.num_sequences * norm.max_completion_length)


@register_loss("dapo")
def token_mean(per_token: torch.Tensor, mask: torch.Tensor, norm: Normalisers) -> torch.Tensor:
    """Token sum over the number of tokens, at least 1 (DAPO, as TRL): every token weighs the
    same, whichever completion it is in."""
    denom = mask.sum().item() if norm.num_tokens is None else float(norm.num_tokens)
    return (per_token * mask).sum() / max(denom, 1.0)


#: the names registered at import, as a type: the pipeline schema's ``trainer.loss_type``
LossType = Literal[loss_names()]  # type: ignore[valid-type]
