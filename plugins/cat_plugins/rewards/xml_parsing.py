"""Robust parsing of the XML that models write: rubric criteria and yes/no judge verdicts.

The paper parses rubrics and judgments "with a standard XML tree parser"; real model output is
messier (markdown fences, a preamble, a missing root, a bare ``&`` or ``<`` inside a criterion,
an unclosed last tag, a numbered list instead of XML). Every function here is pure and total: it
never raises on model output, it returns what it could read (or ``None``/an empty result).

Rubric rules (:func:`parse_rubric`), in order:

1. markdown code fences are removed (their content kept);
2. every ``<rubric>...</rubric>`` block (an unclosed one runs to the end; no block: the whole text)
   is read with :mod:`xml.etree`; where that fails (unescaped ``&``/``<``), with a regex that also
   accepts an unclosed last ``<criterion>``. The **last** block that yields criteria wins, so an
   echoed format example before the real rubric is ignored;
3. no ``<criterion>`` at all: lines of a numbered list (``1.``, ``2)``, ``(3)``) are the criteria;
4. each criterion is whitespace-collapsed, entity-decoded and stripped of simple inline tags
   (``<b>``); ones without a letter or digit (an echoed ``...`` placeholder) and
   case-insensitive duplicates are dropped.

Verdict rules (:func:`parse_verdict`), following the judge template ("reply with
``<answer>yes</answer>`` or ``<answer>no</answer>``"): the first word after every ``<answer>``
tag is read, closed or not (yes/no/true/false, any case, markup and punctuation ignored); if they
all agree that is the verdict, if they disagree (a judge that echoed "answer
<answer>yes</answer> or <answer>no</answer>") it is ``None``. Without a tag, a reply that
*starts* with yes/no (after markup such as ``**``), else an "answer is: yes" / "verdict: no"
phrase, counts. A verdict whose own sentence (or tag) also holds the opposite word ("Yes and
no") is ambiguous. Anything ambiguous is ``None`` (unscorable), never a guess.
"""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Literal

RubricMethod = Literal["xml", "regex", "list", "none"]

_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?|```|~~~")
_RUBRIC_OPEN = re.compile(r"<\s*rubric\b[^>]*>", re.IGNORECASE)
_RUBRIC_CLOSE = re.compile(r"<\s*/\s*rubric\s*>", re.IGNORECASE)
_CRITERION = re.compile(
    r"<\s*criterion\b[^>]*>(.*?)(?=<\s*/\s*criterion\s*>|<\s*criterion\b|<\s*/\s*rubric\s*>|\Z)",
    re.IGNORECASE | re.DOTALL,
)
_NUMBERED = re.compile(r"^\s*(?:\(\d{1,2}\)|\d{1,2}[.)])\s+(\S.*)$", re.MULTILINE)
#: an inline tag such as <b>, </i>, <br/>: "<" directly followed by a name (so "< 140" survives)
_INLINE_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9_-]*\s*/?>")
_EDGE_MARKUP = re.compile(r"^[*_`]+|[*_`]+$")

#: the first word after each opening <answer> tag (closed or not: a reply cut by max_new_tokens)
_ANSWER_TAG = re.compile(r"<\s*answer\s*>[\s*_`\"']*([A-Za-z]*)([^<\n]*)", re.IGNORECASE)
_YES = frozenset({"yes", "true"})
_NO = frozenset({"no", "false"})
_LEADING_WORD = re.compile(r"^[\s*_`#>\"'(\[]*(?:answer\s*[:=-]?\s*)?([A-Za-z]+)\b", re.IGNORECASE)
_ANSWER_PHRASE = re.compile(
    r"\b(?:final\s+)?(?:answer|verdict|judg(?:e)?ment)\s*(?:is\s*[:=]?|:|=)\s*[*_`\"']*\s*"
    r"(yes|no|true|false)\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"[A-Za-z]+")
#: the rest of a verdict's sentence: up to a sentence end (". " / "!" / "?") or the line end
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)|\n")


