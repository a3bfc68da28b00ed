"""The programmatic (math answer) reward deriver; no models, groups are built directly."""

from __future__ import annotations

from typing import Any

import pytest

from cat_framework import Completion, Prompt, Reference, Rewards, RolloutGroup, load_plugins
from cat_plugins.rewards.programmatic import ProgrammaticReward
from tests.helpers.gold_trap import trap_prompt


def group(*texts: str, gold: str | None = None) -> RolloutGroup:
    prompt = Prompt(id="q", messages=[{"role": "user", "content": "?"}], gold_answer=gold)
    return RolloutGroup(prompt=prompt, rollouts=[Completion(text=t) for t in texts])


def derive(g: RolloutGroup, ref: Reference, **params: Any) -> Rewards:
    (rewards,) = ProgrammaticReward(params).derive([g], [ref])
    return rewards


def test_equivalent_answers_earn_one() -> None:
    g = group("so \\boxed{0.5}", "\\boxed{\\frac{1}{2}}", "\\boxed{2}", "no answer", "1/2")
    ref = Reference(text="... \\boxed{\\dfrac{1}{2}}", method="synthesis")
    rewards = derive(g, ref, fallback="none")
    assert rewards.values == (1.0, 1.0, 0.0, 0.0, 0.0)  # no answer is the rollout's miss: 0.0
    assert [d["answer"] for d in rewards.details] == ["0.5", "\\frac{1}{2}", "2", None, None]
    assert [d["match"] for d in rewards.details] == [True, True, False, False, False]
    assert all(d["reference_answer"] == "\\dfrac{1}{2}" for d in rewards.details)
    assert all(d["reference_has_answer"] is True for d in rewards.details)


def test_string_mode_is_the_papers_plain_match() -> None:
    g = group("\\boxed{0.5}", "\\boxed{\\frac{1}{2}}", "\\boxed{ \\frac{1}{2} }")
    ref = Reference(text="\\boxed{\\dfrac{1}{2}}", method="synthesis")
    assert derive(g, ref, mode="string").values == (0.0, 1.0, 1.0)
    assert derive(g, ref).values == (1.0, 1.0, 1.0)


def test_reference_answer_field_wins_over_its_text() -> None:
    g = group("\\boxed{3}", "\\boxed{4}")
    ref = Reference(text="\\boxed{4}", method="majority", answer="3")
    assert derive(g, ref).values == (1.0, 0.0)


@pytest.mark.parametrize(
    ("rollout", "reference", "expected"),
    [
        ("\\boxed{3\\sqrt{2}}", "\\sqrt{18}", 1.0),
        ("\\boxed{(1, 2]}", "(1,2]", 1.0),
        ("\\boxed{[1, 2]}", "(1,2]", 0.0),
        ("#### 1,000", "1000", 1.0),
        ("The answer is -7.", "-7", 1.0),
        ("\\boxed{7}", "-7", 0.0),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "(3, \\pi/2)", 1.0),
    ],
)
def test_answer_forms(rollout: str, reference: str, expected: float) -> None:
    ref = Reference(text="", method="synthesis", answer=reference)
    assert derive(group(rollout), ref).values == (expected,)


def test_reference_without_answer_is_unscorable_and_flagged() -> None:
    """No committed reference answer is no reference: None (unscorable), never 0.0."""
    g = group("\\boxed{1}", "no answer either")
    ref = Reference(text="I am not sure.", method="synthesis")
    rewards = derive(g, ref, fallback="none")
    assert rewards.values == (None, None)
    assert rewards.details == (
        {"answer": "1", "match": None, "reference_answer": None, "reference_has_answer": False},
        {"answer": None, "match": None, "reference_answer": None, "reference_has_answer": False},
    )
    blank = Reference(text="\\boxed{1}", method="majority", answer="  ")
    assert derive(g, blank).values == (None, None)
    assert derive(g, blank).details[0]["reference_has_answer"] is False


