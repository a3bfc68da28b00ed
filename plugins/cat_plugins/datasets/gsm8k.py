"""GSM8K grade-school word problems."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from cat_framework import Prompt
from cat_framework.answers import extract_answer
from cat_plugins.datasets.common import FileDataset, FileDatasetParams


class Gsm8kParams(FileDatasetParams):
    split: Literal["test", "train"] = Field(
        "test",
        description="Which file to read by default: gsm8k/test.jsonl (1,319 problems, shipped in "
        "the package) or gsm8k/train.jsonl (7,473, downloaded and cached on first use).",
    )


class Gsm8kDataset(FileDataset):
    """GSM8K problems; the gold answer is the number after ``####`` (commas removed).

    Reads ``gsm8k/{split}.jsonl`` (fields ``question``, ``answer``): the test split ships in the
    package, the train split is fetched from openai/grade-school-math and checked by sha256. The
    worked solution itself is never put on the prompt.
    """

    name = "gsm8k"
    task = "math"
    Params: ClassVar[type[Gsm8kParams]] = Gsm8kParams

    params: Gsm8kParams

    @property
    def default_file(self) -> str:  # type: ignore[override]
        return f"gsm8k/{self.params.split}.jsonl"

    def load(self) -> list[Prompt]:
        path, records = self.read_records()
        prompts = []
        for i, r in enumerate(records):
            question = self.require_text(r, "question", i)
            solution = r.get("answer")
            solution = None if solution is None else str(solution)
            prompts.append(
                Prompt(
                    id=f"gsm8k/{path.stem}/{i}",
                    messages=self.question_messages(question),
                    gold_answer=extract_answer(solution, fallback="none") if solution else None,
                    meta=self.base_meta(i),
                )
            )
        return self.finish(prompts)
