"""The arithmetic task: seeded, splits disjoint and duplicate-free, gold answers right, knobs
honoured, and a request for more problems than a split holds refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from cat_framework.answers import extract_answer
from cat_framework.errors import ConfigError
from cat_plugins.datasets.arithmetic import (
    DEFAULT_INSTRUCTION,
    ArithmeticDataset,
    ArithmeticParams,
    space_of,
)
from cat_plugins.datasets.arithmetic_space import Space, split_size

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
        {"digits": 2, "operand_digits": 1},
        {"style": "word", "digits": 1, "operations": 1},
        {"style": "word", "digits": 2, "operations": 3, "distractors": 2},
        {"style": "word", "digits": 3, "operations": 4, "multiply": True, "distractors": 1},
    ],
)
def test_gold_answers_are_the_arithmetic_of_the_text(knobs):
    prompts = load(**knobs)
    for p in prompts:
        question = p.messages[-1]["content"].split("\n")[0]
        assert int(p.gold_answer) == solve(question) >= 0, question
        numbers = [int(x) for x in re.findall(r"\d+", question)]
        assert len(numbers) == 1 + knobs.get("operations", 1) + knobs.get("distractors", 0)
        assert numbers[0] < 10 ** knobs.get("digits", 1)
        operands = (
            numbers[1 : 1 + knobs.get("operations", 1)] if "word" not in knobs.values() else []
        )
        assert all(n < 10 ** knobs.get("operand_digits", knobs.get("digits", 1)) for n in operands)
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


def computation(prompt) -> str:
    """The computation a problem asks for, whatever its wording (the start and each step)."""
    question = prompt.messages[-1]["content"].split("\n")[0]
    if question.startswith("What is "):
        return re.sub(r"[()]", "", question.removeprefix("What is ").rstrip("?"))
    subject = re.search(r"How many \w+ does (\w+) have now", question).group(1)
    kept = [s for s in question.split(". ") if s.startswith(subject)]
    return " ".join(re.findall(r"\d+", " ".join(kept))) + f" = {prompt.gold_answer}"


#: every difficulty a user can pick, small (enumerated) and large (drawn) spaces alike
SETTINGS = [
    {"digits": d, "operand_digits": od, "operations": ops, "multiply": m}
    for d in (1, 2, 3)
    for od in (1, d)
    for ops in (1, 2, 3)
    for m in (False, True)
]


@pytest.mark.parametrize("knobs", SETTINGS, ids=lambda k: "-".join(str(v) for v in k.values()))
def test_splits_are_disjoint_and_free_of_repeats_at_every_difficulty(knobs):
    test, train = load(**knobs), load(split="train", **knobs)
    other_seed = load(split="train", seed=7, **knobs)
    for prompts in (test, train, other_seed):
        assert len({p.messages[-1]["content"] for p in prompts}) == len(prompts)
    seen_in_train = {p.messages[-1]["content"] for p in train + other_seed}
    assert not seen_in_train & {p.messages[-1]["content"] for p in test}
    assert len(test) == min(500, split_size(space_of(ArithmeticParams(**knobs)), "test") or 500)


def test_word_problems_never_share_a_computation_across_splits():
    """A story around '7 - 3' on one side means no other story around it on the other."""
    knobs = {"style": "word", "distractors": 1, "operand_digits": 1, "digits": 2}
    test, train = load(**knobs), load(split="train", seed=3, **knobs)
    assert {computation(p) for p in test}.isdisjoint(computation(p) for p in train)
    assert len({computation(p) for p in test}) == len(test) == 500


def test_asking_for_more_than_a_split_holds_is_refused_with_the_number():
    small = {"digits": 1, "operations": 1}
    available = split_size(space_of(ArithmeticParams(**small)), "test")
    assert len(load(**small)) == available == 57  # the whole split, each problem once
    assert len(load(count=available, **small)) == available
    with pytest.raises(ConfigError, match=f"count 58 is more than the {available} distinct"):
        load(count=available + 1, **small)


def test_the_documented_split_sizes_are_the_real_ones():
    """docs/datasets.md gives the number of problems per split for the common settings."""
    doc = (Path(__file__).resolve().parents[3] / "docs" / "datasets.md").read_text()
    rows = re.findall(r"^\| (\d) \| (\d) \| (\d) \| (no|yes) \| ([\d,]+) \| ([\d,]+) \|", doc, re.M)
    assert len(rows) >= 6
    for d, od, ops, m, train, test in rows:
        space = Space(int(d), int(od), int(ops), m == "yes")
        got = (split_size(space, "train"), split_size(space, "test"))
        assert got == (int(train.replace(",", "")), int(test.replace(",", ""))), (d, od, ops, m)
