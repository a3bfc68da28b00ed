"""Synthetic arithmetic problems: a seeded task family the embedded small model partly solves.

GSM8K and MATH-500 are out of reach for the embedded 135M model (it scores ~0 %, so majority,
minPPL and synthesis all tie at zero and RL has nothing to move). These problems are short, have a
single integer answer and difficulty knobs (digits, number of operations, word problems with
distractor sentences), so a default can sit where single-sample accuracy is 20-60 %: the regime
in which reference estimators differ and CaT-RL can raise accuracy. Generation is pure Python and
deterministic: the same ``seed`` and ``split`` always give the same problems. ``train`` and
``test`` are disjoint and never repeat a problem (``arithmetic_space.py``): the easiest setting
holds only 116 problems in all, so asking a split for more than it has is an error, never a
silent repeat. The gold answer is for evaluation only.
"""

from __future__ import annotations

import random
from typing import ClassVar, Literal

from pydantic import Field

from cat_framework import ComponentParams, Dataset, Prompt
from cat_framework.errors import ConfigError
from cat_plugins.datasets.arithmetic_space import Problem, Space, problems, split_size

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
#: problems per split when ``count`` is not given (fewer when the split holds fewer)
DEFAULT_COUNT = 500


class ArithmeticParams(ComponentParams):
    """Difficulty knobs and the usual prompt options.

    The defaults (one-digit, one operation, bare expression) are where the embedded SmolLM2-135M
    scores ~40 % per sample at temperature 0.7 with ~26-token answers (docs/experiments.md);
    two digits or two operations drop it to 6-11 %, word problems to ~20 %.
    """

    split: Literal["train", "test"] = Field(
        "test",
        description="Disjoint by construction: each computation (e.g. '7 - 3') belongs to one "
        "split, by a hash of it, for every seed, difficulty and style.",
    )
    count: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description=f"How many distinct problems; default: all of the split's, at most "
        f"{DEFAULT_COUNT}. More than the split holds is an error (docs/datasets.md gives the "
        "number per difficulty).",
    )
    digits: int = Field(
        1, ge=1, le=6, description="Digits of the starting number (and of +/- operands by default)."
    )
    operand_digits: int | None = Field(
        None, ge=1, le=6, description="Digits of each +/- operand; default: digits."
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


def render(problem: Problem, rng: random.Random, p: ArithmeticParams) -> str:
    """The question: the bare computation, or a short story around it (names, items,
    sentence templates and distractors drawn from ``rng``; the computation is unchanged)."""
    if p.style == "expression":
        return f"What is {problem.expression}?"
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    sentences = [f"{name} has {problem.start} {item}."]
    for op, n in problem.steps:
        sentences.append(rng.choice(STEPS[op]).format(who=name, n=n, item=item))
    others = [x for x in NAMES if x != name]
    lo, hi = 10 ** (p.digits - 1) if p.digits > 1 else 1, 10**p.digits - 1
    for _ in range(p.distractors):
        other, thing = rng.choice(others), rng.choice([x for x in ITEMS if x != item])
        at = rng.randint(1, len(sentences))
        sentences.insert(at, f"{other} has {rng.randint(lo, hi)} {thing}.")
    return " ".join(sentences) + f" How many {item} does {name} have now?"


def space_of(p: ArithmeticParams) -> Space:
    operand_digits = p.digits if p.operand_digits is None else p.operand_digits
    return Space(p.digits, operand_digits, p.operations, p.multiply)


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
        space = space_of(p)
        count = p.count
        if count is None:
            available = split_size(space, p.split)
            count = DEFAULT_COUNT if available is None else min(DEFAULT_COUNT, available)
        if p.limit is not None:
            count = min(count, p.limit)
        rng = random.Random(p.seed)
        try:
            chosen = problems(space, p.split, count, rng)
        except ValueError as exc:
            raise ConfigError(f"dataset arithmetic: {exc}.") from None
        instruction = DEFAULT_INSTRUCTION if p.instruction is None else p.instruction
        prompts = []
        for i, problem in enumerate(chosen):
            question, answer = render(problem, rng, p), problem.answer
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
