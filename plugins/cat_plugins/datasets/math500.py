"""MATH-500 (and any file in its schema, such as the 12k MATH prompt pool)."""

from __future__ import annotations

from typing import ClassVar

from cat_framework import Prompt
from cat_framework.answers import extract_boxed
from cat_plugins.datasets.common import FileDataset


class Math500Dataset(FileDataset):
    """MATH-500 test problems, gold answers attached for evaluation only.

    Reads ``math500/test.jsonl`` under the data folder by default (fields ``problem``,
    ``answer``, ``solution``, ``subject``, ``level``, ``unique_id``). The 12k MATH prompt pool has
    the same schema: ``path: math500/math_train12k_reconstructed.jsonl``. A record without
    ``answer`` gets the last ``\\boxed{}`` of its ``solution``. Solutions are never put on the
    prompt (they are labels).
    """

    name = "math500"
    task = "math"
    default_file: ClassVar[str] = "math500/test.jsonl"

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
