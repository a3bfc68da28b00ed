"""Parsing messy model output: rubric criteria and judge verdicts (exact expectations)."""

from __future__ import annotations

import pytest

from cat_plugins.rewards.xml_parsing import (
    RubricParse,
    clean_criterion,
    parse_rubric,
    parse_verdict,
    strip_fences,
)


def test_well_formed_rubric_uses_the_xml_parser() -> None:
    text = (
        "<rubric><criterion>Mentions salt</criterion><criterion>Mentions sleep</criterion></rubric>"
    )
    assert parse_rubric(text) == RubricParse(("Mentions salt", "Mentions sleep"), "xml")


def test_fences_preamble_and_trailing_chatter() -> None:
    text = (
        "Sure! Here is the rubric:\n```xml\n<rubric>\n  <criterion>Advises rest</criterion>\n"
        "  <criterion>\n    Recommends seeing\n    a doctor\n  </criterion>\n</rubric>\n```\n"
        "Let me know if you need more."
    )
    assert parse_rubric(text) == RubricParse(("Advises rest", "Recommends seeing a doctor"), "xml")


def test_missing_root_element() -> None:
    text = "Criteria:\n<criterion>Is polite</criterion>\n<criterion>Is brief</criterion>"
    assert parse_rubric(text) == RubricParse(("Is polite", "Is brief"), "xml")


def test_unescaped_ampersand_and_less_than_fall_back_to_regex() -> None:
    text = (
        "<rubric><criterion>Targets BP < 140/90 mmHg</criterion>"
        "<criterion>Mentions diet & exercise</criterion><criterion>Says HR > 60</criterion></rubric>"
    )
    assert parse_rubric(text) == RubricParse(
        ("Targets BP < 140/90 mmHg", "Mentions diet & exercise", "Says HR > 60"), "regex"
    )


def test_entities_are_decoded_and_inline_tags_dropped() -> None:
    text = "<rubric><criterion>Mentions <b>diet</b> &amp; exercise</criterion></rubric>"
    assert parse_rubric(text) == RubricParse(("Mentions diet & exercise",), "xml")


def test_truncated_output_keeps_the_unclosed_last_criterion() -> None:
    text = "<rubric>\n<criterion>First & foremost</criterion>\n<criterion>Second point"
    assert parse_rubric(text) == RubricParse(("First & foremost", "Second point"), "regex")


def test_criterion_closed_by_the_next_opening_tag() -> None:
    text = "<rubric><criterion>One<criterion>Two</criterion></rubric>"
    assert parse_rubric(text).criteria == ("One", "Two")


def test_uppercase_tags() -> None:
    text = "<RUBRIC><Criterion>Uses plain language</Criterion></RUBRIC>"
    assert parse_rubric(text) == RubricParse(("Uses plain language",), "regex")


def test_echoed_format_example_is_ignored_in_favour_of_the_last_rubric() -> None:
    text = (
        "Format: <rubric><criterion>...</criterion><criterion>...</criterion></rubric>\n"
        "<rubric><criterion>Real one</criterion><criterion>Real two</criterion></rubric>"
    )
    assert parse_rubric(text) == RubricParse(("Real one", "Real two"), "xml")


def test_placeholders_empty_items_and_duplicates_are_dropped() -> None:
    text = (
        "<rubric><criterion>...</criterion><criterion>  </criterion>"
        "<criterion>Is kind</criterion><criterion>IS   KIND</criterion>"
        "<criterion>Is calm</criterion></rubric>"
    )
    assert parse_rubric(text).criteria == ("Is kind", "Is calm")


def test_numbered_list_fallback() -> None:
    text = (
        "Here are the criteria:\n1. **Acknowledges the symptoms**\n2) Suggests lifestyle changes\n"
        "(3) Recommends a doctor\nThanks!"
    )
    assert parse_rubric(text) == RubricParse(
        ("Acknowledges the symptoms", "Suggests lifestyle changes", "Recommends a doctor"), "list"
    )


def test_criterion_tags_win_over_a_numbered_list() -> None:
    text = "1. Not this\n<criterion>This</criterion>"
    assert parse_rubric(text) == RubricParse(("This",), "xml")


@pytest.mark.parametrize("text", ["", "I cannot write a rubric.", "<rubric></rubric>", "```\n```"])
def test_nothing_to_read(text: str) -> None:
    assert parse_rubric(text) == RubricParse((), "none")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('"Mentions salt"', "Mentions salt"),
        ('Uses the word "hypertension"', 'Uses the word "hypertension"'),
        ("**Bold** criterion", "Bold criterion"),
        ("Uses *emphasis* and snake_case", "Uses *emphasis* and snake_case"),
        ("`code`", "code"),
        ("a\n\t b", "a b"),
    ],
)
def test_clean_criterion(raw: str, expected: str) -> None:
    assert clean_criterion(raw) == expected


def test_strip_fences() -> None:
    assert strip_fences("```json\n{}\n```") == "{}\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<answer>yes</answer>", True),
        ("<answer>no</answer>", False),
        ("<ANSWER> Yes. </ANSWER>", True),
        ("<answer>**No**</answer>", False),
        ("<answer>true</answer>", True),
        ("<answer>False</answer>", False),
        ("```xml\n<answer>no</answer>\n```", False),
        ("The response covers it.\n<answer>yes</answer>", True),
        ("Reasoning first... <answer>yes", True),
        ("<answer>yes</answer> <answer>yes</answer>", True),
        ("Reply <answer>yes</answer> or <answer>no</answer>.", None),
        ("<answer>maybe</answer>", None),
        ("<answer></answer>", None),
        ("Yes", True),
        ("no", False),
        ("Yes, the response recommends rest.", True),
        ("**No.** It never mentions salt.", False),
        ("Answer: yes", True),
        ("The criterion is satisfied. Final answer: no", False),
        ("My verdict is yes", True),
        # before: unparsed ("is:" was not a phrase) and "yes" (only the first word was read)
        ("The answer is: no", False),
        ("The answer is: **Yes**.", True),
        ("Yes and no", None),
        ("No, yes.", None),
        ("<answer>yes and no</answer>", None),
        ("Yes. No other criterion matters here.", True),  # the next sentence is not the verdict
        ("The answer is yes; final answer: yes", True),
        ("The verdict is yes. Final answer: no", None),  # two explicit verdicts disagree
        ("Not at all.", None),
        ("Nothing in the response addresses it.", None),
        ("I think there is no mention of it.", None),
        ("maybe", None),
        ("", None),
    ],
)
def test_parse_verdict(text: str, expected: bool | None) -> None:
    assert parse_verdict(text) is expected
