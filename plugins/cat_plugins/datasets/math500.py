"""MATH-500 (and any file in its schema, such as the 12k MATH prompt pool)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from cat_framework import Prompt
from cat_framework.answers import extract_boxed
from cat_plugins.datasets.common import FileDataset, FileDatasetParams

SPLIT_FILES = {"test": "math500/test.jsonl", "train": "math500/prm800k_train.jsonl"}


class Math500Params(FileDatasetParams):
    split: Literal["test", "train"] = Field(
        "test",
        description="test: the 500 MATH-500 problems (shipped in the package); train: PRM800K's "
        "12,000-problem MATH train split, disjoint from MATH-500 (downloaded and cached on first "
        "use), a prompt pool for training.",
    )


class Math500Dataset(FileDataset):
    """MATH-500 test problems, gold answers attached for evaluation only.

    Reads MATH-500 (shipped in the package; fields ``problem``, ``answer``, ``solution``,
    ``subject``, ``level``, ``unique_id``), or with ``split: train`` the 12k MATH prompt pool of
    PRM800K (same schema, fetched on first use); ``path:`` reads any file in this schema. A record
    without ``answer`` gets the last ``\\boxed{}`` of its ``solution``. Solutions are never put
    on the prompt (they are labels).
    """

    name = "math500"
    task = "math"
    Params: ClassVar[type[Math500Params]] = Math500Params

    params: Math500Params

    @property
    def default_file(self) -> str:  # type: ignore[override]
        return SPLIT_FILES[self.params.split]

    def load(self) -> list[Prompt]:
        path, records = self.read_records()
        prompts = []
        for i, r in enumerate(records):
            question = self.require_text(r, "problem", i)
            gold = r.get("answer")
            if gold is None and isinstance(r.get("solution"), str):
                gold = extract_boxed(r["solution"])
            prompts.append(
                Prompt(
                    id=str(r.get("unique_id") or f"{path.stem}/{i}"),
                    messages=self.question_messages(question),
                    gold_answer=None if gold is None else str(gold),
                    meta={
                        **self.base_meta(i),
                        "subject": r.get("subject"),
                        "level": r.get("level"),
                    },
                )
            )
        return self.finish(prompts)
