"""Read a run directory into plain data for the report, tolerating whatever is missing or odd.

Nothing here raises on a malformed run: unreadable files, cut JSON lines and unexpected shapes
become entries of :attr:`RunData.problems`, and absent files leave their field empty. Records are
read only as :class:`~cat_framework.records.RunRecord` (the engine's one schema): a line that is
not one is skipped, and the problems say which line and why. Large ``records.jsonl`` files
(training writes one line per prompt per step) are indexed by byte offset and only the sampled
lines are parsed.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from cat_framework.bounded import loads_json
from cat_framework.errors import CatError
from cat_framework.records import RunRecord, parse_record_line
from cat_framework.rundir import parse_run_config

#: the top-level ``"step": N`` of a JSON line (an escaped quote inside a string cannot match)
_STEP = re.compile(rb'(?<!\\)"step"\s*:\s*(-?\d+)')
#: evaluate runs hold one line per prompt: parse them all (for plots) up to this many
MAX_FULL_RECORDS = 5000
#: skipped record lines named one by one in the problems (the rest are only counted)
MAX_NAMED_BAD_RECORDS = 5


@dataclass
class LogSummary:
    """What ``log.jsonl`` says about the run: status, times, counts by level, notable events."""

    status: str | None = None
    started: str | None = None
    ended: str | None = None
    levels: dict[str, int] = field(default_factory=dict)
    notable: list[dict[str, Any]] = field(default_factory=list)  # warnings and errors
    error: str | None = None  # why the run failed (``error=`` of the ``run end`` event)


@dataclass
class RunData:
    """Everything the report shows, as read from one run directory."""

    run_dir: Path
    config: dict[str, Any] | None = None
    config_text: str | None = None
    eval_summary: dict[str, Any] | None = None  # metrics.json (mode: evaluate)
    metrics: list[dict[str, float]] = field(default_factory=list)  # metrics.jsonl, flattened
    records: list[RunRecord] = field(default_factory=list)  # the sampled records
    all_records: list[RunRecord] = field(default_factory=list)  # evaluate: every record
    n_records: int = 0
    record_steps: list[int] = field(default_factory=list)
    log: LogSummary | None = None
    files: list[tuple[str, int]] = field(default_factory=list)  # (relative path, bytes)
    problems: list[str] = field(default_factory=list)
    error: str | None = None  # why the run failed: status.json, else the log's ``run end``

    @property
    def mode(self) -> str:
        """``evaluate``, ``train``, ``sft`` (from the config), else guessed from the files."""
        mode = (self.config or {}).get("mode")
        if isinstance(mode, str):
            return mode
        if self.eval_summary is not None:
            return "evaluate"
        return "train" if self.metrics or self.record_steps else "unknown"

    @property
    def name(self) -> str:
        name = (self.config or {}).get("name")
        return name if isinstance(name, str) else self.run_dir.name


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}``; lists and scalars are kept as they are."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "/"))
        else:
            out[name] = value
    return out


def numeric(value: Any) -> float | None:
    """A finite float from a metric value (bools and numeric strings too), else None."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            f = float(value)
        except ValueError:
            return None
        return f if math.isfinite(f) else None
    return None


def _read_text(path: Path, problems: list[str]) -> str | None:
    if not path.is_file():
        return None
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        problems.append(f"{path.name}: cannot read ({exc})")
        return None


