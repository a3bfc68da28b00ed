"""What the built-in datasets share: locating the file, reading JSONL, prompts, shuffle/limit.

Defaults live under :func:`cat_framework.paths.data_dir` (``$CAT_DATA_DIR``, else ``./data`` or
``../shared/data``); every dataset takes a ``path`` to read another copy.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from cat_framework import ComponentParams, ConfigError, Dataset, Prompt
from cat_framework.paths import DATA_DIR_ENV, data_dir

#: appended to every math question unless ``instruction`` says otherwise (Qwen2.5-Math's wording)
DEFAULT_MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


class DatasetFileError(ConfigError):
    """A dataset's file is missing or malformed; the message names the file and the fix."""


class FileDatasetParams(ComponentParams):
    """Parameters every built-in dataset accepts."""

    path: str | None = Field(
        None,
        description="JSONL file to read. Default: the dataset's file under the data folder "
        "($CAT_DATA_DIR, else ./data or ../shared/data). A relative path is tried against the "
        "working directory first, then the data folder.",
    )
    limit: int | None = Field(
        None, ge=1, description="Keep at most this many prompts (applied after split and shuffle)."
    )
    shuffle: bool = Field(
        False, description="Shuffle the prompts with `seed` before `limit` (file order otherwise)."
    )
    seed: int = Field(0, description="Seed of the shuffle.")
    system_prompt: str | None = Field(
        None, description="A system message put before every conversation; none by default."
    )
    instruction: str | None = Field(
        None,
        description="Text appended to each question (after a newline). Default (null): the "
        "task's default, for math tasks 'Please reason step by step, and put your final answer "
        "within \\boxed{}.', for freeform none; an empty string disables it.",
    )


class FileDataset(Dataset):
    """Base of the JSONL datasets: subclasses set ``default_file`` and build prompts."""

    Params: ClassVar[type[FileDatasetParams]] = FileDatasetParams
    #: the file's path relative to the data folder
    default_file: ClassVar[str] = ""

    params: FileDatasetParams

    def resolve_path(self) -> Path:
        """The file to read; :class:`DatasetFileError` naming every place tried if none exists."""
        given = self.params.path
        if given is None:
            candidates = [data_dir() / self.default_file]
        else:
            p = Path(given).expanduser()
            candidates = [p] if p.is_absolute() else [Path.cwd() / p, data_dir() / p]
        for candidate in candidates:
            if candidate.is_file():
                return candidate.resolve()
        tried = ", ".join(str(c.resolve()) for c in candidates)
        example = self.default_file or "my_prompts.jsonl"
        raise DatasetFileError(
            f"dataset {self.name!r}: file not found: {tried}. Point the dataset at your copy with "
            f"`path:` in the pipeline (e.g. `dataset: {self.name}` plus "
            f"`path: /path/to/{Path(example).name}`)"
            + (f", or set {DATA_DIR_ENV} to a folder containing {example}" if given is None else "")
            + "."
        )

    def read_records(self) -> tuple[Path, list[dict[str, Any]]]:
        """The resolved path and its JSON objects, one per non-blank line."""
        path = self.resolve_path()
        records = []
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DatasetFileError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
                if not isinstance(record, dict):
                    raise DatasetFileError(f"{path}:{lineno}: expected a JSON object per line")
                records.append(record)
        return path, records

    def instruction(self) -> str:
        """The configured instruction, or the task's default."""
        if self.params.instruction is not None:
            return self.params.instruction
        return DEFAULT_MATH_INSTRUCTION if self.task_kind == "math" else ""

    def messages_for(self, conversation: list[dict[str, str]]) -> list[dict[str, str]]:
        """``conversation`` with the system prompt before it and the instruction appended to
        its last user turn."""
        messages = [dict(m) for m in conversation]
        suffix = self.instruction()
        if suffix:
            for m in reversed(messages):
                if m["role"] == "user":
                    m["content"] = f"{m['content']}\n{suffix}"
                    break
        if self.params.system_prompt:
            messages.insert(0, {"role": "system", "content": self.params.system_prompt})
        return messages

    def question_messages(self, question: str) -> list[dict[str, str]]:
        return self.messages_for([{"role": "user", "content": question}])

    def base_meta(self, index: int) -> dict[str, Any]:
        """``meta`` every prompt carries: ``dataset``, ``task`` (aggregators such as synthesis
        pick their template by it) and the record's ``index`` in the file."""
        return {"dataset": self.name, "task": self.task_kind, "index": index}

    def finish(self, prompts: list[Prompt]) -> list[Prompt]:
        """Apply ``shuffle`` (seeded) and then ``limit``."""
        if self.params.shuffle:
            prompts = list(prompts)
            random.Random(self.params.seed).shuffle(prompts)
        if self.params.limit is not None:
            prompts = prompts[: self.params.limit]
        return prompts


def require(record: dict[str, Any], field: str, path: Path, index: int) -> Any:
    """``record[field]``, or a :class:`DatasetFileError` naming the record and the field."""
    if field not in record:
        raise DatasetFileError(
            f"{path}: record {index} has no field {field!r} (fields: {', '.join(sorted(record))})"
        )
    return record[field]


__all__ = [
    "DEFAULT_MATH_INSTRUCTION",
    "DatasetFileError",
    "FileDataset",
    "FileDatasetParams",
    "require",
]
