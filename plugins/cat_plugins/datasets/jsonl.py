"""Any JSONL file, with a mapping from its fields to a prompt."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from cat_framework import Criterion, Prompt
from cat_framework.answers import extract_answer
from cat_plugins.datasets.common import DatasetFileError, FileDataset, FileDatasetParams


class JsonlParams(FileDatasetParams):
    path: str = Field(  # type: ignore[assignment]
        description="The JSONL file (one object per line); relative paths are tried against the "
        "working directory, then the data folder."
    )
    task: Literal["math", "freeform"] = Field(
        "math",
        description="math: final answers are checked programmatically (and the boxed-answer "
        "instruction is appended by default); freeform: open-ended answers graded by rubrics.",
    )
    question_field: str = Field("question", description="Field holding the question text.")
    messages_field: str | None = Field(
        None,
        description="Field holding a whole conversation (a list of {role, content}); when set it "
        "is used instead of question_field.",
    )
    answer_field: str | None = Field(
        None, description="Field holding the gold answer (evaluation only); none by default."
    )
    extract_gold: bool = Field(
        False,
        description="Take the last \\boxed{} or '#### n' of answer_field as the gold answer "
        "(for worked solutions); a value with neither is kept verbatim.",
    )
    rubric_field: str | None = Field(
        None,
        description="Field holding a rubric (evaluation only): a list of strings (1 point each) "
        "or of {criterion|text, points} objects.",
    )
    id_field: str | None = Field(
        None, description="Field holding a unique id; default '<file stem>/<line index>'."
    )


def _criterion(item: Any) -> Criterion:
    if isinstance(item, str):
        return Criterion(item)
    if isinstance(item, dict) and ("criterion" in item or "text" in item):
        return Criterion(str(item.get("criterion", item.get("text"))), float(item.get("points", 1)))
    raise ValueError(f"rubric items must be strings or {{criterion, points}} objects, got {item!r}")


class JsonlDataset(FileDataset):
    """Prompts from any JSONL file; field names, task and instruction are parameters."""

    name = "jsonl"
    Params: ClassVar[type[JsonlParams]] = JsonlParams

    params: JsonlParams

    def load(self) -> list[Prompt]:
        p = self.params
        path, records = self.read_records()
        prompts = []
        for i, r in enumerate(records):
            try:
                if p.messages_field:
                    messages = self.messages_for(self.require_conversation(r, p.messages_field, i))
                else:
                    messages = self.question_messages(self.require_text(r, p.question_field, i))
                gold = None
                if p.answer_field and r.get(p.answer_field) is not None:
                    raw = str(r[p.answer_field])
                    extracted = extract_answer(raw, fallback="none") if p.extract_gold else None
                    gold = extracted if extracted is not None else raw.strip()
                rubric = None
                if p.rubric_field and r.get(p.rubric_field) is not None:
                    rubric = [_criterion(c) for c in r[p.rubric_field]]
                prompt_id = str(self.require(r, p.id_field, i)) if p.id_field else None
                prompts.append(
                    Prompt(
                        id=prompt_id or f"{path.stem}/{i}",
                        messages=messages,
                        gold_answer=gold,
                        rubric=rubric,
                        meta=self.base_meta(i),
                    )
                )
            except (ValueError, TypeError, KeyError) as e:
                raise DatasetFileError(f"{self.where(i)}: {e}") from e
        return self.finish(prompts)
