"""The data types are frozen and round-trip through JSON."""

from __future__ import annotations

import dataclasses
import json

import pytest

from cat_framework import (
    Completion,
    Criterion,
    GenerationRequest,
    Prompt,
    Reference,
    Rewards,
    RolloutGroup,
    Verdict,
)


def roundtrip(obj):
    return type(obj).from_dict(json.loads(json.dumps(obj.to_dict())))


def test_nested_roundtrip():
    prompt = Prompt(
        id="p1",
        messages=[{"role": "user", "content": "hi"}],
        gold_answer="4",
        rubric=[Criterion("says hello", 5.0), Criterion("rude", -3.0)],
        meta={"task": "freeform"},
    )
    group = RolloutGroup(prompt, [Completion("a", [1, 2], [-0.1, -0.2], "length")])
    back = roundtrip(group)
    assert back == group
    assert isinstance(back.prompt.rubric[1], Criterion) and back.prompt.rubric[1].points == -3.0
    assert back.rollouts[0].truncated
    verdict = Verdict(Criterion("x"), None, "garbled")
    assert roundtrip(verdict) == verdict
    ref = Reference(text="t", method="synthesis", answer="4", details={"order": [1, 0]})
    assert roundtrip(ref).details == {"order": [1, 0]}
    rewards = Rewards([1, 0.5])
    assert rewards.details == ({}, {}) and roundtrip(rewards).values == (1.0, 0.5)


def test_frozen_and_validated():
    c = Completion("a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.text = "b"  # type: ignore[misc]
    with pytest.raises(ValueError, match="finish_reason"):
        Completion("a", finish_reason="eos")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exactly one"):
        GenerationRequest()
    with pytest.raises(ValueError, match="n must be"):
        GenerationRequest(text="x", n=0)
    with pytest.raises(ValueError, match="role"):
        Prompt(id="x", messages=[{"content": "no role"}])
    with pytest.raises(ValueError, match="3 values but 1"):
        Rewards([1, 2, 3], [{}])


def test_question_is_last_user_turn():
    p = Prompt(
        id="x",
        messages=[
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "second"},
        ],
    )
    assert p.question == "second"
