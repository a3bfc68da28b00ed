"""Prompts whose gold data raises when read: proof that a teacher path is label-free."""

from __future__ import annotations

from typing import Any

from cat_framework import Prompt


class GoldTrap(Prompt):
    """A prompt whose ``gold_answer`` and ``rubric`` raise once armed (see :func:`armed`)."""

    def __getattribute__(self, name: str) -> Any:
        if name in ("gold_answer", "rubric") and object.__getattribute__(self, "__dict__").get(
            "_armed"
        ):
            raise AssertionError(f"the teacher path read prompt.{name}")
        return super().__getattribute__(name)


def armed(prompt: GoldTrap) -> GoldTrap:
    """Arm the trap after construction (dataclass init and validation may read the fields)."""
    object.__setattr__(prompt, "_armed", True)
    return prompt


def trap_prompt(gold: str = "999", **kwargs: Any) -> GoldTrap:
    """A one-message prompt with gold ``gold``, armed."""
    kwargs.setdefault("id", "q")
    kwargs.setdefault("messages", [{"role": "user", "content": "?"}])
    return armed(GoldTrap(gold_answer=gold, **kwargs))
