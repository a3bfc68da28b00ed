"""The teacher's roles when TRL trains the policy.

TRL owns the model it trains: the teacher never calls it. ``initial-policy`` (the anchor's and,
by default, the judge's role) is a frozen copy of the initial policy that our backend loads once
from the pipeline's ``models.policy`` spec, which must name the model TRL trains; any other
backend the pipeline names is loaded as in ``cat-framework run``. ``models.anchor: policy`` or
``models.judge: policy`` (the model being trained) is refused.

Backends load on first use: a teacher whose aggregator and reward call no model (majority vote
and the programmatic reward) never loads a second copy of the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cat_framework.components import Backend, Roles
from cat_framework.errors import CatError
from cat_framework.pipeline import Pipeline
from cat_framework.pipeline.build import BackendPool
from cat_framework.types import Completion, GenerationRequest, Message


class TrainedPolicy(Backend):
    """Stands for the model TRL trains, which the teacher may not call (a component with
    ``role: policy`` or ``scorer: policy`` is refused at its first call)."""

    name = "trl-policy"

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        raise CatError(_policy_message("sample from"))

    def score(
        self,
        contexts: Sequence[Sequence[Message] | str],
        continuations: Sequence[str | Sequence[int]],
    ) -> list[list[float]]:
        raise CatError(_policy_message("score with"))


def _policy_message(what: str) -> str:
    return (
        f"a teacher component asked to {what} the policy being trained, but under TRL that model "
        "is TRL's and the teacher reward cannot call it. Give that component the anchor instead "
        "(e.g. synthesis role: anchor, minppl scorer: anchor), which is the frozen initial policy"
    )


class LazyBackend(Backend):
    """A backend built on its first call (by ``build``), then shared."""

    name = "lazy"

    def __init__(self, build: Callable[[], Backend], label: str) -> None:
        super().__init__()
        self._build = build
        self._backend: Backend | None = None
        self.label = label

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = self._build()
        return self._backend

    @property
    def loaded(self) -> bool:
        return self._backend is not None

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        return self.backend.generate(requests)

    def score(
        self,
        contexts: Sequence[Sequence[Message] | str],
        continuations: Sequence[str | Sequence[int]],
    ) -> list[list[float]]:
        return self.backend.score(contexts, continuations)

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()


def trl_roles(pipeline: Pipeline, pool: BackendPool) -> Roles:
    """Policy: TRL's (never called); anchor: pi_0 (``initial-policy``) or the backend the
    pipeline names; judge: the anchor, pi_0 or its own backend."""
    models = pipeline.config.models
    for role in ("anchor", "judge"):
        if getattr(models, role) == "policy":
            raise CatError(
                f"models.{role}: 'policy' is the model being trained, which TRL owns: the "
                "teacher reward cannot call it. Use 'initial-policy' (a frozen copy of the "
                "initial policy, loaded once) or a backend spec of its own"
            )

    def lazy(path: str) -> LazyBackend:
        comp = pipeline.component("models", path)
        if comp is None:
            raise CatError(f"the pipeline has no models.{path} backend spec")
        return LazyBackend(lambda: pool.get(comp), f"models.{path}")

    pi0 = lazy("policy")  # the initial weights: our own copy, never TRL's model
    anchor = pi0 if models.anchor == "initial-policy" else lazy("anchor")
    if isinstance(models.judge, str):
        judge = anchor if models.judge == "anchor" else pi0
    else:
        judge = lazy("judge")
    return Roles(policy=TrainedPolicy(), anchor=anchor, judge=judge)


__all__ = ["LazyBackend", "TrainedPolicy", "trl_roles"]
