"""docs/design.md names every module of ``cat_framework``, and names none that is gone.

The tree. Section 3's module tree is the fenced block whose first line starts with
``cat_framework/``. It is read as a tree, not searched for words: an *entry* is a line whose
first word ends in ``.py`` or ``/`` and is followed by two spaces or the end of the line; its
depth is its indentation / 2, and it lies in the last folder entry one level up. A line deeper
than the open folders allow (a description wrapped onto the next line, at column 26) is not an
entry. So ``    placement/`` under ``  engine/`` is ``cat_framework/engine/placement/``, and
``      pi0.py`` under it is ``cat_framework/engine/placement/pi0.py``.

Matching rule. A module is *named* when its path is an entry of that tree: ``x.py`` by its file
entry; a package's ``__init__.py`` by its folder entry (``placement/``) or by an explicit
``__init__.py`` entry. The comparison is by path, not by file name alone: ``engine/runner.py``
cannot pass for ``runner.py``, and a module moved to another package must move in the tree too.
Descriptions are free text and are not checked.

Stale names. Every ``.py`` and folder entry under ``cat_framework/`` must exist (a folder as a
package). Elsewhere on the page, a path ``cat_framework/....py``, a dotted name
``cat_framework.x.y`` (which may end in one attribute defined in that module), a backticked
relative path ending in ``.py`` (``engine/lora.py``: the tail of a module's path, or a file of
the repository) and a backticked bare file name (``table.py``: some module's file name) must
name something that exists. Globs (``cli_*.py``) are skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DESIGN = REPO / "docs" / "design.md"
PACKAGE = REPO / "cat_framework"
ROOT = "cat_framework/"

_ENTRY = re.compile(r"^( *)((?:[\w.<>-]+/)*[\w.<>-]+(?:\.py|/))(?: {2,}|$)")


def _tree_block(text: str) -> str:
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M):
        if block.startswith(ROOT):
            return block
    raise AssertionError(f"{DESIGN.name}: no fenced module tree starting with {ROOT!r}")


def tree_entries(text: str) -> set[str]:
    """The paths the module tree names under ``cat_framework/`` (folders end in ``/``)."""
    entries: set[str] = set()
    folders: list[str] = []  # the open folders, one per depth
    for line in _tree_block(text).splitlines():
        m = _ENTRY.match(line)
        if m is None or len(m.group(1)) % 2:
            continue
        depth = len(m.group(1)) // 2
        if depth > len(folders):  # a wrapped description, not an entry
            continue
        del folders[depth:]
        path = "".join(folders) + m.group(2)
        if m.group(2).endswith("/"):
            folders.append(m.group(2))
        if path.startswith(ROOT):
            entries.add(path)
    return entries


def package_modules() -> list[str]:
    """Every ``.py`` file of the package, as ``cat_framework/...`` paths."""
    return sorted(
        ROOT + f.relative_to(PACKAGE).as_posix()
        for f in PACKAGE.rglob("*.py")
        if "__pycache__" not in f.parts
    )


def is_named(module: str, entries: set[str]) -> bool:
    if module in entries:
        return True
    folder, _, name = module.rpartition("/")
    return name == "__init__.py" and f"{folder}/" in entries


def test_the_tree_is_read() -> None:
    entries = tree_entries(DESIGN.read_text(encoding="utf-8"))
    assert {ROOT, "cat_framework/engine/", "cat_framework/engine/placement/pi0.py"} <= entries
    assert len(entries) > 50, sorted(entries)


def test_the_design_names_every_module() -> None:
    entries = tree_entries(DESIGN.read_text(encoding="utf-8"))
    missing = [m for m in package_modules() if not is_named(m, entries)]
    assert not missing, (
        f"docs/design.md section 3 does not name these modules (add a line each to the tree, "
        f"under their folder): {', '.join(missing)}"
    )


def test_the_tree_names_no_module_that_is_gone() -> None:
    entries = tree_entries(DESIGN.read_text(encoding="utf-8"))
    stale = [
        e
        for e in sorted(entries)
        if not ((REPO / e / "__init__.py").is_file() if e.endswith("/") else (REPO / e).is_file())
    ]
    assert not stale, f"docs/design.md's module tree names what does not exist: {stale}"


def _dotted_exists(name: str) -> bool:
    """``cat_framework.a.b`` is a module, or a module and one name its source defines."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        base = PACKAGE.parent.joinpath(*parts[:n])
        source = base.with_suffix(".py") if base.with_suffix(".py").is_file() else None
        if source is None and (base / "__init__.py").is_file():
            source = base / "__init__.py"
        if source is None:
            continue
        rest = parts[n:]
        if not rest:
            return True
        if len(rest) > 1:
            return False
        return (
            re.search(rf"\b{re.escape(rest[0])}\b", source.read_text(encoding="utf-8")) is not None
        )
    return False


def _relative_exists(path: str, modules: list[str]) -> bool:
    """``path`` is a file of the repository, or the tail of a module's path (a bare file name
    included: ``table.py``)."""
    return (REPO / path).is_file() or any(m.endswith("/" + path) for m in modules)


def test_the_page_names_no_module_that_is_gone() -> None:
    text = DESIGN.read_text(encoding="utf-8")
    modules = package_modules()
    stale = [p for p in re.findall(r"\bcat_framework/[\w/]+\.py\b", text) if p not in modules]
    stale += [d for d in re.findall(r"\bcat_framework(?:\.\w+)+", text) if not _dotted_exists(d)]
    for token in re.findall(r"`([^`\s]+\.py)`", text):
        if "*" not in token and not _relative_exists(token, modules):
            stale.append(token)
    assert not stale, f"docs/design.md names modules that do not exist: {sorted(set(stale))}"


# -- the reader itself, on a tree written for the purpose ----------------------------------------


def test_the_tree_reader_follows_indentation() -> None:
    text = (
        "# x\n\n```\n"
        "cat_framework/            the core\n"
        "  a.py                    a module, with a description wrapped\n"
        "                          onto the next line: b.py  is not an entry\n"
        "  sub/                    a package\n"
        "    b.py                  in sub\n"
        "    deeper/\n"
        "      c.py\n"
        "  d.py                    back at the top\n"
        "other/                    not the package\n"
        "  e.py\n"
        "plugins/pkg/              a folder written with its parent\n"
        "  sub/\n"
        "    f.py\n"
        "```\n"
    )
    assert tree_entries(text) == {
        "cat_framework/",
        "cat_framework/a.py",
        "cat_framework/sub/",
        "cat_framework/sub/b.py",
        "cat_framework/sub/deeper/",
        "cat_framework/sub/deeper/c.py",
        "cat_framework/d.py",
    }
    assert is_named("cat_framework/sub/__init__.py", tree_entries(text))
    assert not is_named("cat_framework/b.py", tree_entries(text))
