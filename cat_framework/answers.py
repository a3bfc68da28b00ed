"""Final answers of math tasks: extraction and equivalence (pure functions, no model).

Used by the ``majority`` aggregator, the ``programmatic`` reward and test-time evaluation, so one
rule decides what a rollout "answered" everywhere.

Extraction (:func:`extract_answer`), in order:

1. the **last** ``\\boxed{...}`` / ``\\fbox{...}`` with balanced braces (also ``\\boxed 5``); a
   trailing unclosed or empty box (a truncated rollout, an echoed instruction) is skipped;
2. GSM8K's ``#### 42`` (the last one; thousands commas removed);
3. a fallback, chosen by ``fallback``:
   ``"none"``: nothing more;
   ``"phrase"``: the last "final answer is X" / "the answer is X" / "final answer: X";
   ``"number"`` (default, as Qwen2.5-Math's parser used by TTRL): the phrase, else the last
   number in the text.

Equivalence (:func:`answers_equivalent`): ``mode="string"`` is the paper's boxed-string match after
the light normalisation of :func:`normalize_answer`; ``mode="math_verify"`` (default) also accepts
answers that math-verify proves equal (``\\frac{1}{2}`` vs ``0.5``, ``3\\sqrt{2}`` vs ``\\sqrt{18}``,
intervals, sets). math-verify is called gold first, with bare answers wrapped in ``$...$``
(``parse("3\\sqrt{2}")`` alone yields ``3``) and with its own ``signal.alarm`` timeout disabled
(it raises outside the main thread). Our bound instead: answers longer than
:data:`MAX_VERIFY_CHARS` are compared as strings only, and in the main thread each parse/verify is
interrupted after ``timeout_s`` (an ``ITIMER_REAL`` timer that pauses any outer one).
Parses and verdicts are cached: majority voting compares the same answers many times.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, Literal, TypeVar

Fallback = Literal["none", "phrase", "number"]
EquivalenceMode = Literal["math_verify", "string"]

#: seconds allowed for one math-verify parse or comparison (main thread only)
DEFAULT_TIMEOUT_S = 5.0
#: longer answers are compared as normalised strings only (a bound on sympy's time off-main-thread)
MAX_VERIFY_CHARS = 400

_R = TypeVar("_R")

# --------------------------------------------------------------------------------------- extraction

_BOX_CMD = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BOX_BARE = re.compile(r"\s+([^\s${}]+)")
_GSM8K = re.compile(r"####[ \t]*([^\n]*)")
_PHRASE = re.compile(
    r"(?:final\s+answer|the\s+answer)\s*(?:is(?![\w'\u2019])|:)\s*:?\s*(\S[^\n]*)", re.IGNORECASE
)
_NUMBER = re.compile(r"(?<![\w)\]}])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_NUM = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_NUMBER_THEN_WORDS = re.compile(rf"^\\?\$?\s*({_NUM})\s+[A-Za-z][A-Za-z ]*$")
_LEADING_NUMBER = re.compile(rf"^\\?\$?\s*({_NUM})")


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


def extract_boxed(text: str) -> str | None:
    """Content of the last complete, non-empty ``\\boxed{...}`` or ``\\fbox{...}`` (or ``\\boxed 5``)."""
    for m in reversed(list(_BOX_CMD.finditer(text))):
        rest = m.end()
        j = rest
        while j < len(text) and text[j] in " \t":
            j += 1
        if j < len(text) and text[j] == "{":
            close = _match_braces(text, j)
            content = text[j + 1 : close].strip() if close is not None else ""
        else:
            bare = _BOX_BARE.match(text, rest)
            content = bare.group(1).rstrip(".,;") if bare else ""
        if content:
            return content
    return None


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
    number_then_words = _NUMBER_THEN_WORDS.match(s)  # "1,000 apples" -> "1000"
    return _clean_number(number_then_words.group(1) if number_then_words else s)


def _extract_last_number(text: str) -> str | None:
    numbers = _NUMBER.findall(text)
    return _clean_number(numbers[-1]) if numbers else None


def extract_answer(text: str | None, *, fallback: Fallback = "number") -> str | None:
    """The final answer a response commits to (see the module docstring for the order), or
    ``None`` when it commits to none. The result is stripped but otherwise raw LaTeX."""
    if not text:
        return None
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    gsm8k = _extract_gsm8k(text)
    if gsm8k is not None:
        return gsm8k
    if fallback == "none":
        return None
    phrase = _extract_phrase(text)
    if phrase is not None or fallback == "phrase":
        return phrase
    if fallback != "number":
        raise ValueError(f"fallback must be 'none', 'phrase' or 'number', not {fallback!r}")
    return _extract_last_number(text)


# ------------------------------------------------------------------------------------- equivalence

_TEXT_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
_REMOVE = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\ ", "^\\circ", "^{\\circ}", "\\%")
_REMOVE += ("\\$", "$")


def normalize_answer(answer: str) -> str:
    """Light normalisation for string matching: drop math delimiters, spacing commands,
    ``\\left``/``\\right``, degrees, ``\\%`` and ``\\$``; ``\\dfrac``/``\\tfrac`` -> ``\\frac``;
    unwrap ``\\text{...}``; remove thousands commas, all whitespace and a trailing period.
    Deliberately conservative: it never equates different values (case is kept)."""
    s = _strip_math_delimiters(answer)
    for token in _REMOVE:
        s = s.replace(token, "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _TEXT_WRAPPERS.sub(r"\1", s)
    s = re.sub(r"\s+", "", s).rstrip(".")
    return _clean_number(s)


class _Timeout(BaseException):
    """Raised by our alarm; a BaseException so sympy's ``except Exception`` cannot swallow it."""


