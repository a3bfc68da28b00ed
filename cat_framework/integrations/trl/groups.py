"""TRL's reward batch -> whole rollout groups, or a refusal naming the fix.

TRL (1.16) calls a reward function once per process per generation batch: the
``per_device_train_batch_size * steps_per_generation`` completions this process sampled, each
prompt repeated ``num_generations`` (G) times in a row (its ``RepeatSampler``). TRL requires only
the *global* generation batch to be a multiple of G and gathers rewards from every process
before it normalises them, so with several processes one prompt's G completions can be split
between processes (TRL issues #3017, #5030). The teacher builds one reference from all G
rollouts of a prompt: a partial group would get a reference from fewer rollouts than the run
says, silently. So a call whose completions are not whole runs of G is refused instead.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from cat_framework.errors import CatError
from cat_framework.types import Completion, Prompt, RolloutGroup

#: dataset columns read as a prompt's id, in this order (else a hash of the prompt)
ID_COLUMNS = ("prompt_id", "id")

_FIX = (
    "Make each process's generation batch (per_device_train_batch_size x steps_per_generation, "
    "which defaults to gradient_accumulation_steps) a multiple of num_generations: TRL itself "
    "requires that only of the global batch (all processes together)"
)


class SplitGroupError(CatError):
    """A reward call holds part of a prompt's G completions (the rest went elsewhere)."""


def prompt_messages(prompt: Any, where: str) -> tuple[dict[str, str], ...]:
    """A TRL prompt as chat messages: conversational prompts as they are, a plain-text prompt as
    one user message (the teacher's templates need chat messages)."""
    if isinstance(prompt, str):
        return ({"role": "user", "content": prompt},)
    if isinstance(prompt, Sequence) and all(isinstance(m, Mapping) for m in prompt):
        for m in prompt:
            if not isinstance(m.get("content"), str) or not isinstance(m.get("role"), str):
                raise CatError(
                    f"{where}: a message of this prompt has no text content ({_brief(m)}); the "
                    "teacher reads text-only chat prompts (no images or content parts)"
                )
        return tuple({"role": m["role"], "content": m["content"]} for m in prompt)
    raise CatError(
        f"{where}: a prompt must be text or a list of chat messages, not {type(prompt).__name__}"
    )


