"""The pipelines that come with the package, found by name.

The repository's ``pipelines/`` folder is the one source: it is built into the wheel as the
package ``cat_pipelines`` (``setup.py`` maps it), so ``cat-framework run quickstart`` works from a
plain ``pip install`` as well as from a clone. A pipeline's name is its file stem with ``_``
written ``-`` (``math500_test_time.yaml`` -> ``math500-test-time``); both spellings are accepted.

A pipeline argument is a file when such a file exists, and a shipped name otherwise, so a user's
own ``quickstart.yaml`` in the working directory always wins over the shipped one.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from cat_framework.pipeline.issues import Issue, PipelineValidationError
from cat_framework.registry import suggest

#: the package the shipped pipelines are installed as (the repo's ``pipelines/`` folder)
PACKAGE = "cat_pipelines"
_SUFFIXES = (".yaml", ".yml")


def canonical_name(name: str) -> str:
    """``Math500_Test_Time.yaml`` -> ``math500-test-time`` (the spelling the listing shows)."""
    stem = name.strip()
    for suffix in _SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    return stem.lower().replace("_", "-")


def looks_like_name(text: str) -> bool:
    """A bare word (no folder part) that could name a shipped pipeline."""
    return bool(text.strip()) and "/" not in text and "\\" not in text


@cache
def shipped_dir() -> Path | None:
    """The folder holding the shipped pipelines, or None if the package has none.

    An editable install made before ``cat_pipelines`` existed cannot import it; a source checkout
    then still has the folder beside the package, which is the very same source.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            if any(Path(location).glob("*.yaml")):
                return Path(location)
    beside = Path(__file__).resolve().parents[2] / "pipelines"
    return beside if any(beside.glob("*.yaml")) else None


@dataclass(frozen=True)
class ShippedPipeline:
    """One shipped pipeline: its name, file and what its header says about it."""

    name: str
    path: Path

    def text(self) -> str:
        return self.path.read_text(encoding="utf-8")

    def header(self) -> list[str]:
        """The comment lines above the first key, without their ``#``."""
        out = []
        for line in self.text().splitlines():
            if not line.startswith("#"):
                break
            out.append(line[1:].removeprefix(" ").rstrip())
        return out

    def description(self) -> str:
        """The header's first line: what the pipeline does, in one line."""
        lines = self.header()
        return lines[0] if lines else ""

    def hardware(self) -> str:
        """The first clause of the header's ``Hardware:`` paragraph (e.g. ``one 24 GB+ GPU``)."""
        lines = self.header()
        for i, line in enumerate(lines):
            if line.startswith("Hardware:"):
                text = line.removeprefix("Hardware:").strip()
                for more in lines[i + 1 :]:
                    if not more or more.startswith(" ") or re.match(r"^[A-Z][\w ]*:", more):
                        break
                    text += " " + more.strip()
                return _first_clause(text)
        return ""


def _first_clause(text: str) -> str:
    """Text up to the first ``;``, ``:`` or sentence end outside parentheses."""
    depth = 0
    for i, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        end = ch in ";:" or (ch == "." and (i + 1 == len(text) or text[i + 1] == " "))
        if depth == 0 and end:
            return text[:i].strip()
    return text.strip()


def shipped_pipelines() -> dict[str, ShippedPipeline]:
    """Every shipped pipeline by name, sorted."""
    folder = shipped_dir()
    if folder is None:
        return {}
    found = {canonical_name(p.name): p for p in folder.iterdir() if p.suffix in _SUFFIXES}
    return {name: ShippedPipeline(name, found[name]) for name in sorted(found)}


def find_shipped(name: str) -> ShippedPipeline | None:
    """The shipped pipeline called ``name`` (either spelling, with or without ``.yaml``)."""
    if not looks_like_name(name):
        return None
    return shipped_pipelines().get(canonical_name(name))


def unknown_name_message(name: str, *, file_too: bool = True) -> str:
    """Why ``name`` names nothing (no file either, with ``file_too``), with a did-you-mean and
    the names there are."""
    names = list(shipped_pipelines())
    hint = suggest(canonical_name(name), names)
    msg = (
        f"no pipeline file {name!r} and no shipped pipeline of that name."
        if file_too
        else f"no shipped pipeline named {name!r}."
    )
    if hint:
        msg += f" Did you mean {hint!r}?"
    if names:
        msg += f" Shipped pipelines: {', '.join(names)} (`cat-framework pipelines` lists them)."
    else:
        msg += " This installation has no shipped pipelines; give the path of a pipeline file."
    return msg


def resolve_pipeline(arg: str) -> str:
    """A ``run``/``validate`` argument as a file path: the file if it exists, else a shipped
    pipeline's file; :class:`PipelineValidationError` (one issue naming the argument) if neither.
    """
    path = Path(arg)
    if path.exists():
        return arg  # the file (or folder, which the loader refuses with its own message)
    found = find_shipped(arg)
    if found is not None:
        return str(found.path)
    if looks_like_name(arg) and not arg.lower().endswith(_SUFFIXES):
        message = unknown_name_message(arg)
    else:
        message = "file not found"
        stem = find_shipped(path.name)
        if stem is not None:
            message += (
                f". A shipped pipeline has that name: `cat-framework run {stem.name}` "
                f"(or `cat-framework pipelines show {stem.name} > {path.name}` to edit a copy)"
            )
    raise PipelineValidationError(arg, [Issue(arg, None, None, "", message)])


__all__ = [
    "PACKAGE",
    "ShippedPipeline",
    "canonical_name",
    "find_shipped",
    "resolve_pipeline",
    "shipped_dir",
    "shipped_pipelines",
    "unknown_name_message",
]
