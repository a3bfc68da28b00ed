"""Validation problems, collected (never raised one at a time) and reported together."""

from __future__ import annotations

from dataclasses import dataclass

from cat_framework.errors import ConfigError


@dataclass(frozen=True)
class Issue:
    """One problem: where (file, line, column, key path) and what."""

    file: str
    line: int | None
    column: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        key = f" {self.path}:" if self.path else ""
        return f"{where}:{key} {self.message}"


class PipelineValidationError(ConfigError):
    """All the problems of one pipeline file."""

    def __init__(self, file: str, issues: list[Issue]) -> None:
        self.file = file
        self.issues = sorted(issues, key=lambda i: (i.line is None, i.line or 0, i.column or 0))
        n = len(self.issues)
        header = f"{file}: {n} error{'s' if n != 1 else ''}"
        super().__init__("\n".join([header, *(f"  {i}" for i in self.issues)]))
