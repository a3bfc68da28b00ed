"""What a run directory is and what may happen to one, defined once for ``report``,
``run --resume`` and fresh runs: which files a run owns, when a fresh run may use a directory,
which config changes a resume accepts, and how secrets are kept out of what a run writes."""

from __future__ import annotations

import datetime as _dt
import os
import re
import reprlib
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cat_framework.bounded import loads_json, read_capped
from cat_framework.confine import MAX_NAME_BYTES, refuse_links
from cat_framework.errors import CatError
from cat_framework.scrub import REDACTED, mask_url

#: every run writes ``config.yaml`` first, then at least one of these
RUN_OUTPUTS: tuple[str, ...] = ("log.jsonl", "records.jsonl", "metrics.json", "metrics.jsonl")


def is_run_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a run: ``config.yaml`` plus at least one of :data:`RUN_OUTPUTS`.

    A directory with only a config is a run that never started; one without a config is not a
    run at all (a typo'd path, a parent ``runs/`` folder, a checkpoint folder).
    """
    root = Path(path)
    if not (root / "config.yaml").is_file():
        return False
    return any((root / name).is_file() for name in RUN_OUTPUTS)


#: the file a run writes when it creates its directory: what makes a folder a run's own, and so
#: one ``--overwrite`` may empty (a ``config.yaml`` alone can be anyone's)
MARKER = "run.json"
MARKER_FORMAT = "cat-framework run"


def new_marker(version: str) -> dict[str, str]:
    """The content of a new run's :data:`MARKER`."""
    return {"format": MARKER_FORMAT, "version": version, "created": _dt.datetime.now().isoformat()}


def holds_run(path: str | os.PathLike[str]) -> bool:
    """Whether a run wrote ``path``, so that ``--overwrite`` may remove what a run writes there:
    it has a :data:`MARKER` of the framework's format or, written by a version before markers,
    a ``config.yaml`` and a ``log.jsonl`` that starts with the run's ``run start`` line."""
    root = Path(path)
    try:
        marker = loads_json(read_capped(root / MARKER, 2**16))
        if isinstance(marker, dict) and marker.get("format") == MARKER_FORMAT:
            return True
    except (OSError, ValueError):
        pass
    return (root / "config.yaml").is_file() and _first_event(root / "log.jsonl") == "run start"


def _first_event(log: Path) -> Any:
    """The ``event`` of the first line of a ``log.jsonl`` (None if it has none)."""
    if not log.is_file():  # a FIFO or device would block or never end
        return None
    try:
        with log.open("rb") as f:
            row = loads_json(f.readline(2**16))
    except (OSError, ValueError):
        return None
    return row.get("event") if isinstance(row, dict) else None


#: everything a run writes directly under its directory (``--overwrite`` removes these only)
RUN_FILES: tuple[str, ...] = (
    MARKER,
    "config.yaml",
    "log.jsonl",
    "records.jsonl",
    "metrics.json",
    "metrics.jsonl",
    "status.json",
    "report.html",
    "data.json",
)
RUN_FOLDERS: tuple[str, ...] = ("checkpoints", "eval", "final", "tensorboard")

#: resolved-config keys a resume may change: they extend or re-present a run, never alter what
#: it computes (``trainer.steps`` extends training; the rest is bookkeeping)
RESUME_SAFE: tuple[str, ...] = (
    "name",
    "description",
    "requires",
    "threads",  # speed only (like OMP_NUM_THREADS, which is not recorded at all)
    "output",
    "trainer.steps",
    "trainer.save_every",
    "trainer.keep_checkpoints",
    "trainer.nonfinite_stop_after",  # only how many skipped updates in a row end a run
    "eval.bootstrap",
    "eval.confidence",
    "data.disjoint",  # only refuses a run, never changes one
)
#: extra keys safe to change when resuming ``mode: evaluate`` (seeds depend on prompt ids only)
RESUME_SAFE_EVALUATE: tuple[str, ...] = ("eval.limit", "eval.batch_size")

#: key names whose text values are secrets (``output.secret_keys`` adds a pipeline's own);
#: ``token`` only as a word of the name: ``hf_token``, ``authToken``, not ``max_new_tokens``
SECRET_KEYS = re.compile(
    r"(api[_-]?key|secret|password|passwd|authorization|credential|cookie"
    r"|(private|access)[_-]?key|(^|[_-])token($|[_-])|[a-z]token$)",
    re.I,
)


def secret_names(config: Any) -> frozenset[str]:
    """The extra key names a config marks as secret (``output.secret_keys``), lower-cased."""
    output = config.get("output") if isinstance(config, Mapping) else None
    names = output.get("secret_keys") if isinstance(output, Mapping) else None
    return frozenset(str(n).lower() for n in names) if isinstance(names, list) else frozenset()


def is_secret(key: Any, value: Any, names: frozenset[str] = frozenset()) -> bool:
    """Whether a config entry holds a secret: a key the pipeline marks (whatever its value), or
    a key whose name looks like one (a flag such as ``return_token_ids`` is no secret, nor is
    the variable ``api_key_env`` names, nor ``output.secret_keys``, which only names keys)."""
    if value in (None, "") or key == "secret_keys":
        return False
    if str(key).lower() in names:
        return True
    if str(key).lower().endswith("_env"):
        return False
    return bool(SECRET_KEYS.search(str(key))) and not isinstance(value, bool)


def redact(value: Any, names: frozenset[str] | None = None) -> Any:
    """A config with every secret masked, as a second line of defence behind pydantic
    ``SecretStr`` fields: the values of secret-looking keys (``api_key``, ``token``, ...) and of
    the keys ``output.secret_keys`` names (``names``, by default read from ``value``), and the
    credentials of every URL (``http://user:PASS@host``). A config is written to
    ``config.yaml``, shown in the report and sent to observers (TensorBoard), never with a key
    in it."""
    if names is None:
        names = secret_names(value)
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if is_secret(k, v, names) else redact(v, names)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v, names) for v in value]
    return mask_url(value) if isinstance(value, str) else value


