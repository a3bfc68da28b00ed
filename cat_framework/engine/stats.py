"""Small statistics for reports: means with bootstrap confidence intervals (pure functions)."""

from __future__ import annotations

import random
from collections.abc import Sequence


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def bootstrap_ci(
    values: Sequence[float], resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean; ``(nan, nan)`` without data or resamples."""
    n = len(values)
    if n == 0 or resamples <= 0:
        return float("nan"), float("nan")
    rng = random.Random(seed)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    alpha = (1.0 - confidence) / 2.0
    lo = means[min(resamples - 1, max(0, int(alpha * resamples)))]
    hi = means[min(resamples - 1, max(0, int((1.0 - alpha) * resamples) - 1))]
    return lo, hi
