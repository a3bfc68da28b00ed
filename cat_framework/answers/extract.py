"""Which final answer a response commits to: math-verify's reading behind a strict gate.

The *level* (``fallback``) decides what counts as committing to an answer:

- ``"none"``: a complete, non-empty ``\\boxed{...}``/``\\fbox{...}`` (also ``\\boxed 5``), or
  GSM8K's ``#### n``;
- ``"phrase"``: also an explicit "final answer is X" / "the answer is X" / "final answer: X" /
  "the correct answer (or solution) is X"; or a response that is nothing but one number;
- ``"number"``: also any bare LaTeX or last number/expression in the text.

References use at most ``"phrase"`` (a reference that commits to nothing is no reference).
Rollouts are read at ``"phrase"`` by the ``programmatic`` reward and the voting and selecting
aggregators unless a pipeline names ``"number"``, the lenient reading (see docs/concepts.md).

Once the level admits a text, math-verify reads it (boxes and phrases only below ``"number"``),
so several boxes (``\\boxed{2} and \\boxed{5}`` is the set {2, 5}), a "final answer is" after
intermediate boxes and thousands separators follow math-verify's rules. A comma between digits
has one reading per answer: in a box or ``$...$`` (and in a bare answer string, which reads as
its box did) math-verify's LaTeX reading, a list (``-2,1`` is {-2, 1}, as MATH writes roots)
unless it separates thousands (``1,000``); in running text math-verify's number reading, a
decimal comma (``the answer is 1,5`` is 1.5, and its string is ``1.5``). The answer's string is
the raw box content when math-verify read exactly that one box, else math-verify's own span,
so the string reads back to the answer's value. Where math-verify reads nothing
(``\\boxed{Evelyn}``, "the answer is blue"), a strict hand-written fallback gives the last box,
the ``####`` line or the phrase's text; the ``"number"`` level never guesses beyond math-verify.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from cat_framework.answers import _mv
from cat_framework.answers._bound import DEFAULT_TIMEOUT_S, bounded

Fallback = Literal["none", "phrase", "number"]
Source = Literal["boxed", "gsm8k", "phrase", "number", "given"]
LEVELS: tuple[Fallback, ...] = ("none", "phrase", "number")

_BOX_CMD = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BOX_BARE = re.compile(r"\s+([^\s${}]+)")
_GSM8K = re.compile(r"####[ \t]*([^\n]*)")
_PHRASE = re.compile(
    r"(?:(?:final|correct|right)\s+(?:answer|solution)|the\s+answer)"
    r"\s*(?:is(?![\w'\u2019])|:)\s*:?\s*(\S[^\n]*)",
    re.IGNORECASE,
)
#: thousands separators as math-verify reads them (``1,000``; ``0,111`` is not: a leading zero)
_THOUSANDS = re.compile(r"^-?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?$")
_NUM = r"-?(?:[1-9]\d{0,2}(?:,\d{3})+|\d+)(?:\.\d+)?"
_NUMBER_THEN_WORDS = re.compile(rf"^\\?\$?\s*({_NUM})\s+[A-Za-z][A-Za-z ]*$")
_LEADING_NUMBER = re.compile(rf"^\\?\$?\s*({_NUM})")
_BARE_NUMBER = re.compile(rf"^\s*\$?\s*({_NUM})\s*\$?\s*\.?\s*$")
_NUMBER_THEN_CLAUSE = re.compile(rf"^\\?\$?\s*({_NUM}),\s+[A-Za-z]")


@dataclass(frozen=True)
class Answer:
    """A final answer: its string (for logs, votes and ``Reference.answer``), where it came from,
    and the cache key of its math-verify value (equivalence compares values, not strings)."""

    text: str
    source: Source
    key: tuple[Any, ...]

    @property
    def values(self) -> tuple[Any, ...]:
        """math-verify's parsed value(s); empty when it could not read any."""
        return _mv.values(self.key)

    @classmethod
    def of(cls, answer: str, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> Answer:
        """A given answer string (``Reference.answer``, a gold label)."""
        s = answer.strip()
        return cls(s, "given", ("a", s, timeout_s))


# ------------------------------------------------------------------------------ strict spans


def _match_braces(text: str, open_at: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``open_at``; escaped characters (``\\{``) are
    skipped, so ``\\boxed{\\{1,2\\}}`` closes at the right place. ``None`` when unbalanced."""
    depth = 0
    i = open_at
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def boxes(text: str) -> list[str]:
    """Contents of every complete, non-empty ``\\boxed{...}``/``\\fbox{...}`` (or ``\\boxed 5``),
    outermost only, in order. Unclosed or empty boxes (a truncated rollout, an echoed
    instruction) are skipped."""
    found = []
    pos = 0
    while (m := _BOX_CMD.search(text, pos)) is not None:
        j = m.end()
        while j < len(text) and text[j] in " \t":
            j += 1
        pos = m.end()
        if j < len(text) and text[j] == "{":
            close = _match_braces(text, j)
            if close is None:
                continue
            content, pos = text[j + 1 : close].strip(), close + 1
            while (inner := extract_boxed(content)) is not None and _BOX_CMD.match(content):
                content = inner  # \boxed{\boxed{8}}
        else:
            bare = _BOX_BARE.match(text, m.end())
            content = bare.group(1).rstrip(".,;") if bare else ""
        if content:
            found.append(content)
    return found


def extract_boxed(text: str) -> str | None:
    """Content of the last complete, non-empty box (see :func:`boxes`), or ``None``."""
    found = boxes(text)
    return found[-1] if found else None


def _strip_math_delimiters(s: str) -> str:
    s = s.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and len(s) > len(left):
            end = s.find(right, len(left))
            if end > 0:
                return s[len(left) : end].strip()
    return s


def _clean_number(s: str) -> str:
    return s.replace(",", "") if _THOUSANDS.match(s) else s


def _extract_gsm8k(text: str) -> str | None:
    matches = _GSM8K.findall(text)
    if not matches:
        return None
    content = matches[-1].strip()
    number = _LEADING_NUMBER.match(content)
    if number:
        return _clean_number(number.group(1))
    return content.rstrip(".").strip() or None


def _extract_phrase(text: str) -> str | None:
    matches = _PHRASE.findall(text)
    if not matches:
        return None
    s = matches[-1].strip()
    while (inner := _PHRASE.search(s)) is not None:  # "Final Answer: The final answer is X"
        s = inner.group(1).strip()
    # "$x$. I hope..." -> x; plain text ends at the first sentence end ("3.5" is kept whole)
    math = s[:1] in "$\\"
    s = _strip_math_delimiters(s) if math else re.split(r"\.(?:\s|$)", s, maxsplit=1)[0]
    s = s.strip().strip("*").strip().rstrip(".,;!").strip()
    if not s:
        return None
    if _BOX_CMD.search(s):
        return extract_boxed(s)
    clause = _NUMBER_THEN_CLAUSE.match(s)  # "10, which is what we got" -> "10"
    if clause:
        return _clean_number(clause.group(1))
    number_then_words = _NUMBER_THEN_WORDS.match(s)  # "1,000 apples" -> "1000"
    return _clean_number(number_then_words.group(1) if number_then_words else s)


# --------------------------------------------------------------------------- normalisation

_TEXT_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
_REMOVE = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\ ", "^\\circ", "^{\\circ}", "\\%")
_REMOVE += ("\\$", "$")


def normalize_answer(answer: str) -> str:
    """Light normalisation for string matching: drop math delimiters, spacing commands,
    ``\\left``/``\\right``, degrees, ``\\%`` and ``\\$``; ``\\dfrac``/``\\tfrac`` -> ``\\frac``;
    unwrap ``\\text{...}``; remove thousands commas (``1,000``, not ``32, 349``: a list), all
    whitespace and a trailing period. Deliberately conservative: it never equates different
    values (case is kept)."""
    s = _strip_math_delimiters(answer)
    for token in _REMOVE:
        s = s.replace(token, "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _TEXT_WRAPPERS.sub(r"\1", s)
    s = _clean_number(s.strip().rstrip(".").strip())
    return re.sub(r"\s+", "", s).rstrip(".")


# ------------------------------------------------------------------------------ the reading


def _display(span: str, values: tuple[Any, ...]) -> str:
    """math-verify's span as an answer string that reads back to the same value."""
    from sympy import FiniteSet

    span = span.strip().strip("*").strip()
    if values and isinstance(values[0], FiniteSet) and _mv._PLAIN_NUMBER.fullmatch(span):
        span = span.replace(",", ", ")  # the set "1,2": unambiguous, never the decimal 1.2
    return span


def _same(raw: str, values: tuple[Any, ...], timeout_s: float | None) -> bool:
    """Whether the raw span ``raw`` has math-verify's value ``values``."""
    from math_verify import verify

    raw_values = _mv.answer_values(raw, timeout_s)
    if not raw_values:
        return False
    return bool(
        bounded(
            lambda: (
                verify(list(raw_values), list(values), timeout_seconds=None)
                and verify(list(values), list(raw_values), timeout_seconds=None)
            ),
            False,
            timeout_s,
        )
    )


def _read(
    text: str, anchored: bool, source: Source, raw: list[str], timeout_s: float | None
) -> Answer | None:
    values, span = _mv.text_values(text, anchored, timeout_s)
    if values and span:
        if len(raw) == 1 and _same(raw[0], values, timeout_s):
            return Answer(raw[0], source, ("a", raw[0], timeout_s))
        return Answer(_display(span, values), source, ("t", text, anchored, timeout_s))
    if raw:
        return Answer(raw[-1], source, ("a", raw[-1], timeout_s))
    if span:  # math-verify found an answer it cannot evaluate: compared as a string
        span = _display(span, ())
        return Answer(span, source, ("a", span, timeout_s))
    return None


def read_answer(
    text: str | None, *, fallback: Fallback = "number", timeout_s: float | None = DEFAULT_TIMEOUT_S
) -> Answer | None:
    """The final answer ``text`` commits to at level ``fallback`` (see the module docstring),
    or ``None`` when it commits to none."""
    if fallback not in LEVELS:
        raise ValueError(f"fallback must be 'none', 'phrase' or 'number', not {fallback!r}")
    if not text or not text.strip():
        return None
    boxed = boxes(text)
    if boxed:
        return _read(text, True, "boxed", boxed, timeout_s)
    gsm8k = _extract_gsm8k(text)
    if gsm8k is not None:
        return Answer(gsm8k, "gsm8k", ("a", gsm8k, timeout_s))
    if fallback == "none":
        return None
    phrase = _extract_phrase(text)
    if phrase is not None:
        return _read(text, True, "phrase", [phrase], timeout_s)
    bare = _BARE_NUMBER.match(text)
    if bare is not None:  # the whole response is one number: it commits to it
        number = _clean_number(bare.group(1))
        return Answer(number, "phrase", ("a", number, timeout_s))
    if fallback == "phrase":
        return None
    return _read(text, False, "number", [], timeout_s)


def extract_answer(text: str | None, *, fallback: Fallback = "number") -> str | None:
    """The string of :func:`read_answer` (``None`` when the text commits to no answer)."""
    answer = read_answer(text, fallback=fallback)
    return answer.text if answer is not None else None
