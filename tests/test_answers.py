"""Final-answer extraction and equivalence (cat_framework.answers)."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from cat_framework import answers
from cat_framework.answers import (
    Answer,
    _mv,
    answers_equivalent,
    cluster_answers,
    extract_answer,
    extract_boxed,
    normalize_answer,
    read_answer,
)
from cat_framework.answers._bound import bounded

# ----------------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so $x = \\boxed{5}$.", "5"),
        ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),  # nested braces
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # escaped braces do not close the box
        ("\\boxed{\\text{(C)}}", "\\text{(C)}"),
        ("\\boxed { 7 }", "7"),
        ("hence $\\boxed 5$.", "5"),  # Hendrycks' brace-less form
        ("hence \\boxed 9.", "9"),
        ("\\fbox{7}", "7"),
        ("\\boxed{5} and then \\boxed{6", "5"),  # a trailing unclosed box is skipped
        ("\\boxed{4} but also \\boxed{}", "4"),  # an empty box is skipped
        ("\\boxed{\\boxed{8}}", "8"),
    ],
)
def test_extract_boxed_forms(text: str, expected: str) -> None:
    assert extract_answer(text) == expected


def test_boxed_beats_gsm8k_and_phrases() -> None:
    assert extract_answer("The answer is 3.\n#### 4\n\\boxed{5}") == "5"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # before: only the last box was read ("5", "2", "4")
        ("\\boxed{2} and \\boxed{5}", "2, 5"),
        ("first \\boxed{1}, then \\boxed{2}", "1, 2"),
        ("$y = \\boxed{3}$, $z = \\boxed{4}$. The final answer is $7$.", "7"),
    ],
)
def test_several_boxes_and_final_answer_phrases(text: str, expected: str) -> None:
    """math-verify's reading: several boxes are one set, a final-answer phrase beats boxes."""
    for level in answers.LEVELS:
        assert extract_answer(text, fallback=level) == expected
    assert answers_equivalent(extract_answer(text), expected, symmetric=True)


def test_several_boxes_read_as_a_set() -> None:
    got = read_answer("so \\boxed{2} and \\boxed{5}")
    assert got is not None and got.source == "boxed"
    assert answers_equivalent(got, "\\{5, 2\\}", symmetric=True)
    assert not answers_equivalent(got, "5")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("The answer is 1,22", "1.22"),  # before: the set {1, 22}
        ("The answer is 1,000.", "1000"),
        ("#### 1,234", "1234"),
        ("\\boxed{-2,1}", "\\{-2, 1\\}"),  # LaTeX: a list, as MATH writes it
        ("\\boxed{32, 349}", "\\{32, 349\\}"),
    ],
)
def test_commas_follow_context(text: str, value: str) -> None:
    assert answers_equivalent(read_answer(text), value, symmetric=True)


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("1.2", "1,2"),  # before: the bare "1,2" was read as 1.2 *and* as {1, 2}
        ("-2.1", "-2,1"),  # MATH writes the roots of a polynomial as -2,1
        ("\\{1.2\\}", "1,2"),
        ("1.22", "1,22"),
    ],
)
def test_a_bare_comma_is_never_read_two_ways(pred: str, gold: str) -> None:
    """Issue 22 item 2: a bare ``1,2`` has one reading, the one it has in a box: a list."""
    assert len(Answer.of(gold).values) == 1
    assert not answers_equivalent(pred, gold)
    assert not answers_equivalent(read_answer(f"so \\boxed{{{pred}}}"), gold)
    listed = "\\{" + gold + "\\}"
    assert answers_equivalent(gold, listed, symmetric=True)
    assert answers_equivalent(read_answer(f"\\boxed{{{gold}}}"), gold, symmetric=True)


@pytest.mark.parametrize(
    ("answer", "value"),
    [
        ("1,000", "1000"),  # thousands: every group after a comma has three digits
        ("58,500", "58500"),  # a MATH-500 answer
        ("-2,1", "\\{1, -2\\}"),  # a list, in any order
        ("1000,99", "\\{99, 1000\\}"),
        ("0,111", "0.111"),  # math-verify's LaTeX reading of a leading zero, in a box too
    ],
)
def test_a_bare_answer_reads_as_in_a_box(answer: str, value: str) -> None:
    boxed = read_answer(f"\\boxed{{{answer}}}")
    assert boxed is not None and boxed.text == answer
    assert answers_equivalent(answer, value, symmetric=True)
    assert answers_equivalent(boxed, value, symmetric=True)


def test_a_decimal_comma_in_prose_is_written_with_a_point() -> None:
    """Running text keeps math-verify's decimal comma, and the answer's string says so: stored
    as ``Reference.answer`` it cannot be read back as a list."""
    got = read_answer("The answer is 1,5")
    assert got is not None and got.text == "1.5"
    assert answers_equivalent(got, "1.5", symmetric=True)
    assert not answers_equivalent(got, "1,5")
    assert not answers_equivalent(read_answer("\\boxed{1,5}"), got)


