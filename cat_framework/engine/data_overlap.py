"""Duplicate questions within a split and questions shared by ``data.train`` and ``data.eval``:
pure functions of the prompts, for any dataset.

A question that occurs in both splits makes an evaluation measure memory, not skill; a question
repeated within a split weighs more than the others in every mean. Neither is visible in a
score, so every run records both (``data.json``) and ``data.disjoint: true`` refuses overlap.

**The same question.** Two prompts ask the same question when their conversations are equal
after normalisation: every message as ``role: content``, in order, each content Unicode
NFKC-normalised, case-folded and with every run of whitespace made one space (leading and
trailing whitespace dropped). Ids, gold answers, rubrics and ``meta`` are ignored: a question
copied under another id, or with another answer, is still the same question; a different system
message makes a different one.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from cat_framework.errors import CatError
from cat_framework.types import Prompt

#: example ids kept in a report (groups of duplicates, or overlapping pairs)
EXAMPLES = 3


def question_key(prompt: Prompt) -> str:
    """The normalised conversation that decides whether two prompts ask the same question."""
    lines = []
    for m in prompt.messages:
        text = unicodedata.normalize("NFKC", m["content"]).casefold()
        lines.append(f"{m['role'].casefold()}: {' '.join(text.split())}")
    return "\n".join(lines)


@dataclass(frozen=True)
class SplitDuplicates:
    """Repeated questions within one split.

    ``duplicates``: prompts beyond the first of their question (``prompts - distinct``);
    ``repeated``: questions asked more than once; ``examples``: the ids of a few such questions,
    one list per question (the first ``EXAMPLES``, each cut to ``EXAMPLES`` ids)."""

    prompts: int
    distinct: int
    duplicates: int
    repeated: int
    examples: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Overlap:
    """Eval questions that ``data.train`` asks too.

    ``in_train``: eval prompts whose question occurs in train; ``share``: their fraction of the
    eval prompts; ``examples``: ``(eval id, train id)`` pairs of the first few."""

    eval_prompts: int
    in_train: int
    share: float
    examples: tuple[tuple[str, str], ...]


def find_duplicates(prompts: Sequence[Prompt]) -> SplitDuplicates:
    """The repeated questions of one split, in order of first occurrence."""
    groups: dict[str, list[str]] = {}
    for p in prompts:
        groups.setdefault(question_key(p), []).append(p.id)
    repeated = [ids for ids in groups.values() if len(ids) > 1]
    return SplitDuplicates(
        prompts=len(prompts),
        distinct=len(groups),
        duplicates=len(prompts) - len(groups),
        repeated=len(repeated),
        examples=tuple(tuple(ids[:EXAMPLES]) for ids in repeated[:EXAMPLES]),
    )


def find_overlap(train: Sequence[Prompt], eval_: Sequence[Prompt]) -> Overlap:
    """The eval prompts whose question occurs in ``train`` (each counted once, however often
    train asks it)."""
    first_in_train: dict[str, str] = {}
    for p in train:
        first_in_train.setdefault(question_key(p), p.id)
    shared = [(p.id, first_in_train[k]) for p in eval_ if (k := question_key(p)) in first_in_train]
    return Overlap(
        eval_prompts=len(eval_),
        in_train=len(shared),
        share=round(len(shared) / len(eval_), 6) if eval_ else 0.0,
        examples=tuple(shared[:EXAMPLES]),
    )


@dataclass(frozen=True)
class DataReport:
    """What a run's data holds: duplicates per split (``"train"``, ``"eval"``: the prompts the
    run uses) and, when the run uses both splits, their overlap."""

    splits: Mapping[str, SplitDuplicates]
    overlap: Overlap | None

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``data.json`` (docs/run_directories.md)."""
        return {
            "same_question": "messages as role: content, NFKC, case-folded, whitespace collapsed",
            "splits": {name: _jsonable(d) for name, d in self.splits.items()},
            "overlap": _jsonable(self.overlap) if self.overlap is not None else None,
        }


def _jsonable(found: SplitDuplicates | Overlap) -> dict[str, Any]:
    return {**asdict(found), "examples": [list(ids) for ids in found.examples]}


def data_report(train: Sequence[Prompt] | None, eval_: Sequence[Prompt] | None) -> DataReport:
    """Duplicates of each split given, and the overlap when both are."""
    named = {"train": train, "eval": eval_}
    splits = {name: find_duplicates(p) for name, p in named.items() if p is not None}
    overlap = find_overlap(train, eval_) if train is not None and eval_ is not None else None
    return DataReport(splits, overlap)


def overlap_error(overlap: Overlap) -> CatError:
    """The refusal of ``data.disjoint: true``: how many, which, and what to do."""
    pairs = ", ".join(f"eval {_short(e)} = train {_short(t)}" for e, t in overlap.examples[:2])
    return CatError(
        f"data.disjoint is true but {overlap.in_train} of the {overlap.eval_prompts} data.eval "
        f"questions ({overlap.share:.1%}) also occur in data.train (e.g. {pairs}). Remove them "
        "from one split (another split, or a file without them), or set data.disjoint: false "
        "to run anyway (the overlap is then recorded in data.json)."
    )


def _short(pid: str, limit: int = 60) -> str:
    """An id as the message shows it: quoted, a long one cut (ids come from the data)."""
    return repr(pid if len(pid) <= limit else pid[: limit - 3] + "...")


__all__ = [
    "DataReport",
    "Overlap",
    "SplitDuplicates",
    "data_report",
    "find_duplicates",
    "find_overlap",
    "overlap_error",
    "question_key",
]
