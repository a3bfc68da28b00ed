"""Paired tests against independent implementations (scipy) and their defining properties."""

from __future__ import annotations

import random

import pytest
import scipy.stats as scipy_stats

from cat_framework.engine.paired_stats import holm, mcnemar_exact, paired_bootstrap, sign_flip_p


@pytest.mark.parametrize(
    "a_only,b_only,both,neither", [(3, 12, 40, 45), (7, 7, 10, 0), (0, 5, 1, 1)]
)
def test_mcnemar_is_the_exact_binomial_test_on_discordant_items(a_only, b_only, both, neither):
    a = [True] * a_only + [False] * b_only + [True] * both + [False] * neither
    b = [False] * a_only + [True] * b_only + [True] * both + [False] * neither
    got = mcnemar_exact(a, b)
    want = scipy_stats.binomtest(a_only, a_only + b_only, 0.5).pvalue
    assert (got.a_only, got.b_only) == (a_only, b_only)
    assert got.p == pytest.approx(want, rel=1e-12)
    assert mcnemar_exact(b, a).p == pytest.approx(got.p)  # symmetric


def test_mcnemar_without_discordant_items_finds_nothing():
    assert mcnemar_exact([True, False], [True, False]).p == 1.0


def test_paired_bootstrap_uses_the_pairing():
    """Two arms whose items vary a lot but differ by a constant: a paired interval is narrow
    and excludes zero; the items' own spread does not widen it."""
    rng = random.Random(1)
    base = [rng.random() for _ in range(200)]
    better = [x + 0.05 for x in base]
    mean, lo, hi = paired_bootstrap(better, base, resamples=2000)
    assert mean == pytest.approx(0.05) and lo == pytest.approx(0.05) and hi == pytest.approx(0.05)
    noisy = [x + rng.gauss(0.0, 0.1) for x in base]
    mean, lo, hi = paired_bootstrap(noisy, base, resamples=2000)
    assert lo < mean < hi and lo < 0.0 < hi  # no real difference: the interval covers zero


def test_sign_flip_agrees_with_scipys_permutation_test():
    rng = random.Random(2)
    a = [rng.random() for _ in range(30)]
    b = [x - 0.1 + rng.gauss(0.0, 0.2) for x in a]
    ours = sign_flip_p(a, b, resamples=20_000)
    theirs = scipy_stats.permutation_test(
        ([x - y for x, y in zip(a, b, strict=True)],),
        lambda d: sum(d) / len(d),
        permutation_type="samples",
        n_resamples=20_000,
        random_state=0,
    ).pvalue
    assert ours == pytest.approx(theirs, abs=0.01)
    assert sign_flip_p([1.0, 2.0], [1.0, 2.0]) == 1.0


def test_holm_matches_the_textbook_example():
    # Holm (1979) step-down: sorted p * (m - rank), made monotone, capped at 1
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == [1.0, 1.0]


def test_unpaired_input_is_refused():
    with pytest.raises(ValueError, match="differ in length"):
        mcnemar_exact([True], [True, False])
    with pytest.raises(ValueError, match="no paired items"):
        paired_bootstrap([], [])
