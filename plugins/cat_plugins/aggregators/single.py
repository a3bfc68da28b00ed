"""The baseline: the first rollout is the reference."""

from __future__ import annotations

from collections.abc import Sequence

from cat_framework import Aggregator, Reference, RolloutGroup


class SingleAggregator(Aggregator):
    """The first rollout, unchanged (the single-sample baseline)."""

    name = "single"

    def aggregate(self, groups: Sequence[RolloutGroup]) -> list[Reference]:
        return [
            Reference(text=g.rollouts[0].text, method=self.name, details={"index": 0})
            for g in groups
        ]
