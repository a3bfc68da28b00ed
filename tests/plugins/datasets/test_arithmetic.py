"""The arithmetic task: seeded, splits independent, gold answers right, knobs honoured."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from cat_framework.answers import extract_answer
from cat_plugins.datasets.arithmetic import DEFAULT_INSTRUCTION, ArithmeticDataset

WORDS = {"gets": 1, "finds": 1, "buys": 1, "gives away": -1, "loses": -1, "sells": -1}


def solve(question: str) -> int:
    """Recompute the answer from the text alone (an independent check of the generator)."""
    if question.startswith("What is "):
        return eval(question.removeprefix("What is ").rstrip("?"))
    subject = re.search(r"How many \w+ does (\w+) have now", question).group(1)
    total = None
    for sentence in question.split(". "):
        if m := re.match(rf"{subject} has (\d+) ", sentence):
            total = int(m.group(1))
        elif m := re.search(r"multiplied by (\d+)", sentence):
            total *= int(m.group(1))
        else:
            for word, sign in WORDS.items():
                if m := re.match(rf"{subject} {word} (\d+)", sentence):
                    total += sign * int(m.group(1))
    return total


def load(**params):
    return ArithmeticDataset(params).load()


def test_seeded_and_splits_differ():
    a, b = load(count=50, digits=3, operations=2), load(count=50, digits=3, operations=2)
    assert [p.to_dict() for p in a] == [p.to_dict() for p in b]
    train = load(count=50, split="train", digits=3, operations=2)
    assert {p.messages[-1]["content"] for p in train}.isdisjoint(
        p.messages[-1]["content"] for p in a
    )
    assert load(count=50, seed=1)[0].messages != a[0].messages
    assert len({p.id for p in a + train}) == 100


@pytest.mark.parametrize(
    "knobs",
    [
        {},
        {"digits": 2, "operations": 3, "multiply": True},
        {"style": "word", "digits": 1, "operations": 1},
        {"style": "word", "digits": 2, "operations": 3, "distractors": 2},
        {"style": "word", "digits": 3, "operations": 4, "multiply": True, "distractors": 1},
    ],
)
def test_gold_answers_are_the_arithmetic_of_the_text(knobs):
    prompts = load(count=200, **knobs)
    for p in prompts:
        question = p.messages[-1]["content"].split("\n")[0]
        assert int(p.gold_answer) == solve(question) >= 0, question
        numbers = [int(x) for x in re.findall(r"\d+", question)]
        assert len(numbers) == 1 + knobs.get("operations", 1) + knobs.get("distractors", 0)
        assert numbers[0] < 10 ** knobs.get("digits", 1)
        # the gold answer reads back as itself through the framework's answer extraction
        assert extract_answer(f"\\boxed{{{p.gold_answer}}}") == p.gold_answer


def test_prompt_shape_limit_instruction_and_system_prompt():
    (p,) = load(limit=1, system_prompt="Be brief.")
    assert p.messages[0] == {"role": "system", "content": "Be brief."}
    assert p.messages[-1]["content"].endswith("\n" + DEFAULT_INSTRUCTION)
    assert p.meta["task"] == "math" and p.id == "arithmetic/test/0/0"
    (bare,) = load(limit=1, instruction="")
    assert "\n" not in bare.messages[-1]["content"]
    assert len(load(count=7, limit=100)) == 7


def test_bad_knobs_are_refused_by_name():
    with pytest.raises(ValidationError, match="digits"):
        ArithmeticDataset({"digits": 0})
    with pytest.raises(ValidationError, match="operation"):
        ArithmeticDataset({"operation": 2})  # a typo is an unknown key


def test_registered_and_usable_from_the_data_command():
    from click.testing import CliRunner

    from cat_framework.cli import cli

    out = CliRunner().invoke(cli, ["data", "arithmetic", "--limit", "2", "--set", "digits=1"])
    assert out.exit_code == 0, out.output
    assert out.output.count('"id": "arithmetic/test/0/') == 2