@pytest.mark.parametrize("fallback", ["none", "phrase", "number"])
def test_reference_never_falls_back_to_its_last_number(fallback: str) -> None:
    """Before: with the default fallback a reference's last number ("12") became its answer."""
    g = group("The answer is 12.", "it is 12", "\\boxed{3}")
    ref = Reference(text="Total: 12 apples, or maybe 3", method="synthesis")
    rewards = derive(g, ref, fallback=fallback)
    assert rewards.values == (None, None, None)
    assert all(d["reference_has_answer"] is False for d in rewards.details)


def test_reference_commits_with_a_box_gsm8k_line_or_final_answer_phrase() -> None:
    g = group("The answer is 12.", "it is 12", "\\boxed{3}")
    for text in ("so \\boxed{12}", "#### 12", "The final answer is $12$.", "The answer is 12."):
        ref = Reference(text=text, method="synthesis")
        assert derive(g, ref).values == (1.0, 0.0, 0.0), text  # "it is 12" commits to nothing
        assert derive(g, ref, fallback="number").values == (1.0, 1.0, 0.0), text


def test_final_answer_after_intermediate_boxes() -> None:
    """Before: only the last box was read, so an intermediate \\boxed{4} was the answer."""
    text = "First $y = \\boxed{3}$, then $z = \\boxed{4}$. The final answer is $7$."
    ref = Reference(text="", method="synthesis", answer="7")
    assert derive(group(text), ref).values == (1.0,)
    assert derive(group(text), ref).details[0]["answer"] == "7"


@pytest.mark.parametrize(
    ("rollout", "reference", "expected"),
    [
        ("so \\boxed{2} and \\boxed{5}", "\\{2, 5\\}", 1.0),  # several boxes: one set
        ("so \\boxed{2} and \\boxed{5}", "5", 0.0),
        ("The answer is 1,22.", "1.22", 1.0),  # a decimal comma in prose is not {1, 22}
        ("The answer is 1,22.", "1,22", 0.0),  # ... and so not the bare (list) answer 1,22
        ("\\boxed{32, 349}", "32, 349", 1.0),
        ("\\boxed{32349}", "32, 349", 0.0),  # a list is not a thousands separator
    ],
)
def test_multiple_boxes_and_commas(rollout: str, reference: str, expected: float) -> None:
    ref = Reference(text="", method="synthesis", answer=reference)
    assert derive(group(rollout), ref).values == (expected,)


def test_fallback_applies_to_rollouts() -> None:
    g = group("The answer is 12.", "it is 12")
    ref = Reference(text="\\boxed{12}", method="synthesis")
    phrase = derive(g, ref)  # default "phrase"
    assert phrase.values == (1.0, 0.0)
    assert phrase.details[1]["answer"] is None
    assert derive(g, ref, fallback="number").values == (1.0, 1.0)
    assert derive(g, ref, fallback="none").values == (0.0, 0.0)


ALONG_THE_WAY = "Adding the first two terms I got 12 along the way, then I ran out of time."


def test_a_number_met_along_the_way_is_no_answer() -> None:
    """Issue 22 item 1: the paper rewards ``1[boxed(o) == boxed(s)]``. Before, the default
    ``number`` reading gave this rollout, which never commits, 1.0 against a reference of 12."""
    g = group(ALONG_THE_WAY, "so \\boxed{12}", "The final answer is 12.")
    for ref in (
        Reference(text="so \\boxed{12}", method="synthesis"),
        Reference(text="", method="majority", answer="12"),
    ):
        rewards = derive(g, ref)
        assert rewards.values == (0.0, 1.0, 1.0)
        assert rewards.details[0]["answer"] is None
        assert derive(g, ref, fallback="none").values == (0.0, 1.0, 0.0)
        lenient = derive(g, ref, fallback="number")  # the lenient reading, named explicitly
        assert lenient.values == (1.0, 1.0, 1.0)
        assert lenient.details[0]["answer"] == "12"


