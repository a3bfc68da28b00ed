"""Field mapping shared by the datasets that read the user's own data (``jsonl``, ``hf``).

A mapping says which field holds the question (or a whole conversation), the gold answer, the
rubric and the id, so any file or table can feed the framework without being rewritten.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field

from cat_framework import Criterion, Prompt
from cat_framework.answers import extract_answer
from cat_plugins.datasets.common import DatasetFileError, FileDataset, FileDatasetParams


class MappedParams(FileDatasetParams):
    """The task and the field mapping of a user's data set."""

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
        None, description="Field holding a unique id; default '<file stem>/<record index>'."
    )


def _criterion(item: Any) -> Criterion:
    if isinstance(item, str):
        return Criterion(item)
    if isinstance(item, dict) and ("criterion" in item or "text" in item):
        return Criterion(str(item.get("criterion", item.get("text"))), float(item.get("points", 1)))
    raise ValueError(f"rubric items must be strings or {{criterion, points}} objects, got {item!r}")


class MappedDataset(FileDataset):
    """Builds prompts from records through the :class:`MappedParams` field mapping."""

    Params: ClassVar[type[MappedParams]] = MappedParams

    params: MappedParams

    def mapped_fields(self) -> dict[str, str]:
        """``{param: field}`` of every field the mapping reads (for up-front column checks)."""
        p = self.params
        fields = {"messages_field": p.messages_field} if p.messages_field else {}
        if not p.messages_field:
            fields["question_field"] = p.question_field
        for key in ("answer_field", "rubric_field", "id_field"):
            if getattr(p, key):
                fields[key] = getattr(p, key)
        return fields

    def map_records(self, records: Iterable[Mapping[str, Any]], stem: str) -> list[Prompt]:
        """One prompt per record; ids default to ``<stem>/<index>``. A bad record is a
        :class:`DatasetFileError` naming it (see :meth:`FileDataset.where`)."""
        p = self.params
        prompts = []
        for i, r in enumerate(records):
            r = dict(r)
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
                        id=prompt_id or f"{stem}/{i}",
                        messages=messages,
                        gold_answer=gold,
                        rubric=rubric,
                        meta=self.base_meta(i),
                    )
                )
            except (ValueError, TypeError, KeyError) as e:
                raise DatasetFileError(f"{self.where(i)}: {e}") from e
        return prompts


__all__ = ["MappedDataset", "MappedParams"]
