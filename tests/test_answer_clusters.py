"""Clustering final answers by equivalence (cat_framework.answers.cluster_answers): what
majority voting and the reference diagnostics count as one answer."""

from __future__ import annotations

import pytest

from cat_framework.answers import Answer, answers_equivalent, cluster_answers


def test_cluster_answers_by_equivalence() -> None:
    got = ["\\frac{1}{2}", "0.5", None, "2", "1/2", "x=2", "3"]
    assert cluster_answers(got) == [[0, 1, 4], [3, 5], [6]]


def test_cluster_answers_are_symmetric_and_order_independent() -> None:
    """Before: the first member was math-verify's gold, so the clusters depended on order."""
    ineq, member = "-2 \\le x \\le 7", "x \\in [-2,7]"
    assert answers_equivalent(member, ineq) and not answers_equivalent(ineq, member)
    assert cluster_answers([ineq, member]) == [[0], [1]]
    assert cluster_answers([member, ineq]) == [[0], [1]]
    assert answers_equivalent(member, ineq, symmetric=True) is False


def test_cluster_answers_never_chain_through_an_ambiguous_answer() -> None:
    """Issue 22 item 2: before, the bare "1,2" (read as 1.2 and as {1, 2}) linked both values
    into one 5-answer cluster that outvoted "7" (3 answers)."""
    got = ["1.2", "1,2", "\\{1,2\\}", "7", "1.2", "7", "\\{1,2\\}", "7"]
    assert cluster_answers(got) == [[0, 4], [1, 2, 6], [3, 5, 7]]


def test_cluster_members_are_equivalent_pairwise(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the equivalence, a cluster never holds two answers that are not equivalent to
    each other: an answer equivalent to two others does not join them (b ~ a, b ~ c, a !~ c)."""
    from cat_framework.answers import equivalence

    links = {frozenset("ab"), frozenset("bc")}

    def linked(a: Answer, b: Answer, *args: object, **kwargs: object) -> bool:
        return a.text == b.text or frozenset(a.text + b.text) in links

    monkeypatch.setattr(equivalence, "answers_equivalent", linked)
    assert cluster_answers(["a", "b", "c"]) == [[0, 1], [2]]  # before: [[0, 1, 2]]
    # the largest group places first: "b" twice takes "a" (ties: the smaller string) ...
    assert cluster_answers(["c", "b", "a", "b"]) == [[0], [1, 2, 3]]
    # ... and "c" twice is placed before the single "b", which then joins the larger cluster
    assert cluster_answers(["a", "b", "c", "c"]) == [[0], [1, 2, 3]]


def test_cluster_answers_do_not_depend_on_order() -> None:
    import itertools

    got = ["1.2", "1,2", "\\{1,2\\}", "7", "0.5", "\\frac{1}{2}", None, "7"]

    def contents(answers: list[str | None]) -> list[list[str]]:
        return sorted(sorted(str(answers[i]) for i in c) for c in cluster_answers(answers))

    base = contents(got)
    assert base == [["0.5", "\\frac{1}{2}"], ["1,2", "\\{1,2\\}"], ["1.2"], ["7", "7"]]
    for order in itertools.islice(itertools.permutations(range(len(got))), 0, None, 97):
        assert contents([got[i] for i in order]) == base, order


def test_cluster_answers_string_mode() -> None:
    got = ["\\frac{1}{2}", "0.5", "\\dfrac{1}{2}", "0.5"]
    assert cluster_answers(got, mode="string") == [[0, 2], [1, 3]]


def test_cluster_answers_empty_and_blank() -> None:
    assert cluster_answers([]) == []
    assert cluster_answers([None, "", "  "]) == []
