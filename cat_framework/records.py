"""The run record: one line of ``records.jsonl``, the same typed schema for every mode.

``evaluate``, a GRPO step (``train``) and CaT-SFT's reference pass (``sft``) all write
:class:`RunRecord` lines; the report and ``--resume`` read them back through
:meth:`RunRecord.from_dict`, so a key is named once, here. A record is one prompt's audit trail:
its rollouts (with the reward, advantage and whether they were trained on), the reference(s)
the teacher built from them, and per-prompt diagnostics. Gold data (``gold_answer``,
``correct``, a reference's ``score``) is audit only: the teacher never reads it.

``schema`` is versioned: a reader refuses a record from a newer schema with a clear message
instead of misreading it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from cat_framework.bounded import TooDeepError, loads_json
from cat_framework.errors import CatError
from cat_framework.types import Completion, Reference

#: version of the record layout written by this release
RECORD_SCHEMA = 1

RecordMode = Literal["evaluate", "train", "sft"]


@dataclass
class RolloutRecord:
    """One rollout. ``reward is None`` with ``trained`` means *unscorable* (advantage 0);
    rollouts sampled only to build the reference (``rollouts.reference_n``) have
    ``trained=False`` and no reward."""

    text: str
    finish_reason: str = "stop"
    tokens: int = 0
    trained: bool = True
    reward: float | None = None
    advantage: float | None = None
    answer: str | None = None
    correct: bool | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, c: Completion, **kw: Any) -> RolloutRecord:
        return cls(text=c.text, finish_reason=c.finish_reason, tokens=len(c.token_ids), **kw)


@dataclass
class ReferenceRecord:
    """One reference (``Reference`` fields), with its grade against gold when audited."""

    text: str
    method: str
    answer: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    score: float | None = None
    correct: bool | None = None
    grading: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, ref: Reference, **kw: Any) -> ReferenceRecord:
        d = ref.to_dict()
        return cls(
            text=d["text"], method=d["method"], answer=d["answer"], details=d["details"], **kw
        )

    def to_reference(self) -> Reference:
        return Reference(self.text, self.method, self.answer, self.details)


@dataclass
class RunRecord:
    """One prompt of one step (``step`` 0: evaluation, or CaT-SFT's reference pass).

    ``references`` maps a label to a reference: every aggregator in ``evaluate``, the teacher's
    single reference in ``train``/``sft`` (``primary`` names the one the rewards came from)."""

    mode: RecordMode
    step: int
    prompt_id: str
    messages: list[dict[str, str]]
    rollouts: list[RolloutRecord]
    references: dict[str, ReferenceRecord]
    primary: str | None = None
    gold_answer: str | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)
    schema: int = RECORD_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def reference(self) -> ReferenceRecord | None:
        """The primary reference (the one rewards were derived from), if any."""
        if self.primary is not None:
            return self.references.get(self.primary)
        return next(iter(self.references.values()), None)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "record") -> RunRecord:
        """Parse a record; ``where`` (e.g. ``records.jsonl:17``) prefixes every error."""
        if not isinstance(data, Mapping):
            raise CatError(f"{where}: a record must be a JSON object, got {type(data).__name__}")
        schema = check_schema(data, where)
        try:
            return cls(
                mode=data["mode"],
                step=int(data["step"]),
                prompt_id=str(data["prompt_id"]),
                messages=[dict(m) for m in data.get("messages") or []],
                rollouts=[RolloutRecord(**r) for r in data.get("rollouts") or []],
                references={
                    str(k): ReferenceRecord(**v) for k, v in (data.get("references") or {}).items()
                },
                primary=data.get("primary"),
                gold_answer=data.get("gold_answer"),
                diagnostics=dict(data.get("diagnostics") or {}),
                schema=schema,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CatError(f"{where}: not a valid run record ({exc!r})") from None


def check_schema(data: Mapping[str, Any], where: str = "") -> int:
    """The record schema version of ``data``; a :class:`CatError` (prefixed with ``where``) when
    it has none or one newer than this release reads: such a line would be misread, and a
    resumed run appending to it would mix two layouts in one file."""
    schema = data.get("schema")
    at = f"{where}: " if where else ""
    if type(schema) is not int:
        raise CatError(
            f"{at}no record schema version: written by an older cat-framework? "
            "Start a fresh run (the old records are not read)."
        )
    if schema > RECORD_SCHEMA:
        raise CatError(
            f"{at}record schema {schema} is newer than this cat-framework's "
            f"({RECORD_SCHEMA}): upgrade cat-framework to read it"
        )
    return schema


def trained_rewards(rec: RunRecord) -> list[float | None]:
    """The rewards of the rollouts that were trained on (``None`` = unscorable)."""
    return [r.reward for r in rec.rollouts if r.trained]


def parse_records(rows: Sequence[Mapping[str, Any]], source: str) -> list[RunRecord]:
    """Parse rows read from ``source`` (a file name for messages)."""
    return [RunRecord.from_dict(r, f"{source}:{i + 1}") for i, r in enumerate(rows)]


def parse_record_line(line: str | bytes, where: str) -> RunRecord:
    """One line of ``records.jsonl``, for readers that pick single lines (the report samples a
    few lines of a file that can be gigabytes); a :class:`CatError` prefixed with ``where``
    (``records.jsonl:17``) says what is wrong: not JSON, not an object, not a run record."""
    try:
        row = loads_json(line)
    except ValueError as exc:  # not JSON, not UTF-8, or nested deeper than a run writes
        raise CatError(f"{where}: not a valid JSON record ({exc})") from None
    return RunRecord.from_dict(row, where)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a ``.jsonl`` run file. A *last* line cut by a crash (kill -9 while
    appending) is dropped, as expected; a malformed line anywhere else means the file was
    damaged or edited, and is an error naming the file and line."""
    if not path.exists():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise CatError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    rows: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = loads_json(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            if i == len(lines) - 1 and not isinstance(exc, TooDeepError):
                break  # cut by a crash mid-write: that item is redone
            raise CatError(
                f"{path}:{i + 1}: not a valid JSON record ({exc}); the file was damaged or "
                "edited: fix or delete that line, or start a fresh run"
            ) from None
        rows.append(row)
    return rows


def read_records(path: Path) -> list[RunRecord]:
    """The run records of ``path`` (see :func:`read_jsonl` for damaged lines)."""
    rows = read_jsonl(path)
    return [RunRecord.from_dict(r, f"{path}:{i + 1}") for i, r in enumerate(rows)]


__all__ = [
    "RECORD_SCHEMA",
    "ReferenceRecord",
    "RolloutRecord",
    "RunRecord",
    "check_schema",
    "parse_record_line",
    "parse_records",
    "read_jsonl",
    "read_records",
    "trained_rewards",
]
