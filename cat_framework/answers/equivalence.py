"""Whether two final answers are the same, and groups of equal answers for voting.

``mode="string"`` is the paper's boxed-string match after :func:`normalize_answer`;
``mode="math_verify"`` (default) also accepts answers that math-verify proves equal
(``\\frac{1}{2}`` vs ``0.5``, ``3\\sqrt{2}`` vs ``\\sqrt{18}``, intervals, sets). math-verify is
not symmetric (``verify(gold, pred)`` may differ from ``verify(pred, gold)``, e.g. ``x = 2``
against ``2``): a reward asks gold first; voting asks both ways, because a vote has no gold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from cat_framework.answers import _mv
from cat_framework.answers._bound import DEFAULT_TIMEOUT_S
from cat_framework.answers.extract import Answer, normalize_answer

EquivalenceMode = Literal["math_verify", "string"]
AnswerLike = str | Answer | None


def _as_answer(answer: AnswerLike, timeout_s: float | None) -> Answer | None:
    if answer is None or isinstance(answer, Answer):
        return answer
    return Answer.of(answer, timeout_s)


def answers_equivalent(
    pred: AnswerLike,
    gold: AnswerLike,
    mode: EquivalenceMode = "math_verify",
    *,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    symmetric: bool = False,
) -> bool:
    """Whether ``pred`` states the same answer as ``gold``. ``None`` or empty never matches.

    Equal normalised strings match in both modes; ``math_verify`` then asks
    ``verify(gold, pred)``, and with ``symmetric`` also ``verify(pred, gold)``. An answer (or the
    span math-verify read from a text) longer than :data:`MAX_VERIFY_CHARS` is compared as a
    string only.
    """
    if mode not in ("math_verify", "string"):
        raise ValueError(f"mode must be 'math_verify' or 'string', not {mode!r}")
    a, b = _as_answer(pred, timeout_s), _as_answer(gold, timeout_s)
    if a is None or b is None:
        return False
    norm_a, norm_b = normalize_answer(a.text), normalize_answer(b.text)
    if not norm_a or not norm_b:
        return False
    if norm_a == norm_b:
        return True
    if mode == "string":
        return False
    if not _mv.verify_keys(b.key, a.key, timeout_s):
        return False
    return not symmetric or _mv.verify_keys(a.key, b.key, timeout_s)


def cluster_answers(
    answers: Sequence[AnswerLike],
    mode: EquivalenceMode = "math_verify",
    *,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
) -> list[list[int]]:
    """Group the indices of equivalent answers; ``None`` or blank answers belong to no cluster.

    Order-independent: two answers are linked when they are equivalent *both ways*, and a
    cluster is a connected set of links (union-find), so permuting the answers permutes the
    indices and nothing else. Members are in index order, clusters in order of their first
    member.
    """
    items = [_as_answer(a, timeout_s) for a in answers]
    live = [i for i, a in enumerate(items) if a is not None and normalize_answer(a.text)]
    parent = {i: i for i in live}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for n, i in enumerate(live):
        for j in live[n + 1 :]:
            if find(i) == find(j):
                continue  # already joined: the answer cannot change the clusters
            if answers_equivalent(items[i], items[j], mode, timeout_s=timeout_s, symmetric=True):
                parent[max(find(i), find(j))] = min(find(i), find(j))
    groups: dict[int, list[int]] = {}
    for i in live:
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values(), key=lambda c: c[0])
