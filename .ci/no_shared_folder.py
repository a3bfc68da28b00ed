"""CI lint: neither the product nor a test may read the research folder that sits beside the
developers' checkout (``../shared``: research notes and benchmark data). Users who clone the
repository do not have it, so a test reading it would skip or fail for them, and product code
naming it would guess a path no user has. Benchmarks may read it; they are not run by users.

Run by ``.ci/run`` (step 5); exits 1 naming each offending line."""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NEIGHBOUR = "shared"
NAMES_IT = rf"\.\./{NEIGHBOUR}|{NEIGHBOUR}/(data|research)"
#: also the path-building forms tests once used (``REPO.parent / "shared" / "data"``)
READS_IT = re.compile(
    rf"{NAMES_IT}|(REPO|parent|\]|DIR|ROOT)\s*/\s*\"{NEIGHBOUR}\""
    rf"|\"{NEIGHBOUR}\"\s*/\s*\"(data|research)\""
)


def offenders() -> list[str]:
    found = []
    product = [REPO / "cat_framework", REPO / "plugins" / "cat_plugins"]
    tests = [REPO / "tests", *(REPO / "plugins").glob("*/tests")]
    for roots, pattern, suffixes in (
        (product, re.compile(NAMES_IT), {".py", ".md", ".txt", ".yaml"}),
        (tests, READS_IT, {".py"}),
    ):
        for root in roots:
            for path in sorted(root.rglob("*")):
                if path.suffix not in suffixes or "__pycache__" in path.parts:
                    continue
                for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                    if pattern.search(line):
                        found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    return found


def main() -> int:
    for old in (  # the pattern catches the forms tests used before
        f'DATA = Path(__file__).resolve().parents[4] / "{NEIGHBOUR}" / "data"',
        f'SHARED_DATA = REPO.parent / "{NEIGHBOUR}" / "data"',
        f'"--set", "data.eval.path=../{NEIGHBOUR}/data/healthbench/x.jsonl"',
    ):
        assert READS_IT.search(old), old
    bad = offenders()
    for line in bad:
        print(f"reads the folder beside the checkout (users have none): {line}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
