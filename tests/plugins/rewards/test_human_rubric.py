"""HealthBench physician-rubric reward: score formula, grader prompt and JSON, batched grading."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from cat_framework import (
    Completion,
    ConfigError,
    Criterion,
    GenerationRequest,
    Prompt,
    Reference,
    Roles,
    RolloutGroup,
    load_plugins,
)
from cat_plugins.prompts import render
from cat_plugins.rewards.human_rubric import (
    HumanRubricReward,
    format_points,
    healthbench_benchmark_score,
    healthbench_score,
    parse_grader_json,
    rubric_item,
)
from tests.helpers.echo_backend import EchoBackend

# ------------------------------------------------------------------------------ score formula


def test_simple_evals_unit_case() -> None:
    # simple-evals' own test: points [7, 5, 10, -6], met [T, F, T, T] -> (7 + 10 - 6) / 22
    assert healthbench_score([7, 5, 10, -6], [True, False, True, True]) == 0.5


@pytest.mark.parametrize(
    ("points", "met", "expected"),
    [
        ([5, -10], [False, True], -2.0),  # unclipped: a met penalty can push below zero
        ([4, 4, -2], [True, True, True], 0.75),
        ([4, 4, -2], [True, True, False], 1.0),
        ([10, 5, -3], [True, None, None], 1.0),  # unparsed items leave both sums
        ([10, 5], [None, True], 1.0),
        ([-5, -1], [True, False], None),  # no positive points
        ([3], [None], None),
        ([], [], None),
    ],
)
def test_healthbench_score(points: list[float], met: list[bool | None], expected: Any) -> None:
    assert healthbench_score(points, met) == expected


def test_score_needs_aligned_inputs() -> None:
    with pytest.raises(ValueError, match="2 criteria but 1 verdicts"):
        healthbench_score([1, 2], [True])


@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        ([0.25, 0.75, 0.5], 0.5),
        ([-1.0, 0.5], 0.0),  # the mean is clipped, not each score
        ([-2.0, 1.0, 1.0, 1.0], 0.25),
        ([None, 0.5], 0.5),
        ([1.0, 1.0], 1.0),
    ],
)
def test_benchmark_score_is_the_clipped_mean(scores: list[Any], expected: float) -> None:
    assert healthbench_benchmark_score(scores) == expected


def test_benchmark_score_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no HealthBench scores"):
        healthbench_benchmark_score([None])


def test_rubric_item_prints_points_like_simple_evals() -> None:
    assert rubric_item(Criterion("Advises rest", 10.0)) == "[10] Advises rest"
    assert rubric_item(Criterion("Is verbose", -6.0)) == "[-6] Is verbose"
    assert format_points(2.5) == "2.5"


# ------------------------------------------------------------------------------ grader JSON


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"explanation": "ok", "criteria_met": true}', (True, "ok")),
        ('```json\n{\n  "explanation": "no",\n  "criteria_met": false\n}\n```', (False, "no")),
        ('Sure.\n{"criteria_met": true, "explanation": "x"} Hope it helps', (True, "x")),
        (
            '{"explanation": "e1", "criteria_met": false}\n{"explanation": "e2", "criteria_met": true}',
            (True, "e2"),
        ),
        ('{"criteria_met": "True"}', (True, None)),
        ('{"criteria_met": "no", "explanation": 3}', (False, None)),
        (
            '{"explanation": "the response never says "rest", so", "criteria_met": false',
            (False, None),
        ),
        ("criteria_met: true", (True, None)),
        ('{"explanation": "missing"}', (None, None)),
        ('{"criteria_met": null}', (None, None)),
        ('{"criteria_met": "maybe"}', (None, None)),
        ("I think it is met.", (None, None)),
        ("", (None, None)),
    ],
)
def test_parse_grader_json(text: str, expected: tuple[Any, Any]) -> None:
    assert parse_grader_json(text) == expected


# ------------------------------------------------------------------------------ grader prompt


def test_grader_template_is_healthbenchs_verbatim_prompt() -> None:
    text = render(
        "healthbench_grader", conversation="user: hi\n\nassistant: hello", rubric_item="[5] Greets"
    )
    assert text.startswith("Your job is to look at a conversation and a rubric item, and score")
    assert (
        "# Conversation\nuser: hi\n\nassistant: hello\n\n# Rubric item\n[5] Greets\n\n# Instructions"
        in text
    )
    assert "Only return true is all of the criteria are met." in text  # original typo
    assert 'if the critera says "Is overly verbose"' in text  # original typo
    assert text.endswith(
        "Return just the json object in markdown format. Do not include any other text in the response."
    )


# ------------------------------------------------------------------------------ the reward

RUBRIC = [Criterion("A", 7), Criterion("B", 5), Criterion("C", 10), Criterion("D", -6)]


def letter_grader(req: GenerationRequest, i: int) -> str:
    """Met when the item's letter occurs in the assistant turn; fenced JSON like a real grader."""
    text = req.messages[-1]["content"]
    letter = re.search(r"# Rubric item\n\[-?\d+\] (\w)", text).group(1)
    answer = re.search(r"assistant: (.*?)\n\n# Rubric item", text, re.S).group(1)
    met = "true" if letter in answer else "false"
    return f'```json\n{{"explanation": "checked {letter}", "criteria_met": {met}}}\n```'


