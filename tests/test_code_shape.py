"""The engine's shape, kept: short functions with few branches, loops that meet the placement
at two points per step, a checkpoint module that names no feature (issue 19's acceptance)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cat_framework"
MAX_LINES, MAX_BRANCHES = 80, 15


def functions() -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    found = []
    for file in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                found.append((f"{file.relative_to(PACKAGE.parent)}:{node.lineno}", node))
    return found


def test_no_function_is_long_or_branchy():
    long = [
        f"{where} {fn.name}: {fn.end_lineno - fn.lineno + 1} lines"
        for where, fn in functions()
        if (fn.end_lineno or fn.lineno) - fn.lineno + 1 > MAX_LINES
    ]
    branchy = [
        f"{where} {fn.name}: {n} if/elif"
        for where, fn in functions()
        if (n := sum(isinstance(x, ast.If) for x in ast.walk(fn))) > MAX_BRANCHES
    ]
    assert not long and not branchy, long + branchy


def placement_calls(file: str, function: str, holder: str) -> set[str]:
    """The placement methods ``function`` calls on ``holder`` (``self.placement``, ...)."""
    tree = ast.parse((PACKAGE / file).read_text(encoding="utf-8"))
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function)
    return {
        node.func.attr
        for node in ast.walk(fn)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and ast.unparse(node.func.value) == holder
    }


def test_a_training_step_meets_the_placement_at_two_points():
    assert placement_calls("engine/grpo_step.py", "__call__", "self.placement") == {
        "sample",
        "update",
    }
    for mode in ("engine/trainer.py", "engine/sft.py"):  # the loops leave it to the step
        assert placement_calls(mode, "_steps", "run.placement") == set()


def test_the_checkpoint_modules_name_no_feature():
    for name in ("checkpoint.py", "checkpoint_check.py"):
        text = (PACKAGE / "engine" / name).read_text(encoding="utf-8").lower()
        named = re.findall(r"pending|lora|fsdp|async", text)
        assert not named, f"engine/{name} names {sorted(set(named))}"