def test_a_leading_zero_is_no_thousands_separator() -> None:
    """Before: normalised to "0111", string-equal to 111 while its value is 0.111."""
    assert normalize_answer("0,111") == "0,111"
    assert not answers_equivalent("0,111", "0111")
    assert extract_answer("0,111", fallback="phrase") is None  # not a bare thousands number


def test_answer_strings_read_back_to_their_value() -> None:
    """An extracted string (e.g. set as Reference.answer) is read to the same value again."""
    texts = ("\\boxed{1} or \\boxed{2}", "$\\boxed{2}$ and $\\boxed{5}$", "so it is $3.5$")
    texts += ("The answer is 1,22", "\\boxed{-2,1}", "\\boxed{1,000}", "The answer is 0,5.")
    for text in texts:
        got = read_answer(text)
        assert got is not None
        assert answers_equivalent(got, Answer.of(got.text), symmetric=True), got


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She makes 9 * 2 = $<<9*2=18>>18.\n#### 18", "18"),
        ("#### 1,234", "1234"),
        ("#### 1,450,000", "1450000"),
        ("#### -10", "-10"),
        ("#### $-3", "-3"),
        ("#### 2.5 dollars", "2.5"),
        ("#### 12\nextra\n#### 13", "13"),
    ],
)
def test_extract_gsm8k(text: str, expected: str) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("So the final answer is $\\frac{1}{2}$. I hope it is correct.", "\\frac{1}{2}"),
        (
            "Final Answer: The final answer is $(3,\\frac{\\pi}{2})$. I hope it is correct.",
            "(3,\\frac{\\pi}{2})",
        ),
        ("The answer is: **42**", "42"),
        ("The answer is 1,000 apples.", "1000"),
        ("Thus the answer is 3.5.", "3.5"),
        ("The answer is x = 5.", "x = 5"),
        ("final answer: \\(\\sqrt{2}\\)", "\\sqrt{2}"),
        ("The answer is 2. Wait, no: the answer is 3.", "3"),
    ],
)
def test_extract_phrase_fallback(text: str, expected: str) -> None:
    assert extract_answer(text, fallback="phrase") == expected
    assert extract_answer(text, fallback="number") == expected  # phrase comes before numbers
    assert extract_answer(text, fallback="none") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("x - 5 = 3, so x is 8", "8"),
        ("We get 3-5=-2", "-2"),
        ("a total of 1,500 people", "1500"),
        ("half: 1/2", "1/2"),
        ("costs 12.75 each", "12.75"),
        ("The answer isn't clear; maybe 7", "7"),  # "isn't" is not "is"
    ],
)
def test_extract_last_number_fallback(text: str, expected: str) -> None:
    assert answers_equivalent(extract_answer(text), expected, symmetric=True)
    assert extract_answer(text, fallback="phrase") is None


@pytest.mark.parametrize(
    "text", ["", None, "no answer here", "\\boxed{}", "the answer is $\\boxed{}$"]
)
def test_extract_nothing(text: str | None) -> None:
    assert extract_answer(text) is None


def test_extract_rejects_unknown_fallback() -> None:
    with pytest.raises(ValueError, match="fallback"):
        extract_answer("7", fallback="guess")  # type: ignore[arg-type]


def test_extract_boxed_alone() -> None:
    assert extract_boxed("#### 5") is None
    assert extract_boxed("a \\boxed{1} b \\fbox{2}") == "2"


# ------------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("$\\dfrac{1}{2}$", "\\frac{1}{2}"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
        ("90^\\circ", "90"),
        ("\\$18.", "18"),
        ("1,000", "1000"),
        ("10 \\text{ cm}", "10cm"),
        ("50\\%", "50"),
        ("\\text{Evelyn}", "Evelyn"),
        ("(1,2]", "(1,2]"),  # interval commas are kept
        ("32, 349", "32,349"),  # a list, not a thousands separator (before: "32349")
        ("1,000.", "1000"),
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


# --------------------------------------------------------------------------------- equivalence

EQUIVALENT = [
    ("0.5", "\\frac{1}{2}"),
    ("\\frac12", "0.5"),
    ("3/4", "\\dfrac{3}{4}"),
    ("\\tfrac{3}{4}", "\\frac{3}{4}"),
    ("\\sqrt{18}", "3\\sqrt{2}"),  # needs the $...$ wrapping: bare parse("3\\sqrt{2}") is 3
    ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}"),
    ("1000", "1,000"),
    ("1,000", "1000"),
    ("10", "10 \\text{ cm}"),
    ("\\$18", "18"),
    ("-5", "-5"),
    ("-\\frac{1}{2}", "-0.5"),
    ("(1, 2]", "(1,2]"),
    ("(3,\\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("\\{3,2\\}", "\\{2,3\\}"),
    ("(x+1)^2", "x^2+2x+1"),
    ("2", "x=2"),
    ("50", "50\\%"),
    ("5.0", "5"),
    ("0.333333", "\\frac{1}{3}"),
    ("\\infty", "\\infty"),
    ("A", "\\text{(A)}"),
    ("12.", "12"),
]

