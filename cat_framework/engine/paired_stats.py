"""Paired comparisons of two arms measured on the same items (pure functions).

Two estimators (or two trained policies) graded on the same problems are paired: most of the
variance is the problems', not the arms', so comparing their two means with two independent
intervals is both too weak and wrong (overlapping intervals do not mean "no difference"). These
tests use the pairing: McNemar's exact test on discordant pairs for right/wrong outcomes, a
paired bootstrap interval and a paired sign-flip permutation test for per-item scores (e.g. the
share of a problem's rollouts that were right), and Holm's correction for a family of tests.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class McNemar:
    """``a_only``: items A got right and B wrong; ``b_only`` the reverse; ``p``: two-sided exact."""

    a_only: int
    b_only: int
    p: float


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> McNemar:
    """Exact two-sided McNemar test: under no difference, each discordant item is equally likely
    to favour either arm, so the smaller count is Binomial(discordant, 1/2)."""
    _same_length(a, b)
    a_only = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    b_only = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    n, k = a_only + b_only, min(a_only, b_only)
    if n == 0:
        return McNemar(0, 0, 1.0)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return McNemar(a_only, b_only, min(1.0, 2 * tail))


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean of ``a - b`` and its percentile bootstrap interval, resampling items (both arms'
    values of an item move together, which is what makes the interval paired)."""
    diffs = _diffs(a, b)
    n = len(diffs)
    rng = random.Random(seed)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    alpha = (1.0 - confidence) / 2.0
    lo = means[max(0, int(alpha * resamples))]
    hi = means[min(resamples - 1, int((1.0 - alpha) * resamples) - 1)]
    return sum(diffs) / n, lo, hi


def sign_flip_p(
    a: Sequence[float], b: Sequence[float], resamples: int = 10_000, seed: int = 0
) -> float:
    """Two-sided paired permutation test of mean(a - b) = 0: under no difference each item's
    difference is as likely negated, so flip signs at random and count means as extreme."""
    diffs = _diffs(a, b)
    observed = abs(sum(diffs))
    if observed == 0:
        return 1.0
    rng = random.Random(seed)
    hits = sum(
        1
        for _ in range(resamples)
        if abs(sum(d if rng.random() < 0.5 else -d for d in diffs)) >= observed - 1e-12
    )
    return (hits + 1) / (resamples + 1)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given): a family of tests keeps its
    chance of any false "significant" at the nominal level."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted = [0.0] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def _diffs(a: Sequence[float], b: Sequence[float]) -> list[float]:
    _same_length(a, b)
    if not a:
        raise ValueError("no paired items")
    return [float(x) - float(y) for x, y in zip(a, b, strict=True)]


def _same_length(a: Sequence[object], b: Sequence[object]) -> None:
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")


__all__ = ["McNemar", "holm", "mcnemar_exact", "paired_bootstrap", "sign_flip_p"]
