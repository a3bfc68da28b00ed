"""The prompts of a pipeline's data splits, loaded once per run: the run's start (the data check)
and its mode read the same lists, so a hub download, a large file or an enumerated problem space
is read once. Every process loads its own (they load the same data)."""

from __future__ import annotations

import weakref
from typing import Literal

from cat_framework.components import Dataset
from cat_framework.errors import CatError
from cat_framework.pipeline import Pipeline
from cat_framework.pipeline.build import build_component
from cat_framework.types import Prompt

Split = Literal["train", "eval"]
#: per live pipeline (by id, dropped with it): split -> (dataset, prompts)
_LOADED: dict[int, tuple[weakref.ref, dict[str, tuple[Dataset, list[Prompt]]]]] = {}


def split_prompts(pipeline: Pipeline, split: Split) -> tuple[Dataset, list[Prompt]]:
    """``data.<split>``'s dataset and prompts as the engine uses them: all of ``train``, the first
    ``eval.limit`` of ``eval``; loaded at the first call for this pipeline, then shared."""
    key = id(pipeline)
    entry = _LOADED.get(key)
    if entry is None or entry[0]() is not pipeline:
        entry = (weakref.ref(pipeline, lambda _gone, k=key: _LOADED.pop(k, None)), {})
        _LOADED[key] = entry
    loaded = entry[1]
    if split not in loaded:
        dataset = build_component(pipeline, "data", split)
        assert isinstance(dataset, Dataset)
        limit = pipeline.config.eval.limit if split == "eval" else None
        loaded[split] = (dataset, load_prompts(dataset, limit))
    return loaded[split]


def load_prompts(dataset: Dataset, limit: int | None) -> list[Prompt]:
    """The dataset's prompts (first ``limit``), tagged with the task so templates can adapt."""
    prompts = dataset.load()[:limit] if limit else dataset.load()
    seen: set[str] = set()
    for p in prompts:  # built-ins refuse these with file:line; this covers any plugin's dataset
        if p.id in seen:
            raise CatError(
                f"dataset {dataset.name!r} yields two prompts with id {p.id!r}: ids must be "
                "unique (records, resume and metrics are keyed by them)"
            )
        seen.add(p.id)
    task = dataset.task_kind
    return [
        p
        if p.meta.get("task")
        else Prompt(p.id, p.messages, p.gold_answer, p.rubric, {**p.meta, "task": task})
        for p in prompts
    ]


__all__ = ["load_prompts", "split_prompts"]
