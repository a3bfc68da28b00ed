"""Putting rollouts into a prompt so that none can break out of its slot."""

from __future__ import annotations

import re
from collections.abc import Sequence

_TAG = re.compile(r"<(/?)(response|request|problem)\b", re.IGNORECASE)


def escape(text: str) -> str:
    """Neutralise our delimiter tags inside model text (``</response>`` -> ``&lt;/response>``)."""
    return _TAG.sub(lambda m: f"&lt;{m.group(1)}{m.group(2)}", text)


def numbered_responses(texts: Sequence[str]) -> str:
    """``<response id="1">...</response>`` blocks, 1-based, contents escaped."""
    return "\n\n".join(
        f'<response id="{i}">\n{escape(t.strip())}\n</response>' for i, t in enumerate(texts, 1)
    )


def question_block(question: str, tag: str = "problem") -> str:
    return f"\n<{tag}>\n{escape(question.strip())}\n</{tag}>\n"