def make_prompt(pid: str, rubric: Any = RUBRIC) -> Prompt:
    messages = [{"role": "system", "content": "Be careful."}, {"role": "user", "content": "Q?"}]
    return Prompt(id=pid, messages=messages, rubric=rubric)


def make_reward(
    script: Any = letter_grader, **params: Any
) -> tuple[HumanRubricReward, EchoBackend]:
    judge = EchoBackend(script=script)
    roles = Roles(policy=EchoBackend(), anchor=EchoBackend(), judge=judge)
    return HumanRubricReward(params, roles=roles), judge


def group(prompt: Prompt, *texts: str, tokens: int = 5) -> RolloutGroup:
    return RolloutGroup(prompt, [Completion(text=t, token_ids=[0] * tokens) for t in texts])


REF = Reference(text="unused", method="t")


def test_one_batched_grader_call_with_exact_scores() -> None:
    reward, judge = make_reward()
    groups = [group(make_prompt("p"), "ACD", "AB", "D"), group(make_prompt("q"), "ABC", "")]
    out = reward.derive(groups, [REF, REF])
    assert len(judge.calls) == 1 and len(judge.calls[0]) == 5 * 4
    assert [r.values for r in out] == [(0.5, 0.5454545454545454, -0.2727272727272727), (1.0, 0.0)]
    assert out[0].values[1] == 12 / 22 and out[0].values[2] == -6 / 22
    d = out[0].details[0]
    assert (d["score"], d["n_met"], d["n_unparsed"], d["n_retried"]) == (0.5, 3, 0, 0)
    assert d["verdicts"][3] == {
        "criterion": {"text": "D", "points": -6.0},
        "met": True,
        "raw": '```json\n{"explanation": "checked D", "criteria_met": true}\n```',
        "failed": False,
    }


def test_grader_request_matches_simple_evals() -> None:
    reward, judge = make_reward()
    reward.derive([group(make_prompt("p"), "my answer")], [REF])
    # requests are sorted by text (judge_schedule), so find criterion A's by its rubric item
    (request,) = [r for r in judge.calls[0] if "[7] A" in r.messages[1]["content"]]
    assert request.messages[0] == {"role": "system", "content": "You are a helpful assistant."}
    expected = render(
        "healthbench_grader",
        conversation="system: Be careful.\n\nuser: Q?\n\nassistant: my answer",
        rubric_item="[7] A",
    )
    assert request.messages[1] == {"role": "user", "content": expected}
    assert (request.temperature, request.max_new_tokens) == (0.0, 512)


@pytest.mark.parametrize(("share", "expected"), [(0.0, (None, None)), (0.25, (17 / 17, 0 / 17))])
def test_unparsed_grades_are_retried_then_unscorable(
    share: float, expected: tuple[float | None, ...]
) -> None:
    def grader(req: GenerationRequest, i: int) -> str:
        return "I refuse" if "[5] B" in req.messages[-1]["content"] else letter_grader(req, i)

    reward, judge = make_reward(grader, max_judge_retries=1, max_unscorable_share=share)
    (out,) = reward.derive([group(make_prompt("p"), "AC", "B")], [REF])
    assert [len(c) for c in judge.calls] == [8, 2]
    assert out.values == expected
    assert out.details[0]["n_scored"] == (0 if share == 0.0 else 3)
    assert out.details[0]["n_unparsed"] == 1 and out.details[0]["verdicts"][1]["met"] is None


def test_only_negative_items_are_unscorable() -> None:
    reward, _ = make_reward()
    (out,) = reward.derive([group(make_prompt("p", [Criterion("D", -3)]), "D")], [REF])
    assert out.values == (None,) and out.details[0]["score"] is None


def test_missing_rubric_is_a_clear_error() -> None:
    reward, judge = make_reward()
    with pytest.raises(ConfigError, match="prompt 'p' has none"):
        reward.derive([group(make_prompt("p", None), "x")], [REF])
    assert judge.calls == []


def test_grade_scores_arbitrary_texts_in_one_call() -> None:
    reward, judge = make_reward()
    graded = reward.grade([(make_prompt("p"), "AC"), (make_prompt("q"), "ABCD")])
    assert len(judge.calls) == 1
    assert [g.score for g in graded] == [17 / 22, 16 / 22]
    assert [v.met for v in graded[1].verdicts] == [True, True, True, True]


def test_length_penalty_applies_to_the_oracle_too() -> None:
    reward, _ = make_reward(length_penalty={"max_tokens": 4, "mode": "add"})
    (out,) = reward.derive([group(make_prompt("p"), "AC", tokens=5)], [REF])
    assert out.values == (17 / 22 - 1.0,) and out.details[0]["score"] == 17 / 22
    assert out.details[0]["length_penalized"] is True


def test_template_override_must_keep_its_placeholders(tmp_path: Any) -> None:
    bad = tmp_path / "grader.txt"
    bad.write_text("$conversation only")
    with pytest.raises(ValidationError, match=r"lacks \$rubric_item"):
        HumanRubricReward({"grader_template": str(bad)})


def test_registered_for_freeform_tasks() -> None:
    cls = load_plugins(entry_points=False).get("reward_deriver", "human_rubric")
    assert cls is HumanRubricReward and cls.tasks == frozenset({"freeform"})
    assert all(f.description for f in HumanRubricReward.Params.model_fields.values())
