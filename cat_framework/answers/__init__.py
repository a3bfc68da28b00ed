"""Final answers of math tasks: extraction and equivalence (pure functions, no model).

Used by the ``majority`` aggregator, the ``programmatic`` reward and test-time evaluation, so one
rule decides what a rollout "answered" everywhere. Extraction: :mod:`.extract` (levels
``none`` / ``phrase`` / ``number``); equivalence and voting clusters: :mod:`.equivalence`.

math-verify is called with its own ``signal.alarm`` timeout disabled (it raises outside the main
thread); our bound instead: answers longer than :data:`MAX_VERIFY_CHARS` are compared as
strings only, and in the main thread each parse/verify is interrupted after ``timeout_s`` (an
``ITIMER_REAL`` timer that pauses any outer one). Parses and verdicts are cached.
"""

from __future__ import annotations

from cat_framework.answers._bound import DEFAULT_TIMEOUT_S
from cat_framework.answers._mv import MAX_VERIFY_CHARS, clear_caches
from cat_framework.answers.equivalence import (
    AnswerLike,
    EquivalenceMode,
    answers_equivalent,
    cluster_answers,
)
from cat_framework.answers.extract import (
    LEVELS,
    Answer,
    Fallback,
    boxes,
    extract_answer,
    extract_boxed,
    normalize_answer,
    read_answer,
)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "LEVELS",
    "MAX_VERIFY_CHARS",
    "Answer",
    "AnswerLike",
    "EquivalenceMode",
    "Fallback",
    "answers_equivalent",
    "boxes",
    "clear_caches",
    "cluster_answers",
    "extract_answer",
    "extract_boxed",
    "normalize_answer",
    "read_answer",
]
