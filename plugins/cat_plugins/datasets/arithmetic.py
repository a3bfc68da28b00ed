"""Synthetic arithmetic problems: a seeded task family the embedded small model partly solves.

GSM8K and MATH-500 are out of reach for the embedded 135M model (it scores ~0 %, so majority,
minPPL and synthesis all tie at zero and RL has nothing to move). These problems are short, have a
single integer answer and difficulty knobs (digits, number of operations, word problems with
distractor sentences), so a default can sit where single-sample accuracy is 20-60 %: the regime
in which reference estimators differ and CaT-RL can raise accuracy. Generation is pure Python and
deterministic: the same ``seed`` and ``split`` always give the same problems. ``train`` and
``test`` are independent streams; at the easiest settings there are only ~100 distinct problems,
so they repeat within and across splits. The gold answer is for evaluation only.
"""

from __future__ import annotations

import random
from typing import ClassVar, Literal

from pydantic import Field

from cat_framework import ComponentParams, Dataset, Prompt

#: short: the answer fits in tens of tokens, and the reference must commit to a box
DEFAULT_INSTRUCTION = "Give only the final number, in \\boxed{}."

NAMES = ("Ana", "Ben", "Carla", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivan", "Jo", "Kim", "Leo")
ITEMS = ("apples", "marbles", "stickers", "coins", "books", "pencils", "shells", "cards")
#: sentence templates per operator; ``{n}`` is the operand, ``{who}`` the subject
STEPS = {
    "+": ("{who} gets {n} more.", "{who} finds {n} more.", "{who} buys {n} more."),
    "-": ("{who} gives away {n}.", "{who} loses {n}.", "{who} sells {n}."),
    "*": ("Then the number of {item} is multiplied by {n}.",),
}
#: seed offsets that keep the splits disjoint for a given ``seed``
SPLIT_STREAM = {"train": 1, "test": 2}


class ArithmeticParams(ComponentParams):
    """Difficulty knobs and the usual prompt options.

    The defaults (one-digit, one operation, bare expression) are where the embedded SmolLM2-135M
    scores ~40 % per sample at temperature 0.7 with ~26-token answers (docs/experiments.md);
    two digits or two operations drop it to 6-11 %, word problems to ~20 %.
    """

    split: Literal["train", "test"] = Field(
        "test",
        description="Independent seeded streams (a repeat across them is possible but rare).",
    )
    count: int = Field(500, ge=1, le=100_000, description="How many problems to generate.")
    digits: int = Field(
        1, ge=1, le=6, description="Digits of the starting number and of +/- operands."
    )
    operations: int = Field(1, ge=1, le=6, description="Operations after the starting number.")
    multiply: bool = Field(
        False, description="Allow a multiplication step (by a one-digit number): harder."
    )
    distractors: int = Field(
        0,
        ge=0,
        le=4,
        description="Irrelevant sentences with numbers put into each word problem (style: word).",
    )
    style: Literal["word", "expression"] = Field(
        "expression",
        description="word: a short story ('Ana has 12 coins. Ana finds 5 more. ...'); "
        "expression: the bare computation ('What is 12 + 5 - 3?').",
    )
    limit: int | None = Field(
        None, ge=1, le=100_000, description="Keep at most this many prompts (after generation)."
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the generator.")
    system_prompt: str | None = Field(
        None, description="A system message put before every conversation; none by default."
    )
    instruction: str | None = Field(
        None,
        description=f"Text appended to each question (after a newline); default (null): "
        f"{DEFAULT_INSTRUCTION!r}; an empty string disables it.",
    )


def make_problem(rng: random.Random, p: ArithmeticParams) -> tuple[str, int]:
    """One problem and its integer answer; the running total never goes negative."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    lo, hi = 10 ** (p.digits - 1) if p.digits > 1 else 1, 10**p.digits - 1
    total = rng.randint(max(lo, 2), hi)
    sentences = [f"{name} has {total} {item}."]
    expression = str(total)
    for _ in range(p.operations):
        ops = ["+", "-"] + (["*"] if p.multiply else [])
        op = rng.choice(ops)
        if op == "-" and total <= 1:
            op = "+"
        if op == "*":
            n = rng.randint(2, 9)
            total *= n
        elif op == "-":
            n = rng.randint(min(lo, total), min(hi, total))
            total -= n
        else:
            n = rng.randint(lo, hi)
            total += n
        sentences.append(rng.choice(STEPS[op]).format(who=name, n=n, item=item))
        if op == "*":
            expression = f"({expression}) * {n}" if " " in expression else f"{expression} * {n}"
        else:
            expression = f"{expression} {op} {n}"
    others = [x for x in NAMES if x != name]
    for _ in range(p.distractors if p.style == "word" else 0):
        other, thing = rng.choice(others), rng.choice([x for x in ITEMS if x != item])
        at = rng.randint(1, len(sentences))
        sentences.insert(at, f"{other} has {rng.randint(lo, hi)} {thing}.")
    question = " ".join(sentences) + f" How many {item} does {name} have now?"
    if p.style == "expression":
        question = f"What is {expression}?"
    return question, total


class ArithmeticDataset(Dataset):
    """Seeded arithmetic word problems with a difficulty knob (digits, operations, distractors).

    ``count`` problems per split, generated (nothing is downloaded); prompt ids are
    ``arithmetic/<split>/<seed>/<i>`` and the gold answer is the integer result.
    """

    name = "arithmetic"
    task = "math"
    Params: ClassVar[type[ArithmeticParams]] = ArithmeticParams

    params: ArithmeticParams

    def load(self) -> list[Prompt]:
        p = self.params
        rng = random.Random(p.seed * 10 + SPLIT_STREAM[p.split])
        instruction = DEFAULT_INSTRUCTION if p.instruction is None else p.instruction
        prompts = []
        for i in range(p.limit if p.limit is not None and p.limit < p.count else p.count):
            question, answer = make_problem(rng, p)
            content = f"{question}\n{instruction}" if instruction else question
            messages = [{"role": "user", "content": content}]
            if p.system_prompt:
                messages.insert(0, {"role": "system", "content": p.system_prompt})
            prompts.append(
                Prompt(
                    id=f"arithmetic/{p.split}/{p.seed}/{i}",
                    messages=messages,
                    gold_answer=str(answer),
                    meta={"dataset": self.name, "task": self.task, "index": i},
                )
            )
        return prompts