@pytest.mark.parametrize(
    ("name", "level"),
    [("math500_cat_rl", "phrase"), ("math500_ttrl_majority", "phrase"), ("quickstart", "number")],
)
def test_shipped_pipelines_name_how_rollouts_are_read(name: str, level: str) -> None:
    """The paper pipelines grade committed answers; the quickstart names its lenient reading."""
    from pathlib import Path

    from cat_framework.pipeline import load_pipeline

    repo = Path(__file__).resolve().parents[3]
    path = repo / "pipelines" / f"{name}.yaml"
    reward = load_pipeline(path, plugins=load_plugins(entry_points=False)).component("reward")
    assert reward is not None and reward.params.fallback == level
    assert f"fallback: {level}" in path.read_text() or name == "math500_ttrl_majority"


@pytest.mark.parametrize(
    ("rollout", "reference", "expected"),
    [
        ("\\boxed{1.2}", "1,2", 0.0),  # before: 1.0, the bare 1,2 was also read as 1.2
        ("\\boxed{-2.1}", "-2,1", 0.0),  # MATH's roots -2,1 are not the decimal -2.1
        ("\\boxed{-2,1}", "-2,1", 1.0),
        ("\\boxed{1, -2}", "-2,1", 1.0),  # a set: any order
        ("\\boxed{\\{1,2\\}}", "1,2", 1.0),
        ("\\boxed{1,000}", "1000", 1.0),  # three digits after the comma: thousands
    ],
)
def test_a_bare_comma_reference_has_one_reading(
    rollout: str, reference: str, expected: float
) -> None:
    """Issue 22 item 2: a bare reference ``1,2`` reads as it does in a box, the list {1, 2}."""
    ref = Reference(text="", method="majority", answer=reference)
    assert derive(group(rollout), ref).values == (expected,)
    (string,) = derive(group(rollout), ref, mode="string").values
    assert string is not None and string <= expected  # string mode accepts no more


def test_batches_align_groups_and_references() -> None:
    groups = [group("\\boxed{1}", "\\boxed{2}"), group("\\boxed{x+1}", "\\boxed{1+x}")]
    refs = [
        Reference(text="\\boxed{2}", method="m"),
        Reference(text="\\boxed{x + 1}", method="m"),
    ]
    assert [r.values for r in ProgrammaticReward().derive(groups, refs)] == [
        (0.0, 1.0),
        (1.0, 1.0),
    ]
    assert ProgrammaticReward().derive([], []) == []
    with pytest.raises(ValueError, match="2 groups but 1 references"):
        ProgrammaticReward().derive(groups, refs[:1])


def test_never_reads_gold_answers() -> None:
    """The reward depends on the reference alone: a trapped gold is never touched, and a wrong
    gold changes nothing."""
    texts = ("\\boxed{4}", "\\boxed{5}")
    ref = Reference(text="\\boxed{4}", method="synthesis")
    trapped = RolloutGroup(prompt=trap_prompt("5"), rollouts=[Completion(text=t) for t in texts])
    (from_trap,) = ProgrammaticReward().derive([trapped], [ref])
    (wrong_gold,) = ProgrammaticReward().derive([group(*texts, gold="5")], [ref])
    (right_gold,) = ProgrammaticReward().derive([group(*texts, gold="4")], [ref])
    assert from_trap == wrong_gold == right_gold
    assert from_trap.values == (1.0, 0.0)
    with pytest.raises(AssertionError, match="gold_answer"):
        _ = trapped.prompt.gold_answer  # the trap works


def test_registered_math_only_and_described() -> None:
    plugins = load_plugins(entry_points=False)
    assert plugins.registry("reward_deriver").get("programmatic") is ProgrammaticReward
    assert ProgrammaticReward.tasks == frozenset({"math"})
    for name, field in ProgrammaticReward.Params.model_fields.items():
        assert field.description, name
    with pytest.raises(ValueError, match="mode"):
        ProgrammaticReward({"mode": "exact"})
