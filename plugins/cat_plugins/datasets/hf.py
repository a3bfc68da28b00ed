"""``hf``: the user's own prompts through ``datasets.load_dataset``.

``path`` is a Hugging Face hub id or a local file/folder (parquet, json, jsonl, csv, arrow); the
field mapping of :class:`~cat_plugins.datasets.mapping.MappedParams` turns rows into prompts. The
mapping is checked against the table's columns before any row is read, so a typo is one message
naming the missing field and the columns there are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, ValidationInfo, field_validator

from cat_framework import Prompt
from cat_plugins.datasets.common import DatasetFileError, candidate_paths
from cat_plugins.datasets.mapping import MappedDataset, MappedParams

#: local file suffix -> the ``datasets`` builder that reads it
BUILDERS = {
    ".parquet": "parquet",
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".arrow": "arrow",
}


def local_path(given: str) -> Path | None:
    """The local file or folder ``given`` names (working directory, then $CAT_DATA_DIR), or
    None when it names none (then it is a hub id)."""
    return next((c.resolve() for c in candidate_paths(given) if c.exists()), None)


def looks_local(given: str) -> bool:
    """True for what can only be a local path (a hub id is ``name`` or ``owner/name``)."""
    return given.startswith(("/", ".", "~")) or Path(given).suffix.lower() in BUILDERS


class HfParams(MappedParams):
    path: str = Field(  # type: ignore[assignment]
        description="A Hugging Face hub id (owner/name) or a local file or folder of parquet, "
        "json, jsonl, csv or arrow files; relative paths are tried against the working "
        "directory, then $CAT_DATA_DIR."
    )
    name: str | None = Field(None, description="The hub data set's configuration (subset) name.")
    split: str = Field(
        "train", description="The split to read (a local file or folder has only 'train')."
    )
    revision: str | None = Field(
        None,
        description="Hub revision (commit sha, tag or branch); pin a commit sha so that a run "
        "reads the same rows later.",
    )

    @field_validator("path")
    @classmethod
    def _path_exists(cls, v: str, info: ValidationInfo) -> str:
        # replaces the JSONL file check: a folder or a hub id is fine here
        if (info.context or {}).get("check_files") and looks_local(v) and not local_path(v):
            tried = ", ".join(str(c.resolve()) for c in candidate_paths(v))
            raise ValueError(
                f"no such file or folder (tried {tried}); give a local parquet/json/jsonl/csv/"
                "arrow file or folder, or a hub id such as owner/name"
            )
        return v


class HfDataset(MappedDataset):
    """Prompts from a Hugging Face hub data set or local parquet/json/jsonl/csv/arrow files."""

    name = "hf"
    Params: ClassVar[type[HfParams]] = HfParams

    params: HfParams

    def load(self) -> list[Prompt]:
        p = self.params
        table, label, stem = self._open()
        self._path, self._lines = label, []
        columns = list(table.column_names)
        missing = {k: f for k, f in self.mapped_fields().items() if f not in columns}
        if missing:
            wrong = " or ".join(f"{f!r} ({k})" for k, f in missing.items())
            raise DatasetFileError(
                f"dataset 'hf': {label} has no field {wrong}; its fields are: "
                f"{', '.join(columns) or 'none'}. Set {' and '.join(missing)} to one of them."
            )
        if p.limit is not None and not p.shuffle:
            table = table.select(range(min(p.limit, len(table))))
        return self.finish(self.map_records(table, stem))

    def _open(self) -> tuple[Any, str, str]:
        """The table, a label for messages and the default id prefix."""
        p = self.params
        try:
            import datasets
        except ImportError:
            raise DatasetFileError(
                "dataset 'hf' needs the `datasets` package: pip install datasets"
            ) from None
        local = local_path(p.path)
        if local is None and looks_local(p.path):
            tried = ", ".join(str(c.resolve()) for c in candidate_paths(p.path))
            raise DatasetFileError(f"dataset 'hf': no such file or folder (tried {tried})")
        if local is not None and local.is_file():
            builder = BUILDERS.get(local.suffix.lower())
            if builder is None:
                raise DatasetFileError(
                    f"dataset 'hf': {local}: unknown file type {local.suffix!r}; use one of "
                    f"{', '.join(BUILDERS)} (or a folder of them)"
                )
            args: tuple[Any, ...] = (builder,)
            kwargs: dict[str, Any] = {"data_files": str(local)}
            label, stem = f"{local} (split {p.split!r})", local.stem
        elif local is not None:
            args, kwargs = (str(local),), {}
            label, stem = f"{local} (split {p.split!r})", local.name
        else:
            args, kwargs = (p.path, p.name), {"revision": p.revision}
            at = f"@{p.revision}" if p.revision else ""
            label = f"{p.path}{at} (split {p.split!r})"
            stem = f"{p.path.rsplit('/', 1)[-1]}/{p.split}"
        try:
            table = datasets.load_dataset(*args, split=p.split, **kwargs)
        except Exception as e:  # datasets raises many types; each becomes one message
            raise DatasetFileError(
                f"dataset 'hf': cannot load {label}: {type(e).__name__}: {e}"
            ) from e
        return table, label, stem


__all__ = ["BUILDERS", "HfDataset", "HfParams"]
