"""Mutual predictability on a case computed by hand, and how its scoring prompts are built."""

from __future__ import annotations

import math
import re

import pytest

from cat_framework import Backend, Completion, ComponentParams, Prompt, Roles, RolloutGroup
from cat_plugins.aggregators.minppl import MinPPLAggregator
from cat_plugins.aggregators.mutual_predictability import (
    MutualPredictabilityAggregator,
    in_context,
    others_order,
)

QUESTION = "What is 3 + 4?"
#: rollout text -> its per-token log-probs when nothing precedes it (what minPPL sees)
BASE = {
    "so \\boxed{5}": [-0.1, -0.1],
    "thus \\boxed{7}": [-0.3, -0.5, -0.4],
    "hence \\boxed{7}": [-0.6, -0.6],
}
_BOX = re.compile(r"\\boxed\{([^}]*)\}")


class AgreementScorer(Backend):
    """A stand-in model whose every token of a candidate gains ``log((1 + a) / (1 + k))``, where
    ``k`` answers precede it in context and ``a`` of them box the same answer: others that agree
    make a rollout predictable. Records its calls."""

    name = "agreement"

    class Params(ComponentParams):
        pass

    def __init__(self) -> None:
        super().__init__()
        self.score_calls: list[tuple[list, list]] = []

    def generate(self, requests):
        raise AssertionError("mutual predictability only scores")

    def score(self, contexts, continuations):
        self.score_calls.append((list(contexts), list(continuations)))
        out = []
        for ctx, cont in zip(contexts, continuations, strict=True):
            earlier = [m["content"] for m in ctx if m["role"] == "assistant"]
            mine = _BOX.search(cont).group(1)
            agree = sum(1 for a in earlier if _BOX.search(a).group(1) == mine)
            bonus = math.log((1 + agree) / (1 + len(earlier)))
            out.append([lp + bonus for lp in BASE[cont]])
        return out


def group(texts, pid="q1", task="math", system=None):
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": QUESTION}
    ]
    prompt = Prompt(id=pid, messages=messages, gold_answer="GOLD-SENTINEL", meta={"task": task})
    return RolloutGroup(prompt, tuple(Completion(text=t) for t in texts))


def roles(backend):
    return Roles(policy=backend, anchor=backend, judge=backend)


def test_hand_computed_case_picks_the_rollout_the_others_predict():
    """A = so 5 (base NLL 0.1), B = thus 7 (0.4), C = hence 7 (0.6). With the two others in
    context: A agrees with none of 2 (+log 3), B and C each with one of 2 (+log 1.5):
    A 0.1 + 1.098612 = 1.198612, B 0.4 + 0.405465 = 0.805465, C 0.6 + 0.405465 = 1.005465.
    So B, where minPPL (the question alone in context) picks A."""
    texts = list(BASE)
    scorer = AgreementScorer()
    (ref,) = MutualPredictabilityAggregator(roles=roles(scorer)).aggregate([group(texts)])
    assert ref.details["mean_nll"] == pytest.approx([1.198612, 0.805465, 1.005465], abs=1e-6)
    assert ref.details["index"] == 1 and ref.text == "thus \\boxed{7}"
    assert ref.answer == "7" and ref.method == "mutual_predictability"
    (baseline,) = MinPPLAggregator({"scorer": "anchor"}, roles=roles(scorer)).aggregate(
        [group(texts)]
    )
    assert baseline.details["index"] == 0  # the case separates it from minPPL


def test_each_candidate_is_scored_last_after_all_the_others_in_one_call():
    scorer = AgreementScorer()
    groups = [group(list(BASE)), group(["so \\boxed{5}", "thus \\boxed{7}"], pid="q2")]
    refs = MutualPredictabilityAggregator({"seed": 3}, roles=roles(scorer)).aggregate(groups)
    assert len(scorer.score_calls) == 1  # batched: 3 + 2 scoring passes, one backend call
    contexts, continuations = scorer.score_calls[0]
    assert continuations == [*BASE, "so \\boxed{5}", "thus \\boxed{7}"]
    for ctx, cont, order in zip(
        contexts, continuations, refs[0].details["orders"] + refs[1].details["orders"], strict=True
    ):
        shown = [m["content"] for m in ctx if m["role"] == "assistant"]
        assert cont not in shown and len(shown) == len(order)
        assert ctx[-1] == {"role": "user", "content": QUESTION}  # the candidate replies last
        assert "GOLD-SENTINEL" not in str(ctx)
    texts = list(BASE)
    for i, order in enumerate(refs[0].details["orders"]):
        assert sorted(order) == [j for j in range(3) if j != i]
        shown = [m["content"] for m in contexts[i] if m["role"] == "assistant"]
        assert shown == [texts[j] for j in order]  # shown in the recorded order


def test_order_is_seeded_by_prompt_and_candidate_not_batch_position():
    g = group([f"r{i}" for i in range(8)])
    assert others_order(g, 2, 0) == others_order(g, 2, 0)
    assert sorted(others_order(g, 2, 0)) == [0, 1, 3, 4, 5, 6, 7]
    orders = {tuple(others_order(g, 2, s)) for s in range(5)}
    assert len(orders) > 1  # a random order, not a fixed one
    alone = MutualPredictabilityAggregator(roles=roles(AgreementScorer()))
    batched = MutualPredictabilityAggregator(roles=roles(AgreementScorer()))
    (a,) = alone.aggregate([group(list(BASE))])
    _, b = batched.aggregate([group(list(BASE), pid="other"), group(list(BASE))])
    assert a.details["orders"] == b.details["orders"]


def test_in_context_keeps_system_first_and_roles_alternating():
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "U2"},
    ]
    ctx = in_context(messages, ["x", "y"])
    assert [m["role"] for m in ctx] == ["system"] + ["user", "assistant"] * 5 + ["user"]
    assert [m["content"] for m in ctx if m["role"] == "assistant"] == ["A1", "x", "A1", "y", "A1"]
    assert in_context(messages, []) == messages  # G = 1: nothing in context (minPPL)


def test_freeform_reference_has_no_answer():
    (ref,) = MutualPredictabilityAggregator(roles=roles(AgreementScorer())).aggregate(
        [group(list(BASE), task="freeform")]
    )
    assert ref.answer is None and ref.details["index"] == 1


def test_registered_as_a_builtin_aggregator(make_plugins):
    plugins = make_plugins()
    assert plugins.get("aggregator", "mutual_predictability") is MutualPredictabilityAggregator