@dataclass(frozen=True)
class RubricParse:
    """The criteria read from one model output and how they were read (for audit logs)."""

    criteria: tuple[str, ...]
    method: RubricMethod


def strip_fences(text: str) -> str:
    """Remove markdown code-fence markers (```xml, ```, ~~~), keeping what they enclose."""
    return _FENCE.sub("", text)


def clean_criterion(text: str) -> str:
    """Collapse whitespace, decode entities, drop inline tags, markdown bold, edge markup and
    enclosing quotes."""
    text = _INLINE_TAG.sub("", text)
    text = html.unescape(" ".join(text.split())).replace("**", "")
    text = _EDGE_MARKUP.sub("", text).strip()
    if len(text) > 1 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def _dedupe(items: list[str]) -> tuple[str, ...]:
    seen: set[str] = set()
    out = []
    for item in items:
        key = item.casefold()
        if any(ch.isalnum() for ch in item) and key not in seen:
            seen.add(key)
            out.append(item)
    return tuple(out)


def _rubric_blocks(text: str) -> list[str]:
    """Each ``<rubric>`` block's inner text (an unclosed one runs to the end); else the text."""
    blocks = []
    for opening in _RUBRIC_OPEN.finditer(text):
        rest = text[opening.end() :]
        close = _RUBRIC_CLOSE.search(rest)
        blocks.append(rest[: close.start()] if close else rest)
    return blocks or [text]


def _criteria_xml(block: str) -> list[str] | None:
    try:
        root = ET.fromstring(f"<rubric>{block}</rubric>")
    except ET.ParseError:
        return None
    return [clean_criterion("".join(el.itertext())) for el in root.iter() if el.tag == "criterion"]


def _criteria_regex(block: str) -> list[str]:
    return [clean_criterion(m.group(1)) for m in _CRITERION.finditer(block)]


def parse_rubric(text: str) -> RubricParse:
    """Read rubric criteria from a model's output (see the module docstring for the rules)."""
    text = strip_fences(text or "")
    for block in reversed(_rubric_blocks(text)):
        found = _criteria_xml(block)
        method: RubricMethod = "xml"
        if not found:
            found, method = _criteria_regex(block), "regex"
        criteria = _dedupe(found)
        if criteria:
            return RubricParse(criteria, method)
    listed = _dedupe([clean_criterion(m.group(1)) for m in _NUMBERED.finditer(text)])
    if listed:
        return RubricParse(listed, "list")
    return RubricParse((), "none")


def _word_verdict(word: str) -> bool | None:
    word = word.strip().strip(".!,;:*_`\"'()[] \t\n").casefold()
    if word in _YES:
        return True
    if word in _NO:
        return False
    return None


def _contradicted(verdict: bool, rest: str) -> bool:
    """Whether the rest of the verdict's sentence also says the opposite ("yes and no")."""
    end = _SENTENCE_END.search(rest)
    words = _WORD.findall(rest[: end.start()] if end else rest)
    return any(_word_verdict(w) is (not verdict) for w in words)


def _read(word: str, rest: str) -> bool | None:
    verdict = _word_verdict(word)
    if verdict is None or _contradicted(verdict, rest):
        return None
    return verdict


def _agreed(verdicts: list[bool | None]) -> bool | None:
    found = set(verdicts)
    return found.pop() if len(found) == 1 else None


def parse_verdict(text: str) -> bool | None:
    """A judge's yes/no: ``True``, ``False``, or ``None`` when it cannot be read unambiguously."""
    text = strip_fences(text or "")
    tags = _ANSWER_TAG.findall(text)
    if tags:
        return _agreed([_read(word, rest) for word, rest in tags])
    lead = _LEADING_WORD.match(text)
    if lead is not None and _word_verdict(lead.group(1)) is not None:
        return _read(lead.group(1), text[lead.end() :])
    phrases = [_read(m.group(1), text[m.end() :]) for m in _ANSWER_PHRASE.finditer(text)]
    return _agreed(phrases) if phrases else None


__all__ = ["RubricParse", "clean_criterion", "parse_rubric", "parse_verdict", "strip_fences"]
