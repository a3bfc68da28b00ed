"""Whether two final answers are the same, and groups of equal answers for voting.

``mode="string"`` is the paper's boxed-string match after :func:`normalize_answer`;
``mode="math_verify"`` (default) also accepts answers that math-verify proves equal
(``\\frac{1}{2}`` vs ``0.5``, ``3\\sqrt{2}`` vs ``\\sqrt{18}``, intervals, sets). math-verify is
not symmetric (``verify(gold, pred)`` may differ from ``verify(pred, gold)``, e.g. ``x = 2``
against ``2``): a reward asks gold first; voting asks both ways, because a vote has no gold.
Nor is it transitive, so a voting cluster holds answers equal to each other, not only linked.
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

    Every two members of a cluster are equivalent *both ways*: equivalence is not transitive
    (an answer read two ways, a numeric tolerance), and joining links transitively let one
    answer chain different values into one cluster (issue 22: ``1.2`` + ``1,2`` + ``{1,2}``
    outvoted ``7``). Answers with the same normalised string form one group; groups are placed
    largest first (ties: the smaller string), each into the largest cluster all of whose
    members it is equivalent to (ties: the cluster made first), else into a new one. Nothing
    depends on the answers' order, so permuting them permutes the indices and nothing else.
    Members are in index order, clusters in order of their first member.
    """
    items = [_as_answer(a, timeout_s) for a in answers]
    groups: dict[str, list[int]] = {}
    for i, a in enumerate(items):
        norm = normalize_answer(a.text) if a is not None else ""
        if norm:
            groups.setdefault(norm, []).append(i)

    def fits(group: list[int], cluster: list[int]) -> bool:
        return all(
            answers_equivalent(items[i], items[j], mode, timeout_s=timeout_s, symmetric=True)
            for i in group
            for j in cluster
        )

    clusters: list[list[int]] = []
    for norm in sorted(groups, key=lambda n: (-len(groups[n]), n)):
        homes = [c for c in clusters if fits(groups[norm], c)]
        if homes:
            max(homes, key=len).extend(groups[norm])  # max keeps the first of equal sizes
        else:
            clusters.append(list(groups[norm]))
    return sorted((sorted(c) for c in clusters), key=lambda c: c[0])
