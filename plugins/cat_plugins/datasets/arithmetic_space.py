"""The space of arithmetic problems, and its partition into disjoint splits.

A problem is a starting number and a sequence of operations; its *computation* (the bare
expression, ``"7 - 3"`` or ``"(12 + 5) * 3"``) identifies it, whatever story a word problem
wraps around it. Each computation belongs to exactly one split, chosen by a hash of it: the
same computation is on the same side for every seed, difficulty and style, so ``train`` and
``test`` never share one (not even in a different wording), and a split never repeats one.

Small spaces are enumerated (a split is a seeded shuffle of all its problems, so its size is
exact and a request for more is refused); spaces too large to enumerate are drawn from, step by
step, keeping each new computation of the requested split.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

#: the splits, and the hash bucket (of ``len(SPLITS)``) each one owns
SPLITS = ("train", "test")
#: spaces up to this many problems are enumerated; above it each split holds far more than any
#: request (``count`` is at most 100,000), so drawing always finds new problems
ENUMERATE_UP_TO = 400_000
#: a multiplication step multiplies by one of these
FACTORS = range(2, 10)


@dataclass(frozen=True)
class Space:
    """The difficulty knobs that define which problems exist."""

    digits: int  # of the starting number
    operand_digits: int  # of each +/- operand
    operations: int
    multiply: bool

    def starts(self) -> range:
        lo = 10 ** (self.digits - 1) if self.digits > 1 else 2
        return range(lo, 10**self.digits)

    def options(self, total: int) -> list[tuple[str, range]]:
        """The operators allowed after ``total``, each with its operands (never below zero)."""
        lo = 10 ** (self.operand_digits - 1) if self.operand_digits > 1 else 1
        hi = 10**self.operand_digits - 1
        out = [("+", range(lo, hi + 1))]
        if total > 1:
            out.append(("-", range(min(lo, total), min(hi, total) + 1)))
        if self.multiply:
            out.append(("*", FACTORS))
        return out


@dataclass(frozen=True)
class Problem:
    start: int
    steps: tuple[tuple[str, int], ...]

    @property
    def expression(self) -> str:
        text = str(self.start)
        for op, n in self.steps:
            if op == "*":
                text = f"({text}) * {n}" if " " in text else f"{text} * {n}"
            else:
                text = f"{text} {op} {n}"
        return text

    @property
    def answer(self) -> int:
        total = self.start
        for op, n in self.steps:
            total = total * n if op == "*" else total + n if op == "+" else total - n
        return total


def split_of(problem: Problem) -> str:
    """The one split this computation belongs to (a hash, so it never depends on a seed)."""
    digest = hashlib.sha256(problem.expression.encode()).digest()
    return SPLITS[digest[0] % len(SPLITS)]


def size(space: Space, cap: int = ENUMERATE_UP_TO) -> int:
    """How many problems the space holds, or ``cap + 1`` when more than ``cap``."""
    return min(sum(_count(space, s, space.operations, cap) for s in space.starts()), cap + 1)


@lru_cache(maxsize=2**20)  # bounded: a count only needs its own sub-counts once
def _count(space: Space, total: int, left: int, cap: int) -> int:
    if left == 0:
        return 1
    n = 0
    for op, operands in space.options(total):
        for k in operands:
            n += _count(space, _apply(total, op, k), left - 1, cap)
            if n > cap:
                return n
    return n


def _apply(total: int, op: str, n: int) -> int:
    return total * n if op == "*" else total + n if op == "+" else total - n


def enumerate_all(space: Space) -> Iterator[Problem]:
    """Every problem of an enumerable space, in a fixed order."""

    def grow(total: int, steps: tuple[tuple[str, int], ...], start: int) -> Iterator[Problem]:
        if len(steps) == space.operations:
            yield Problem(start, steps)
            return
        for op, operands in space.options(total):
            for k in operands:
                yield from grow(_apply(total, op, k), (*steps, (op, k)), start)

    for start in space.starts():
        yield from grow(start, (), start)


@lru_cache(maxsize=4)  # a run needs two (train, test); each may hold 200k problems
def split_problems(space: Space, split: str) -> tuple[Problem, ...]:
    """All problems of ``split`` in an enumerable space (fixed order; the caller shuffles)."""
    return tuple(p for p in enumerate_all(space) if split_of(p) == split)


def split_size(space: Space, split: str) -> int | None:
    """How many problems ``split`` holds, or ``None`` for a space too large to enumerate."""
    return len(split_problems(space, split)) if size(space) <= ENUMERATE_UP_TO else None


def draw(rng: random.Random, space: Space) -> Problem:
    """One problem of a large space: an operator uniformly, then an operand uniformly."""
    total = start = rng.choice(space.starts())
    steps = []
    for _ in range(space.operations):
        op, operands = rng.choice(space.options(total))
        n = rng.choice(operands)
        steps.append((op, n))
        total = _apply(total, op, n)
    return Problem(start, tuple(steps))


def problems(space: Space, split: str, count: int, rng: random.Random) -> list[Problem]:
    """``count`` distinct problems of ``split``, in a seeded order.

    Raises ``ValueError`` when the split holds fewer than ``count``.
    """
    if size(space) <= ENUMERATE_UP_TO:
        pool = list(split_problems(space, split))
        if count > len(pool):
            raise ValueError(
                f"count {count} is more than the {len(pool)} distinct problems of the "
                f"{split!r} split at this difficulty ({describe(space)}); lower count, or "
                "raise digits, operand_digits or operations (or allow multiply)"
            )
        rng.shuffle(pool)
        return pool[:count]
    seen: set[str] = set()
    out: list[Problem] = []
    while len(out) < count:
        p = draw(rng, space)
        if split_of(p) == split and p.expression not in seen:
            seen.add(p.expression)
            out.append(p)
    return out


def describe(space: Space) -> str:
    return (
        f"digits={space.digits}, operand_digits={space.operand_digits}, "
        f"operations={space.operations}, multiply={'on' if space.multiply else 'off'}"
    )


__all__ = ["SPLITS", "Problem", "Space", "describe", "problems", "size", "split_of", "split_size"]