def _raise_timeout(signum: int, frame: Any) -> None:
    raise _Timeout


def _bounded(fn: Callable[[], _R], default: _R, seconds: float | None) -> _R:
    """``fn()``, or ``default`` if it runs longer than ``seconds``.

    The bound is a SIGALRM timer, so it applies only in the main thread (elsewhere ``fn`` runs
    unbounded and :data:`MAX_VERIFY_CHARS` is the guard). A timer armed by someone else (e.g.
    pytest-timeout) is paused and re-armed with its remaining time; if it would fire first, it is
    left alone to do so.
    """
    if (
        not seconds
        or seconds <= 0
        or not hasattr(signal, "setitimer")
        or threading.current_thread() is not threading.main_thread()
    ):
        return fn()
    outer_remaining, outer_interval = signal.getitimer(signal.ITIMER_REAL)
    if outer_remaining and outer_remaining <= seconds:
        return fn()
    previous = signal.signal(signal.SIGALRM, _raise_timeout)
    start = time.monotonic()
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, seconds)
            return fn()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _Timeout:
        return default
    finally:
        signal.signal(signal.SIGALRM, previous)
        if outer_remaining:
            left = max(outer_remaining - (time.monotonic() - start), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, left, outer_interval)


class _DropTimeoutWarning(logging.Filter):
    """math-verify warns that its timeout is off; we bound time ourselves (:func:`_bounded`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutWarning())


def _wrap(answer: str) -> str:
    """Give math-verify a LaTeX anchor: a bare ``3\\sqrt{2}`` would parse as ``3``."""
    s = answer.strip()
    if "\\boxed" in s or (s.startswith("$") and s.endswith("$")):
        return s
    return f"${s.rstrip('.')}$"


@lru_cache(maxsize=16384)
def _parse(answer: str, timeout_s: float | None) -> tuple[Any, ...]:
    from math_verify import parse

    return tuple(_bounded(lambda: parse(_wrap(answer), parsing_timeout=None), [], timeout_s))


@lru_cache(maxsize=65536)
def _verify(gold: str, pred: str, timeout_s: float | None) -> bool:
    from math_verify import verify

    parsed_gold, parsed_pred = _parse(gold, timeout_s), _parse(pred, timeout_s)
    if not parsed_gold or not parsed_pred:
        return False
    return bool(
        _bounded(
            lambda: verify(list(parsed_gold), list(parsed_pred), timeout_seconds=None),
            False,
            timeout_s,
        )
    )


def answers_equivalent(
    pred: str | None,
    gold: str | None,
    mode: EquivalenceMode = "math_verify",
    *,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
) -> bool:
    """Whether ``pred`` states the same answer as ``gold``. ``None`` or empty never matches.

    Equal normalised strings match in both modes; ``math_verify`` then asks
    ``verify(parse(gold), parse(pred))`` (gold first: math-verify is not symmetric).
    """
    if mode not in ("math_verify", "string"):
        raise ValueError(f"mode must be 'math_verify' or 'string', not {mode!r}")
    if pred is None or gold is None:
        return False
    norm_pred, norm_gold = normalize_answer(pred), normalize_answer(gold)
    if not norm_pred or not norm_gold:
        return False
    if norm_pred == norm_gold:
        return True
    if mode == "string" or max(len(pred), len(gold)) > MAX_VERIFY_CHARS:
        return False
    return _verify(gold.strip(), pred.strip(), timeout_s)


def cluster_answers(
    answers: Sequence[str | None],
    mode: EquivalenceMode = "math_verify",
    *,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
) -> list[list[int]]:
    """Group the indices of equivalent answers; ``None`` answers belong to no cluster.

    Greedy and deterministic: each answer joins the first cluster whose first member (taken as
    gold) it is equivalent to, else opens a new cluster. Clusters come out in order of their first
    member, and members in index order.
    """
    clusters: list[list[int]] = []
    for i, answer in enumerate(answers):
        if answer is None or not normalize_answer(answer):
            continue
        for cluster in clusters:
            if answers_equivalent(answer, answers[cluster[0]], mode, timeout_s=timeout_s):
                cluster.append(i)
                break
        else:
            clusters.append([i])
    return clusters


__all__ = [
    "DEFAULT_TIMEOUT_S",
    "MAX_VERIFY_CHARS",
    "EquivalenceMode",
    "Fallback",
    "answers_equivalent",
    "cluster_answers",
    "extract_answer",
    "extract_boxed",
    "normalize_answer",
]
