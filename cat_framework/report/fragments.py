"""The small HTML pieces every section of the report and the compare page uses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cat_framework.report.load import numeric
from cat_framework.report.samples import esc, fmt


def missing(text: str) -> str:
    """A section's note that its data is not there (said, never an empty section)."""
    return f'<p class="missing">{esc(text)}</p>'


def kv_table(items: Mapping[str, Any]) -> str:
    """Name | value rows; numbers right-aligned and rounded, anything else escaped."""
    rows = "".join(
        f'<tr><td>{esc(k)}</td><td class="num">'
        f"{fmt(numeric(v)) if numeric(v) is not None else esc(v)}</td></tr>"
        for k, v in items.items()
    )
    return f'<table class="kv">{rows}</table>'


__all__ = ["kv_table", "missing"]
