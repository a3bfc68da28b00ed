"""What the built-in datasets share: locating the file, reading JSONL, prompts, shuffle/limit.

A dataset's default file is found, in order: in ``$CAT_DATA_DIR`` (your own copies win), in the
package (MATH-500 and GSM8K test ship in it), in the cache (downloaded on first use, see
:mod:`cat_plugins.datasets.fetch`). Every dataset takes a ``path`` to read another copy.

Bad data is refused with ``file:line: record i`` and the field, never silently coerced: a null
question would otherwise become the literal text "None", an empty file a "completed" run scored
nan, and two prompts with one id would merge their metrics.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, ValidationInfo, field_validator

from cat_framework import ComponentParams, ConfigError, Dataset, Prompt
from cat_framework.paths import DATA_DIR_ENV, data_dir
from cat_plugins.datasets.fetch import REMOTE_FILES, ensure_file

#: appended to every math question unless ``instruction`` says otherwise (Qwen2.5-Math's wording)
DEFAULT_MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

#: the data files that ship inside the package (provenance and licences in its README.md)
PACKAGE_DATA = Path(__file__).resolve().parent / "data"


class DatasetFileError(ConfigError):
    """A dataset's file is missing or malformed; the message names the file and the fix."""


class FileDatasetParams(ComponentParams):
    """Parameters every built-in dataset accepts."""

    path: str | None = Field(
        None,
        description="JSONL file to read. Default: the dataset's own file ($CAT_DATA_DIR's copy "
        "if there is one, else the copy in the package or in the download cache). A relative "
        "path is tried against the working directory first, then $CAT_DATA_DIR.",
    )
    limit: int | None = Field(
        None,
        ge=1,
        le=10**9,
        description="Keep at most this many prompts (applied after split and shuffle).",
    )
    shuffle: bool = Field(
        False, description="Shuffle the prompts with `seed` before `limit` (file order otherwise)."
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of the shuffle.")
    system_prompt: str | None = Field(
        None, description="A system message put before every conversation; none by default."
    )
    instruction: str | None = Field(
        None,
        description="Text appended to each question (after a newline). Default (null): the "
        "task's default, for math tasks 'Please reason step by step, and put your final answer "
        "within \\boxed{}.', for freeform none; an empty string disables it.",
    )

    @field_validator("path")
    @classmethod
    def _path_exists(cls, v: str | None, info: ValidationInfo) -> str | None:
        # only under `validate` (context check_files): code may build params for files to come
        if v is not None and (info.context or {}).get("check_files"):
            candidates = candidate_paths(v)
            if not any(c.is_file() for c in candidates):
                folder = next((c for c in candidates if c.is_dir()), None)
                if folder is not None:
                    raise ValueError(f"{folder} is a folder; give the JSONL file inside it")
                tried = ", ".join(str(c.resolve()) for c in candidates)
                raise ValueError(f"dataset file not found (tried {tried})")
        return v


def candidate_paths(given: str) -> list[Path]:
    """Where a ``path:`` is looked for: as is if absolute, else the working directory, then
    ``$CAT_DATA_DIR`` when set."""
    p = Path(given).expanduser()
    if p.is_absolute():
        return [p]
    folder = data_dir()
    return [Path.cwd() / p] + ([folder / p] if folder is not None else [])


def package_file(name: str) -> Path | None:
    """The copy of ``name`` (e.g. ``gsm8k/test.jsonl``) shipped in the package, if any."""
    path = PACKAGE_DATA / name
    return path if name.endswith(".jsonl") and path.is_file() else None


class FileDataset(Dataset):
    """Base of the JSONL datasets: subclasses set ``default_file`` and build prompts."""

    Params: ClassVar[type[FileDatasetParams]] = FileDatasetParams
    #: the file's path relative to the data folder
    default_file: ClassVar[str] = ""

    params: FileDatasetParams

    def resolve_path(self) -> Path:
        """The file to read: ``path:``, else the default file from ``$CAT_DATA_DIR``, the
        package or the download cache (fetched now if need be); :class:`DatasetFileError`
        naming every place tried if none exists."""
        given = self.params.path
        if given is None:
            folder = data_dir()
            mine = folder / self.default_file if folder is not None else None
            if mine is not None and mine.is_file():
                return mine
            shipped = package_file(self.default_file)
            if shipped is not None:
                return shipped
            remote = REMOTE_FILES.get(self.default_file)
            if remote is not None:
                return ensure_file(remote, who=self.name)
            candidates = [mine] if mine is not None else []
        else:
            candidates = candidate_paths(given)
            for candidate in candidates:
                if candidate.is_file():
                    return candidate.resolve()
        tried = ", ".join(str(c.resolve()) for c in candidates) or f"{DATA_DIR_ENV} is not set"
        example = self.default_file or "my_prompts.jsonl"
        raise DatasetFileError(
            f"dataset {self.name!r}: file not found: {tried}. Point the dataset at your copy with "
            f"`path:` in the pipeline (e.g. `dataset: {self.name}` plus "
            f"`path: /path/to/{Path(example).name}`)"
            + (f", or set {DATA_DIR_ENV} to a folder containing {example}" if given is None else "")
            + "."
        )

    def read_records(self) -> tuple[Path, list[dict[str, Any]]]:
        """The resolved path and its JSON objects, one per non-blank line (UTF-8, an optional
        BOM); remembers each record's line for :meth:`where`. An empty file is an error."""
        path = self.resolve_path()
        records: list[dict[str, Any]] = []
        self._path, self._lines = path, []
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    raise DatasetFileError(
                        f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                        f"{e.start + 1}); save the file as UTF-8"
                    ) from None
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DatasetFileError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
                if not isinstance(record, dict):
                    raise DatasetFileError(f"{path}:{lineno}: expected a JSON object per line")
                records.append(record)
                self._lines.append(lineno)
        if not records:
            raise DatasetFileError(
                f"{path}: no records (the file is empty); a dataset needs one JSON object per line"
            )
        return path, records

    def where(self, index: int) -> str:
        """``file:line: record i`` of record ``index`` of the file last read (for messages)."""
        lines = getattr(self, "_lines", [])
        line = f":{lines[index]}" if index < len(lines) else ""
        return f"{getattr(self, '_path', self.name)}{line}: record {index}"

    def require(self, record: dict[str, Any], field: str, index: int) -> Any:
        """``record[field]``; a :class:`DatasetFileError` at the record's line if it is missing or
        null."""
        if field not in record:
            raise DatasetFileError(
                f"{self.where(index)} has no field {field!r} "
                f"(fields: {', '.join(sorted(record)) or 'none'})"
            )
        if record[field] is None:
            raise DatasetFileError(
                f"{self.where(index)}: field {field!r} is null; give a value or drop the record"
            )
        return record[field]

    def require_text(self, record: dict[str, Any], field: str, index: int) -> str:
        """A non-empty string field (a question, a problem)."""
        value = self.require(record, field, index)
        if not isinstance(value, str) or not value.strip():
            got = "an empty string" if isinstance(value, str) else type(value).__name__
            raise DatasetFileError(
                f"{self.where(index)}: field {field!r} must be non-empty text, got {got}"
            )
        return value

    def require_conversation(
        self, record: dict[str, Any], field: str, index: int
    ) -> list[dict[str, str]]:
        """A non-empty list of ``{role, content}`` messages with text content and a user turn."""
        value = self.require(record, field, index)
        ok = (
            isinstance(value, list)
            and value
            and all(
                isinstance(m, dict)
                and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str)
                for m in value
            )
        )
        if not ok or not any(m["role"] == "user" for m in value):
            raise DatasetFileError(
                f"{self.where(index)}: field {field!r} must be a list of "
                '{"role": ..., "content": "text"} messages with at least one user turn'
            )
        return value

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
        """Refuse duplicate ids and an empty result, then apply ``shuffle`` (seeded) and
        ``limit``."""
        first: dict[str, int] = {}
        for p in prompts:
            index = p.meta.get("index", 0)
            if p.id in first:
                raise DatasetFileError(
                    f"{self.where(index)}: prompt id {p.id!r} is used again (first by "
                    f"{self.where(first[p.id])}); ids must be unique, or the records and "
                    "metrics of the two prompts would be mixed up"
                )
            first[p.id] = index
        if not prompts:
            raise DatasetFileError(
                f"{getattr(self, '_path', self.name)}: no prompts left to use (check `split`)"
            )
        if self.params.shuffle:
            prompts = list(prompts)
            random.Random(self.params.seed).shuffle(prompts)
        if self.params.limit is not None:
            prompts = prompts[: self.params.limit]
        return prompts


def require(record: dict[str, Any], field: str, path: Path, index: int) -> Any:
    """``record[field]``, or a :class:`DatasetFileError` naming the record and the field (missing
    or null). Prefer :meth:`FileDataset.require`, which also names the line."""
    if record.get(field) is None:
        state = "is null" if field in record else "is missing"
        raise DatasetFileError(
            f"{path}: record {index}: field {field!r} {state} "
            f"(fields: {', '.join(sorted(record)) or 'none'})"
        )
    return record[field]


__all__ = [
    "DEFAULT_MATH_INSTRUCTION",
    "PACKAGE_DATA",
    "DatasetFileError",
    "FileDataset",
    "FileDatasetParams",
    "candidate_paths",
    "package_file",
    "require",
]
