"""math-verify behind a cache and a time bound: reading values from answers and from texts.

Two things are parsed: an *answer string* (``Reference.answer``, a boxed content) and a whole
*text* (a rollout, whose answer math-verify finds itself: several boxes, "final answer is",
LaTeX and plain-number targets). Both are cached by their key, so majority voting, which
compares every pair of rollouts, parses each text once; verdicts are cached by the key pair.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from cat_framework.answers._bound import bounded

#: answers (or extracted spans) longer than this are compared as normalised strings only: a bound
#: on sympy's time where no timer can run (outside the main thread)
MAX_VERIFY_CHARS = 400

#: ("a", answer, timeout) or ("t", text, anchored, timeout)
Key = tuple[Any, ...]

#: a plain number: 1,000 / 1 000 / 1,000.5 / 12% / 1,22 (a list when bare: :func:`comma_list`)
_PLAIN_NUMBER = re.compile(r"-?(?:[1-9]\d{0,2}(?:[ ,]\d{3})+(?:\.\d+)?|\d+(?:[.,]\d+)?|\.\d+)%?")
_THOUSANDS = re.compile(r"-?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?%?")
_DELIMITED = re.compile(r"(?<!\\)\$|\\\(|\\\[|\\boxed")
_TEXT_CMD = re.compile(r"\\(?:text|textbf|mathrm|mbox|operatorname)\{[^{}]*\}|\\[A-Za-z]+")
#: two words in a row (outside LaTeX commands): a sentence, not a formula
_PROSE = re.compile(r"(?<![A-Za-z])[A-Za-z]{2,}[ \t]+[A-Za-z]{2,}(?![A-Za-z])")


def _configs(anchored: bool) -> list[Any]:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    free = not anchored
    return [
        LatexExtractionConfig(try_extract_without_anchor=free),
        ExprExtractionConfig(try_extract_without_anchor=free),
    ]


def _run_parse(text: str, configs: list[Any] | None, timeout_s: float | None) -> list[Any]:
    from math_verify import parse

    def go() -> list[Any]:
        if configs is None:
            return list(parse(text, parsing_timeout=None))
        return list(parse(text, configs, parsing_timeout=None))

    return bounded(go, [], timeout_s)


def _split(found: list[Any]) -> tuple[tuple[Any, ...], str | None]:
    values = tuple(v for v in found if not isinstance(v, str))
    strings = [v for v in found if isinstance(v, str)]
    span = strings[-1].strip() if strings else None
    if span is not None and len(span) > MAX_VERIFY_CHARS:
        values = ()
    return values, span


def comma_list(number: str) -> bool:
    """Whether a plain number's comma separates list items rather than thousands (``1,2``,
    ``-2,1``, ``1,22``; not ``1,000``): the LaTeX reading of a box, which a bare answer keeps."""
    return "," in number and not _THOUSANDS.fullmatch(number)


@lru_cache(maxsize=16384)
def answer_values(answer: str, timeout_s: float | None) -> tuple[Any, ...]:
    """math-verify's value of a bare answer string.

    A plain number goes to math-verify's number reader (``1,000`` is 1000). A bare comma
    between digits that is no thousands separator (``1,2``, ``-2,1``, ``1,22``) has one reading,
    the one it has in a box: math-verify's LaTeX reading, a list ({1, 2}, as MATH writes the
    roots ``-2,1``), not a decimal comma. Both readings at once made ``1,2`` equal to ``1.2``
    *and* to ``\\{1,2\\}`` (issue 22); a bare answer is what an aggregator stores from a box
    (``Reference.answer``) or a gold label, so the box's reading is the one it had. A delimited
    answer (``$..$``, ``\\boxed``) or a sentence is read as text; anything else is wrapped in
    ``$...$`` first, since ``parse("3\\sqrt{2}")`` alone yields 3.
    """
    from math_verify import ExprExtractionConfig

    s = answer.strip()
    if not s:
        return ()
    if _PLAIN_NUMBER.fullmatch(s) and not comma_list(s):
        values, _ = _split(_run_parse(s, [ExprExtractionConfig()], timeout_s))
        if values:
            return values
    if _DELIMITED.search(s) or _PROSE.search(_TEXT_CMD.sub(" ", s)):
        return _split(_run_parse(s, None, timeout_s))[0]  # the span read is length-checked
    if len(s) > MAX_VERIFY_CHARS:
        return ()
    return _split(_run_parse(f"${s.rstrip('.')}$", None, timeout_s))[0]


@lru_cache(maxsize=16384)
def text_values(
    text: str, anchored: bool, timeout_s: float | None
) -> tuple[tuple[Any, ...], str | None]:
    """math-verify's reading of a whole response: its values and the span it read.

    ``anchored`` limits it to boxes and answer phrases (no bare LaTeX or last number).
    """
    return _split(_run_parse(text.replace("\\fbox", "\\boxed"), _configs(anchored), timeout_s))


def values(key: Key) -> tuple[Any, ...]:
    if key[0] == "a":
        return answer_values(key[1], key[2])
    return text_values(key[1], key[2], key[3])[0]


@lru_cache(maxsize=65536)
def verify_keys(gold: Key, pred: Key, timeout_s: float | None) -> bool:
    """``verify(gold, pred)`` on the cached values of two keys (gold first: not symmetric)."""
    from math_verify import verify

    gold_values, pred_values = values(gold), values(pred)
    if not gold_values or not pred_values:
        return False
    return bool(
        bounded(
            lambda: verify(list(gold_values), list(pred_values), timeout_seconds=None),
            False,
            timeout_s,
        )
    )


def clear_caches() -> None:
    """Forget every parse and verdict (tests; long-running processes with changing inputs)."""
    answer_values.cache_clear()
    text_values.cache_clear()
    verify_keys.cache_clear()