def secret_values(value: Any, names: frozenset[str] | None = None) -> list[str]:
    """The text values :func:`redact` masks (to :func:`cat_framework.scrub.register_secret`
    them, so that no message shows them either)."""
    if names is None:
        names = secret_names(value)
    found: list[str] = []
    if isinstance(value, Mapping):
        for k, v in value.items():
            if is_secret(k, v, names):  # every text in it, not only a text itself
                found += [x for x in flatten(v).values() if isinstance(x, str)]
            else:
                found += secret_values(v, names)
    elif isinstance(value, list):
        for v in value:
            found += secret_values(v, names)
    return found


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are leaves)."""
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Keys whose value differs between two resolved configs: ``key -> (old, new)``."""
    a, b = flatten(old), flatten(new)
    missing = object()
    return {
        k: (a.get(k), b.get(k))
        for k in sorted(set(a) | set(b))
        if a.get(k, missing) != b.get(k, missing)
    }


def unsafe_changes(changes: Mapping[str, Any], mode: str) -> list[str]:
    safe = RESUME_SAFE + (RESUME_SAFE_EVALUATE if mode == "evaluate" else ())
    return [k for k in changes if not any(k == s or k.startswith(s + ".") for s in safe)]


def check_fresh(path: Path, overwrite: bool) -> None:
    """A fresh run never deletes what it did not write: an empty or new directory is used; a
    run's directory only with ``overwrite`` (its run files are removed, nothing else); any other
    non-empty directory is refused."""
    check_name_lengths(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise CatError(f"run directory {path} exists and is not a directory: pick another name")
    if not any(path.iterdir()):
        return
    if not holds_run(path):
        config = "; a config.yaml alone is not one" if (path / "config.yaml").exists() else ""
        raise CatError(
            f"{path} is not empty and holds no run (no {MARKER}, the file every run writes "
            f"first{config}): a run never writes into (or deletes from) a folder it did not "
            "create. Pick another output.run_name or --run-dir."
        )
    if not overwrite:
        raise CatError(
            f"{path} already holds a run. Continue it with `--resume {path}`, pick another "
            "output.run_name (or --run-dir), or replace it with --overwrite."
        )
    check_run_links(path)  # before deleting anything: a link's target is not the run's
    for name in RUN_FILES:
        (path / name).unlink(missing_ok=True)
    for name in RUN_FOLDERS:
        shutil.rmtree(path / name, ignore_errors=True)


def check_run_links(path: Path) -> None:
    """Refuse a run directory in which anything the run writes, appends to or deletes is a
    symbolic link (:mod:`cat_framework.confine`), or a FIFO, device or socket where the run
    keeps a file (reading or appending to one would block or never end)."""
    refuse_links(path, RUN_FILES + RUN_FOLDERS)
    for name in RUN_FILES:
        target = path / name
        if target.exists() and not target.is_file():
            raise CatError(
                f"run directory {path}: {name} is not a regular file (a folder, FIFO, device or "
                "socket): the run reads and appends to it. Move it away, or pick another "
                "run directory"
            )


def check_name_lengths(path: Path) -> None:
    """A folder name longer than a filesystem accepts fails with a precise message, not with
    the operating system's ``File name too long`` from deep inside a run."""
    for part in path.parts:
        size = len(os.fsencode(part))
        if size > MAX_NAME_BYTES:
            raise CatError(
                f"run directory: the folder name {part[:40]}... is {size} bytes long, and a "
                f"folder name can have at most {MAX_NAME_BYTES}. Pick a shorter output.run_name "
                "or --run-dir."
            )


def read_run_config(path: Path) -> dict[str, Any]:
    """The resolved config a run was started with (for ``--resume``)."""
    if not path.is_dir():
        raise CatError(f"--resume {path}: no such run directory")
    if not is_run_dir(path):
        raise CatError(
            f"--resume {path}: not a run directory (a run has config.yaml and log.jsonl); "
            "pass the directory of the run to continue"
        )
    try:
        return parse_run_config(path / "config.yaml")
    except CatError as exc:
        raise CatError(f"--resume {path}: {exc}") from None


def parse_run_config(file: Path) -> dict[str, Any]:
    """A run's ``config.yaml``, read under a pipeline's bounds (size, nesting, values, aliases:
    :mod:`cat_framework.pipeline.source`): an alias bomb appended to it is refused in a line
    instead of being expanded into every message that shows the config. One :class:`CatError`
    naming the file, line and fault otherwise."""
    from cat_framework.pipeline.issues import PipelineValidationError
    from cat_framework.pipeline.source import parse_source

    try:
        return dict(parse_source(file).data)
    except PipelineValidationError as exc:
        first, more = exc.issues[0], len(exc.issues) - 1
        also = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise CatError(
            f"{str(first).rstrip('.')}{also}. It is not the config.yaml this run wrote (damaged "
            "or edited): restore it from a copy, or start a new run"
        ) from None


def _brief(value: Any) -> str:
    """``repr(value)`` cut to a line: a message names a value, it does not dump it."""
    short = reprlib.Repr()
    short.maxlevel, short.maxstring, short.maxother = 3, 60, 60
    short.maxlist = short.maxtuple = short.maxdict = short.maxset = 6
    return short.repr(value)


def check_resume(
    path: Path, config: Mapping[str, Any], default_of: Callable[[str], Any] | None = None
) -> dict[str, tuple[Any, Any]]:
    """Refuse to resume with a pipeline that would change the run's results; return the safe
    changes (the caller records them and rewrites ``config.yaml``). A key the run's
    ``config.yaml`` lacks (written by a version without it) whose value is ``default_of(key)``
    is no change: the run behaved as that default."""
    # both masked alike: a key masked only since (a newer rule, a name added to or dropped
    # from output.secret_keys) is no change
    old = read_run_config(path)
    names = secret_names(config) | secret_names(old)
    old, config = redact(old, names), redact(config, names)
    # a value the run's config.yaml holds masked was never recorded: it cannot have changed
    changes = {k: v for k, v in config_changes(old, config).items() if v[0] != REDACTED}
    if default_of is not None:
        written = flatten(old)
        changes = {k: v for k, v in changes.items() if k in written or v[1] != default_of(k)}
    unsafe = unsafe_changes(changes, str(config.get("mode")))
    if unsafe:
        shown = "; ".join(
            f"{k[:80]}: {_brief(changes[k][0])} -> {_brief(changes[k][1])}" for k in unsafe[:8]
        )
        more = f" (and {len(unsafe) - 8} more)" if len(unsafe) > 8 else ""
        raise CatError(
            f"--resume {path}: the pipeline differs from the run's config.yaml in keys that "
            f"change results: {shown}{more}. Resume with the run's own settings, or start a "
            f"new run. Safe to change on resume: {', '.join(RESUME_SAFE)}."
        )
    return changes


__all__ = [
    "MARKER",
    "RESUME_SAFE",
    "RUN_FILES",
    "RUN_FOLDERS",
    "RUN_OUTPUTS",
    "check_fresh",
    "check_name_lengths",
    "check_resume",
    "check_run_links",
    "config_changes",
    "holds_run",
    "is_run_dir",
    "new_marker",
    "parse_run_config",
    "read_run_config",
    "redact",
    "secret_names",
    "secret_values",
]
