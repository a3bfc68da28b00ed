"""The reliability corpus: bad inputs, each run through the real CLI, each owed one precise message.

A :class:`Case` is a row: the files to write into an empty working directory, an optional
``prepare`` step for inputs that need more than files (a run directory, a checkpoint, a model
folder), the CLI arguments, and the text the message must contain (the file, line, key or record
at fault). ``test_corpus.py`` runs every row and also asserts what every row owes: a non-zero exit,
no traceback, no "unexpected error", and (for ``run``) no run directory that looks complete.

To add a case, append a ``Case`` to a list below (or to a new ``cases_*.py`` module listed in
:data:`MODULES`); ``{tmp}`` in ``argv`` and ``expect`` is replaced by the working directory.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Case:
    """One bad input and the message it must produce."""

    id: str
    argv: tuple[str, ...]
    #: substrings of the output (stdout + stderr), after ``{tmp}`` substitution
    expect: tuple[str, ...]
    #: files written (relative to the working directory) before running; str is UTF-8 text
    files: Mapping[str, str | bytes] = field(default_factory=dict)
    #: anything else the input needs, built in the working directory (after ``files``)
    prepare: Callable[[Path], None] | None = None
    #: the exit status owed, when one is documented (``None``: any non-zero)
    exit_code: int | None = None
    #: paths (relative to the working directory) that must not exist afterwards
    absent: tuple[str, ...] = ()


#: modules whose ``CASES`` make up the corpus
MODULES = (
    "tests.reliability.cases_pipeline",
    "tests.reliability.cases_data",
    "tests.reliability.cases_rundir",
    "tests.reliability.cases_bounds",
    "tests.reliability.cases_training",
    "tests.reliability.cases_secrets",
)

#: a dataset that loads fine (the default ``data.jsonl`` of :func:`pipeline`)
GOOD_DATA = '{"question": "What is 2+2?", "answer": "4"}\n{"question": "1+1?", "answer": "2"}\n'


def pipeline(
    *,
    mode: str = "evaluate",
    seed: str = "0",
    policy: str = "{model: cat-tests/never-loaded}",
    eval_data: str = "{dataset: jsonl, path: data.jsonl}",
    rollouts: str = "{n: 2, max_new_tokens: 8}",
    tail: str = "",
) -> str:
    """A valid evaluate pipeline with one piece swapped for the fault under test.

    Lines: 1 name, 2 mode, 3 seed, 4 models, 5 policy, 6 data, 7 eval, 8 rollouts, 9 output,
    10+ ``tail``. The hub id of the policy is never loaded (validate does not check hub ids, and
    a dataset fault stops ``run`` before any model loads).
    """
    return (
        f"name: rel\nmode: {mode}\nseed: {seed}\nmodels:\n  policy: {policy}\n"
        f"data:\n  eval: {eval_data}\nrollouts: {rollouts}\noutput: {{dir: runs}}\n{tail}"
    )


def validate(text: str | bytes, *expect: str, exit_code: int | None = 2, **kw: object) -> dict:
    """Keyword arguments of a ``validate p.yaml`` case whose pipeline is ``text``."""
    files = {"p.yaml": text, "data.jsonl": GOOD_DATA, **kw.pop("files", {})}  # type: ignore[dict-item]
    return dict(argv=("validate", "p.yaml"), expect=expect, files=files, exit_code=exit_code, **kw)


def run_with_data(
    data: str | bytes, *expect: str, eval_data: str | None = None, tail: str = ""
) -> dict:
    """Keyword arguments of a ``run p.yaml`` case whose dataset file ``data.jsonl`` is ``data``."""
    text = pipeline(eval_data=eval_data, tail=tail) if eval_data else pipeline(tail=tail)
    return dict(
        argv=("run", "p.yaml"),
        expect=expect,
        files={"p.yaml": text, "data.jsonl": data},
        exit_code=2,
    )


def all_cases() -> list[Case]:
    cases = [c for m in MODULES for c in importlib.import_module(m).CASES]
    ids = [c.id for c in cases]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    assert not duplicated, f"case ids must be unique: {duplicated}"
    return cases
