"""Any JSONL file, with a mapping from its fields to a prompt."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from cat_framework import Prompt
from cat_plugins.datasets.mapping import MappedDataset, MappedParams


class JsonlParams(MappedParams):
    path: str = Field(  # type: ignore[assignment]
        description="The JSONL file (one object per line); relative paths are tried against the "
        "working directory, then $CAT_DATA_DIR."
    )


class JsonlDataset(MappedDataset):
    """Prompts from any JSONL file; field names, task and instruction are parameters."""

    name = "jsonl"
    Params: ClassVar[type[JsonlParams]] = JsonlParams

    params: JsonlParams

    def load(self) -> list[Prompt]:
        path, records = self.read_records()
        return self.finish(self.map_records(records, path.stem))
