"""One-step-off sampling (``trainer.async_rollouts: 1``) around any placement whose sampler
keeps weights of its own: step t+1's rollouts are sampled while step t's update runs
(:mod:`cat_framework.engine.async_rollouts`), and are kept in every checkpoint as a per-process
extra slot, so a resumed run trains on exactly them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from cat_framework.engine.async_rollouts import SLOT, Plan, RolloutsAhead, pending_values
from cat_framework.engine.checkpoint import Checkpoint, SlotCheck
from cat_framework.engine.placement.contract import Placement, Sampled
from cat_framework.types import Prompt


class OneStepOff(Placement):
    """Wraps ``inner``: sampling takes the rollouts sampled ahead; entering an update starts
    the next step's sampling (instead of releasing the sampler), leaving it waits for that
    sampling before ``inner`` pushes the new weights."""

    def __init__(self, inner: Placement, plan: Plan) -> None:  # no super(): all is inner's
        self.inner = inner
        self.plan = plan
        self.ahead = RolloutsAhead(inner.sampler, inner.rollouts, plan)

    def __getattr__(self, name: str) -> Any:  # model, sampler, anchor, ...: the inner ones
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def topology(self) -> str:  # type: ignore[override]
        return f"{self.inner.topology}+one-step-off"

    @property
    def vocab(self) -> int:
        return self.inner.model.get_input_embeddings().num_embeddings

    def sample(self, step: int, prompts: Sequence[Prompt], seeds: Sequence[int]) -> Sampled:
        # rollouts without the sampler's log-probs are refused by the step, on every process
        # alike (``GRPOStep._everyone_aligned``): one process must not stop alone here
        taken = self.ahead.take(step, prompts, seeds)
        metrics = {
            "time/rollouts_sampling": taken.sample_seconds,
            "rollouts/staleness": float(taken.staleness),
        }
        return Sampled(taken.groups, taken.sample_seconds, taken.staleness, True, metrics)

    def before_update(self, step: int | None) -> None:
        if step is None:
            self.inner.before_update(step)
        else:  # with the weights the sampler holds: pushed after the update
            self.ahead.start(step + 1)

    def after_update(self, step: int | None) -> dict[str, float]:
        waited = self.ahead.join()  # the sampler keeps the old weights until it is done
        return {"time/rollouts_wait": waited, **self.inner.after_update(step)}

    @property
    def pushes_weights(self) -> bool:
        return self.inner.pushes_weights

    def push(self) -> dict[str, float]:
        return self.inner.push()

    def release(self) -> None:
        self.inner.release()

    @contextmanager
    def reference(self) -> Iterator[torch.nn.Module]:
        with self.inner.reference() as module:
            yield module

    def settle(self) -> None:
        self.inner.settle()

    def extra_state(self) -> dict[str, Any]:
        state = self.ahead.state()
        return {**self.inner.extra_state(), **({SLOT: state} if state is not None else {})}

    def extra_checks(self) -> dict[str, SlotCheck]:
        return {**self.inner.extra_checks(), SLOT: pending_values(self.vocab)}

    def begin(self) -> dict[str, float]:
        return self.inner.begin()

    def resume(self, ckpt: Checkpoint) -> None:
        self.inner.resume(ckpt)
        planned = self.plan(ckpt.step + 1)
        if planned is not None:
            acc = self.inner.setup.accelerator
            self.ahead.resume(
                ckpt, ckpt.step + 1, planned[0], acc.num_processes, acc.process_index,
                vocab=self.vocab,
            )  # fmt: skip

    def export(self) -> dict[str, torch.Tensor] | None:
        return self.inner.export()

    def close(self) -> None:
        self.ahead.close()  # a sampling still running finishes before its sampler closes
        self.inner.close()


__all__ = ["OneStepOff"]