def completion_text(completion: Any, where: str) -> str:
    """The text TRL sampled: a string, or the last message of a conversational completion."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], Mapping):
        content = completion[-1].get("content")
        if isinstance(content, str):
            return content
    raise CatError(
        f"{where}: a completion must be text or chat messages ending in a text message, "
        f"not {_brief(completion)}"
    )


def check_whole(keys: Sequence[str], g: int, previews: Sequence[str]) -> None:
    """Refuse unless ``keys`` is whole runs of ``g`` equal keys (a run may hold several groups
    of a prompt that occurs twice in the dataset)."""
    start = 0
    while start < len(keys):
        end = start
        while end < len(keys) and keys[end] == keys[start]:
            end += 1
        if (end - start) % g:
            where = f"position {start}" if end - start == 1 else f"positions {start}-{end - 1}"
            raise SplitGroupError(
                f"TRL passed this reward call {len(keys)} completions, of which {end - start} "
                f"({where}) answer the prompt {previews[start]!r}: not a multiple of "
                f"num_generations={g}, so that prompt's group is split between reward calls or "
                "processes. The teacher builds one reference from all G completions of a "
                f"prompt, so it refuses a partial group. {_FIX}."
            )
        start = end


def to_groups(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    completion_ids: Sequence[Sequence[int]] | None,
    g: int,
    columns: Mapping[str, Sequence[Any]],
    *,
    task: str,
    gold_column: str | None = None,
    max_tokens: int | None = None,
) -> list[RolloutGroup]:
    """One :class:`RolloutGroup` per G consecutive completions of a prompt; the prompt's id is
    the ``prompt_id``/``id`` column when the dataset has one, else a hash of the prompt."""
    n = len(prompts)
    if len(completions) != n or (completion_ids is not None and len(completion_ids) != n):
        raise CatError(
            f"TRL passed {n} prompts but {len(completions)} completions to the reward function"
        )
    ids = next((columns[c] for c in ID_COLUMNS if c in columns), None)
    keys = [_key(p, None if ids is None else ids[i]) for i, p in enumerate(prompts)]
    check_whole(keys, g, [_preview(p) for p in prompts])
    golds = columns.get(gold_column) if gold_column else None
    if gold_column and golds is None:
        raise CatError(
            f"gold_column={gold_column!r}: the dataset has no such column (it has: "
            f"{', '.join(sorted(columns)) or 'none'})"
        )
    tasks = columns.get("task")
    groups = []
    for start in range(0, n, g):
        where = f"reward call, completion {start}"
        prompt = Prompt(
            id=str(ids[start]) if ids is not None else "trl-" + keys[start][:16],
            messages=prompt_messages(prompts[start], where),
            gold_answer=None if golds is None or golds[start] is None else str(golds[start]),
            meta={"task": str(tasks[start]) if tasks is not None else task},
        )
        rollouts = [
            _completion(completions[i], None if completion_ids is None else completion_ids[i],
                        max_tokens, f"reward call, completion {i}")
            for i in range(start, start + g)
        ]  # fmt: skip
        groups.append(RolloutGroup(prompt, rollouts))
    return groups


def check_layout(args: Any, g: int) -> None:
    """Refuse, before training, a TRL config whose per-process batches would split groups.

    ``args`` is the ``GRPOConfig`` (read by attribute, so this module needs no TRL)."""
    per_device = int(args.per_device_train_batch_size)
    local = per_device * int(getattr(args, "steps_per_generation", None) or 1)
    world = int(getattr(args, "world_size", 1) or 1)
    if local % g:
        raise SplitGroupError(
            f"GRPOConfig: each of the {world} processes gets {local} completions per generation "
            f"(per_device_train_batch_size={per_device} x steps_per_generation), not a multiple "
            f"of num_generations={g}, so TRL would split a prompt's group between processes. "
            f"{_FIX}."
        )
    g_eval = getattr(args, "num_generations_eval", None)
    if g_eval not in (None, g):
        raise CatError(
            f"GRPOConfig: num_generations_eval={g_eval} differs from num_generations={g}; the "
            "teacher reward groups every call by one G. Leave num_generations_eval unset"
        )
    if getattr(args, "eval_strategy", "no") not in ("no", None):
        per_eval = int(args.per_device_eval_batch_size)
        if per_eval % g:
            raise SplitGroupError(
                f"GRPOConfig: per_device_eval_batch_size={per_eval} is not a multiple of "
                f"num_generations={g}, so evaluation would split a prompt's group between "
                "processes; make it one"
            )


def _completion(
    text: Any, ids: Sequence[int] | None, max_tokens: int | None, where: str
) -> Completion:
    token_ids = tuple(ids) if ids is not None else ()
    cut = max_tokens is not None and len(token_ids) >= max_tokens
    return Completion(completion_text(text, where), token_ids, None, "length" if cut else "stop")


def _key(prompt: Any, prompt_id: Any) -> str:
    """Identity of a prompt within a call: a hash of its content and id (if the dataset has one)."""
    data = json.dumps([prompt, prompt_id], sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(data.encode()).hexdigest()


def _preview(prompt: Any) -> str:
    text = prompt if isinstance(prompt, str) else str(_last_content(prompt))
    return text if len(text) <= 60 else text[:57] + "..."


def _last_content(prompt: Any) -> Any:
    try:
        return prompt[-1]["content"]
    except (LookupError, TypeError):
        return prompt


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


__all__ = [
    "ID_COLUMNS",
    "SplitGroupError",
    "check_layout",
    "check_whole",
    "completion_text",
    "prompt_messages",
    "to_groups",
]
