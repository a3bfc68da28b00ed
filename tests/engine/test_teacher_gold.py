"""CaT is label-free: the whole teacher path (explore -> every aggregator -> every reward
deriver) runs on prompts whose gold answer and physician rubric raise if anything reads them."""

from __future__ import annotations

import pytest

from cat_framework import Criterion, Prompt, Roles
from cat_framework.engine.teacher import Teacher, explore
from cat_framework.pipeline.schema import Rollouts
from tests.helpers.echo_backend import EchoBackend
from tests.helpers.gold_trap import trap_prompt


def trapped(i: int, task: str) -> Prompt:
    return trap_prompt(
        str(2 * i),
        id=f"q{i}",
        messages=[{"role": "user", "content": f"What is {i} + {i}?"}],
        rubric=(Criterion("Gives the number", 1.0),),
        meta={"task": task},
    )


REPLIES = ["so \\boxed{4}", "so \\boxed{4}", "maybe \\boxed{5}"]


@pytest.mark.parametrize(
    "aggregator",
    ["synthesis", "majority", "minppl", "mutual_predictability", "best_of_n", "single"],
)
@pytest.mark.parametrize("reward", ["programmatic", "rubric", "judge"])
def test_teacher_never_reads_gold(aggregator, reward, make_plugins):
    plugins = make_plugins()
    backend = EchoBackend({"replies": REPLIES})
    roles = Roles(policy=backend, anchor=backend, judge=backend)
    agg = plugins.get("aggregator", aggregator)({}, roles=roles)
    rew = plugins.get("reward_deriver", reward)({}, roles=roles)
    prompts = [trapped(i, "math") for i in range(3)]
    groups = explore(backend, prompts, Rollouts(n=3, max_new_tokens=16), seed=0)
    out = Teacher(agg, rew).teach(groups)  # raises AssertionError if gold is read
    assert len(out.references) == 3
    assert all(len(r.values) == 3 for r in out.rewards)
    # and no request the models saw contains the gold answers' rubric text
    seen = " ".join(str(req) for call in backend.calls for req in call)
    assert "Gives the number" not in seen
