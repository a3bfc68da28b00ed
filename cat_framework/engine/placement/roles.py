"""The teacher's roles in a training run, from the placement: the policy is whatever samples the
current weights, ``initial-policy`` is pi_0, and any other name is a backend the pipeline
specifies."""

from __future__ import annotations

from cat_framework.components import Backend, Roles
from cat_framework.engine.placement.contract import Placement
from cat_framework.pipeline import Pipeline
from cat_framework.pipeline.build import BackendPool


def training_roles(pipeline: Pipeline, pool: BackendPool, placement: Placement) -> Roles:
    """Policy = the sampler of the current weights; anchor = pi_0 unless the pipeline names its
    own backend; judge = the anchor unless told otherwise."""
    models = pipeline.config.models

    def spec_backend(path: str) -> Backend:
        comp = pipeline.component("models", path)
        assert comp is not None, f"models.{path} has no backend spec"
        return pool.get(comp)

    named = {"policy": placement.sampler, "initial-policy": placement.anchor}
    anchor = named.get(models.anchor) if isinstance(models.anchor, str) else None
    anchor = anchor or spec_backend("anchor")
    if isinstance(models.judge, str):
        judge = anchor if models.judge == "anchor" else named[models.judge]
    else:
        judge = spec_backend("judge")
    return Roles(policy=placement.sampler, anchor=anchor, judge=judge)


__all__ = ["training_roles"]
