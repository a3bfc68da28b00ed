"""Validated pipeline -> live objects: role backends (each distinct model loaded once), datasets,
aggregators and reward derivers bound to the roles."""

from __future__ import annotations

from typing import Any

from cat_framework.components import Backend, Component, Roles
from cat_framework.pipeline.validate import Pipeline, ResolvedComponent


class BackendPool:
    """Builds backends, sharing one instance among roles with identical specs."""

    def __init__(self) -> None:
        self._built: dict[tuple[type, str], Backend] = {}

    def get(self, comp: ResolvedComponent) -> Backend:
        key = (comp.cls, comp.params.model_dump_json())
        if key not in self._built:
            backend = comp.build()
            assert isinstance(backend, Backend)
            self._built[key] = backend
        return self._built[key]

    def close(self) -> None:
        for backend in self._built.values():
            backend.close()
        self._built.clear()


def build_roles(pipeline: Pipeline, pool: BackendPool, policy: Backend | None = None) -> Roles:
    """Bind policy, anchor and judge (DESIGN.md section 2).

    ``policy`` lets the trainer pass a backend wrapping the model it trains; otherwise the policy
    spec is built. ``initial-policy`` (anchor or judge) is pi_0: the policy backend itself when
    nothing trains (test-time); the trainer binds pi_0 in ``build_training_roles``.
    """
    if policy is None:
        policy = pool.get(_require(pipeline, "models", "policy"))
    models = pipeline.config.models
    if isinstance(models.anchor, str):
        anchor = policy
    else:
        anchor = pool.get(_require(pipeline, "models", "anchor"))
    if isinstance(models.judge, str):
        # one meaning in every mode: "initial-policy" is pi_0, which at test time *is* the
        # policy (never a separately specified anchor model)
        judge = anchor if models.judge == "anchor" else policy
    else:
        judge = pool.get(_require(pipeline, "models", "judge"))
    return Roles(policy=policy, anchor=anchor, judge=judge)


def build_component(pipeline: Pipeline, *path: str | int, roles: Roles | None = None) -> Component:
    return _require(pipeline, *path).build(roles=roles)


def _require(pipeline: Pipeline, *path: Any) -> ResolvedComponent:
    comp = pipeline.component(*path)
    if comp is None:
        raise KeyError(f"pipeline has no component at {'.'.join(map(str, path))}")
    return comp