def iter_jsonl(path: Path, problems: list[str]) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSON-lines file; bad lines are counted in ``problems``."""
    bad = 0
    try:
        with path.open("rb") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    obj = loads_json(line)
                except ValueError:  # not JSON, not UTF-8, or nested deeper than a run writes
                    bad += 1
                    continue
                if isinstance(obj, dict):
                    yield obj
                else:
                    bad += 1
    except OSError as exc:
        problems.append(f"{path.name}: cannot read ({exc})")
    if bad:
        problems.append(f"{path.name}: {bad} line(s) skipped (not a JSON object)")


def load_metrics(path: Path, problems: list[str]) -> list[dict[str, float]]:
    """One flat ``{name: float}`` row per line of ``metrics.jsonl``, each with a ``step``."""
    rows = []
    for i, obj in enumerate(iter_jsonl(path, problems)):
        flat = {k: numeric(v) for k, v in flatten(obj).items()}
        row = {k: v for k, v in flat.items() if v is not None}
        row.setdefault("step", float(i + 1))
        rows.append(row)
    rows.sort(key=lambda r: r["step"])
    return rows


def load_log(path: Path, problems: list[str], max_notable: int = 50) -> LogSummary:
    """Status (the last ``run end`` event), first/last timestamps, counts, warnings and errors."""
    summary = LogSummary()
    levels: Counter[str] = Counter()
    for event in iter_jsonl(path, problems):
        level = str(event.get("level", "info")).lower()
        levels[level] += 1
        stamp = event.get("timestamp")
        if isinstance(stamp, str):
            summary.started = summary.started or stamp
            summary.ended = stamp
        if event.get("event") == "run end" and isinstance(event.get("status"), str):
            summary.status = event["status"]
            error = event.get("error")
            summary.error = str(error) if error not in (None, "") else None
        notable = level in ("warning", "error", "critical", "exception")
        if notable and len(summary.notable) < max_notable:
            summary.notable.append(event)
    summary.levels = dict(levels)
    return summary


def _pick_evenly(items: list[Any], k: int) -> list[Any]:
    """At most ``k`` items spread evenly, first and last included."""
    if k <= 0:
        return []
    if len(items) <= k:
        return list(items)
    if k == 1:
        return [items[0]]
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)]


class _Line(NamedTuple):
    """Where one non-empty line of ``records.jsonl`` is, and the step it claims."""

    offset: int
    lineno: int
    step: int | None


def _index_records(path: Path) -> list[_Line]:
    """Every non-empty line, with the step read without parsing JSON."""
    index = []
    offset = 0
    with path.open("rb") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                m = _STEP.search(line)
                index.append(_Line(offset, lineno, int(m.group(1)) if m else None))
            offset += len(line)
    return index


def _parse_at(path: Path, lines: list[_Line], problems: list[str]) -> list[RunRecord]:
    """The records at ``lines``; each one that is not a run record is skipped and named (file,
    line, what is wrong) in ``problems``, up to :data:`MAX_NAMED_BAD_RECORDS`."""
    out: list[RunRecord] = []
    bad: list[str] = []
    with path.open("rb") as f:
        for line in lines:
            f.seek(line.offset)
            try:
                out.append(parse_record_line(f.readline(), f"{path.name}:{line.lineno}"))
            except CatError as exc:
                bad.append(str(exc))
    if bad:
        problems.append(f"{path.name}: {len(bad)} line(s) skipped (not a valid run record)")
        problems.extend(bad[:MAX_NAMED_BAD_RECORDS])
        if len(bad) > MAX_NAMED_BAD_RECORDS:
            problems.append(
                f"{path.name}: and {len(bad) - MAX_NAMED_BAD_RECORDS} more skipped line(s)"
            )
    return out


def load_records(
    run: RunData, path: Path, max_prompts: int, max_steps: int
) -> tuple[list[RunRecord], list[RunRecord]]:
    """``(sample, all records or [])``: steps spread evenly, a few prompts from each."""
    try:
        index = _index_records(path)
    except OSError as exc:
        run.problems.append(f"{path.name}: cannot read ({exc})")
        return [], []
    run.n_records = len(index)
    steps = sorted({line.step for line in index if line.step is not None})
    run.record_steps = steps
    if steps and (run.config or {}).get("mode") != "evaluate":  # evaluate records are step 0
        chosen = _pick_evenly(steps, max_steps)
        per_step = max(1, math.ceil(max_prompts / len(chosen)))
        stepless = [line.lineno for line in index if line.step is None]
        if stepless:  # never sampled: a run record always has its step
            run.problems.append(
                f"{path.name}: {len(stepless)} line(s) skipped (no step, so not a run record; "
                f"first: line {stepless[0]})"
            )
        by_step: dict[int, list[_Line]] = {s: [] for s in chosen}
        for line in index:
            if line.step in by_step and len(by_step[line.step]) < per_step:
                by_step[line.step].append(line)
        return _parse_at(path, [line for s in chosen for line in by_step[s]], run.problems), []
    if len(index) <= MAX_FULL_RECORDS:
        every = _parse_at(path, index, run.problems)
        return _pick_evenly(every, max_prompts), every
    return _parse_at(path, _pick_evenly(index, max_prompts), run.problems), []


def _list_files(run_dir: Path, limit: int = 200) -> list[tuple[str, int]]:
    files = []
    for p in sorted(run_dir.rglob("*")):
        if p.is_file() and p.name != "report.html" and not p.name.startswith(".report"):
            try:
                files.append((p.relative_to(run_dir).as_posix(), p.stat().st_size))
            except OSError:
                continue
            if len(files) >= limit:
                break
    return files


def load_run(run_dir: str | Path, *, max_prompts: int = 24, max_steps: int = 4) -> RunData:
    """Read ``run_dir``; a missing directory raises ``FileNotFoundError``, nothing else does."""
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no such run directory: {root}")
    run = RunData(run_dir=root)
    run.config_text = _read_text(root / "config.yaml", run.problems)
    if run.config_text is not None:
        try:  # under a pipeline's bounds: deep nesting and alias bombs are refused
            run.config = parse_run_config(root / "config.yaml")
        except CatError as exc:
            run.problems.append(str(exc))
    summary_text = _read_text(root / "metrics.json", run.problems)
    if summary_text is not None:
        try:
            loaded = loads_json(summary_text)
            run.eval_summary = loaded if isinstance(loaded, dict) else None
        except ValueError:
            run.problems.append("metrics.json: not valid JSON")
    if (root / "metrics.jsonl").is_file():
        run.metrics = load_metrics(root / "metrics.jsonl", run.problems)
    if (root / "records.jsonl").is_file():
        run.records, run.all_records = load_records(
            run, root / "records.jsonl", max_prompts, max_steps
        )
    if (root / "log.jsonl").is_file():
        run.log = load_log(root / "log.jsonl", run.problems)
    _apply_status_file(run, root / "status.json")
    run.files = _list_files(root)
    return run


def _apply_status_file(run: RunData, path: Path) -> None:
    """``status.json`` (``{"status": ..., "error": ...}``), written at the end of every run.

    It outlives a cut ``log.jsonl`` and holds the failure message in one place, so it wins
    over the log's ``run end`` event; the log is the fallback for runs that predate it.
    """
    text = _read_text(path, run.problems)
    data: Any = None
    if text is not None:
        try:
            data = loads_json(text)
        except ValueError:
            run.problems.append("status.json: not valid JSON")
        if data is not None and not isinstance(data, dict):
            run.problems.append("status.json: not a JSON object")
    data = data if isinstance(data, dict) else {}
    status, error = data.get("status"), data.get("error")
    if isinstance(status, str) and status:
        run.log = run.log or LogSummary()
        run.log.status = status
    if error not in (None, ""):
        run.error = str(error)
    elif run.log is not None and run.log.error:
        run.error = run.log.error
