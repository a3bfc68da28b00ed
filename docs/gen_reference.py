"""Generate the reference pages of the docs from the code, so they cannot drift from it.

- ``reference/pipeline.md``: the pipeline schema (``cat_framework/pipeline/schema.py``) and every
  registered component's ``Params`` (built-in plugins, ``load_plugins(entry_points=False)``);
- ``reference/cli.md``: every command of ``cat_framework.cli:cli`` with its ``--help``;
- ``reference/hooks.md``: every hookspec of ``cat_framework/hookspecs.py``, signature and docstring;
- ``reference/api.md``: the public names re-exported by ``cat_framework/__init__.py``.

One module per page under ``docs/refgen/`` (shared docstring-to-Markdown helpers in
``refgen/markdown.py``); this file is the mkdocs hook and command line around them.

Three ways to use it:

- ``mkdocs build`` runs it as a hook (``hooks:`` in mkdocs.yml): :func:`on_files` adds the pages
  to the build in memory, so nothing generated is committed and nothing goes stale;
- ``python docs/gen_reference.py [--out DIR]`` writes the pages to ``DIR/reference/`` (default
  ``docs/``, git-ignored there) to read them without building;
- ``python docs/gen_reference.py --check`` exits 1, listing every gap, when a hookspec, a schema
  field, a component parameter or a CLI command/option is undocumented.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS))  # the refgen package beside this hook (mkdocs loads it by path)
PAGES = ("reference/pipeline.md", "reference/cli.md", "reference/hooks.md", "reference/api.md")

from refgen.api_ref import render_api  # noqa: E402
from refgen.cli_ref import render_cli  # noqa: E402
from refgen.hooks_ref import render_hooks  # noqa: E402
from refgen.pipeline_ref import render_pipeline  # noqa: E402


def generate(problems: list[str] | None = None) -> dict[str, str]:
    """Every generated page: ``{"reference/pipeline.md": markdown, ...}``."""
    from cat_framework import load_plugins

    problems = [] if problems is None else problems
    plugins = load_plugins(entry_points=False)
    return {
        "reference/pipeline.md": render_pipeline(plugins, problems),
        "reference/cli.md": render_cli(problems),
        "reference/hooks.md": render_hooks(problems),
        "reference/api.md": render_api(problems),
    }


def on_config(config: Any) -> Any:
    """mkdocs hook: resolve snippet paths against the repository root, whatever the cwd."""
    root = Path(config.config_file_path).resolve().parent
    snippets = config.mdx_configs.get("pymdownx.snippets")
    if snippets is not None:
        snippets["base_path"] = [str(root / p) for p in snippets.get("base_path", ["."])]
    return config


def on_files(files: Any, config: Any) -> Any:
    """mkdocs hook: add the generated pages to the build (replacing stale copies on disk)."""
    from mkdocs.structure.files import File

    for uri, content in generate().items():
        existing = files.get_file_from_path(uri)
        if existing is not None:
            files.remove(existing)
        files.append(File.generated(config, uri, content=content))
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DOCS, help="write DIR/reference/*.md")
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if anything is undocumented"
    )
    args = parser.parse_args(argv)
    problems: list[str] = []
    pages = generate(problems)
    if args.check:
        for p in problems:
            print(f"undocumented: {p}", file=sys.stderr)
        print(f"{len(pages)} pages, {len(problems)} problems", file=sys.stderr)
        return 1 if problems else 0
    for uri, content in pages.items():
        target = args.out / uri
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
        print(target)
    for p in problems:
        print(f"undocumented: {p}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