NOT_EQUIVALENT = [
    ("5", "-5"),
    ("(1,2)", "[1,2]"),
    ("0.33", "\\frac{1}{3}"),
    ("18 dollars", "18"),  # words are not units math-verify knows
    ("b", "a"),
    ("\\frac{1}{2}", "\\frac{1}{3}"),
    ("2\\sqrt{3}", "3\\sqrt{2}"),
    ("", "1"),
    ("1", ""),
    (None, "1"),
    ("1", None),
]


@pytest.mark.parametrize(("pred", "gold"), EQUIVALENT)
def test_equivalent_math_verify(pred: str, gold: str) -> None:
    assert answers_equivalent(pred, gold) is True


@pytest.mark.parametrize(("pred", "gold"), NOT_EQUIVALENT)
def test_not_equivalent(pred: str | None, gold: str | None) -> None:
    assert answers_equivalent(pred, gold) is False
    assert answers_equivalent(pred, gold, mode="string") is False


@pytest.mark.parametrize(
    ("pred", "gold", "expected"),
    [
        ("\\dfrac{1}{2}", "\\frac{1}{2}", True),
        ("$ \\left(1, 2\\right) $", "(1,2)", True),
        ("1,000", "1000", True),
        ("0.5", "\\frac{1}{2}", False),  # string mode does no mathematics
        ("\\sqrt{18}", "3\\sqrt{2}", False),
        ("A", "a", False),  # case is kept
    ],
)
def test_string_mode(pred: str, gold: str, expected: bool) -> None:
    assert answers_equivalent(pred, gold, mode="string") is expected


def test_unknown_mode_rejected() -> None:
    with pytest.raises(ValueError, match="mode"):
        answers_equivalent("1", "1", mode="exact")  # type: ignore[arg-type]


def test_long_answers_compared_as_strings_only() -> None:
    long_sum = "+".join(["1"] * 300)  # 599 chars: math-verify would prove it equals 300
    assert len(long_sum) > answers.MAX_VERIFY_CHARS
    assert answers_equivalent(long_sum, "300") is False
    assert answers_equivalent(long_sum, long_sum) is True


def test_parse_results_are_cached() -> None:
    answers.clear_caches()
    assert answers_equivalent("0.25", "\\frac{1}{4}")
    assert answers_equivalent("0.25", "\\frac{1}{4}")
    assert _mv.verify_keys.cache_info().hits == 1
    assert _mv.answer_values.cache_info().currsize == 2


def test_texts_are_parsed_once_for_many_comparisons() -> None:
    answers.clear_caches()
    texts = [f"so \\boxed{{{i % 3}}}" for i in range(8)]
    cluster_answers([read_answer(t) for t in texts])
    assert _mv.text_values.cache_info().misses == 3  # one per distinct text


def test_works_outside_the_main_thread() -> None:
    """math-verify's own signal.alarm timeout would raise ValueError in a worker thread."""
    results: list[object] = []

    def work() -> None:
        try:
            results.append(answers_equivalent("0.125", "\\frac{1}{8}"))
        except Exception as e:  # pragma: no cover - the failure being tested for
            results.append(e)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert results == [True]


def test_time_bound_interrupts_slow_work() -> None:
    start = time.perf_counter()
    assert bounded(lambda: time.sleep(5) or "done", "timed out", 0.05) == "timed out"
    assert time.perf_counter() - start < 2
    assert bounded(lambda: "done", "timed out", 0.5) == "done"


def test_time_bound_restores_outer_timer_and_handler() -> None:
    """pytest-timeout (or a caller) may have a SIGALRM timer armed: it must survive our bound."""
    handler = signal.getsignal(signal.SIGALRM)
    before = signal.getitimer(signal.ITIMER_REAL)[0]
    assert bounded(lambda: time.sleep(5) or "done", "timed out", 0.05) == "timed out"
    after = signal.getitimer(signal.ITIMER_REAL)[0]
    assert signal.getsignal(signal.SIGALRM) is handler
    if before:
        assert 0 < after <= before
    else:
        assert after == 0


def test_the_correct_answer_is_a_committed_answer():
    """A small anchor writes "The correct answer is 8." more often than a box: a commitment."""
    text = "1. 6 + 1 = 7\n2. 6 + 1 = 8\n\nThe correct answer is 8."
    assert extract_answer(text, fallback="phrase") == "8"
    assert extract_answer("so 3 - 1 = 2", fallback="phrase") is None  # no commitment


def test_a_response_that_is_only_a_number_commits_to_it():
    assert extract_answer("  42. ", fallback="phrase") == "42"
    assert extract_answer("1,000", fallback="phrase") == "1000"
    assert extract_answer("5 - 3", fallback="phrase") is None  # an expression, not an answer
    assert extract_answer("2 apples", fallback="phrase") is None
