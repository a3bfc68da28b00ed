"""HealthBench conversations with physician rubrics (fetched from OpenAI on first use)."""

from __future__ import annotations

import hashlib
from typing import ClassVar, Literal

from pydantic import Field

from cat_framework import Criterion, Prompt
from cat_plugins.datasets.common import DatasetFileError, FileDataset, FileDatasetParams

SUBSET_FILES = {
    "main": "healthbench/2025-05-07-06-14-12_oss_eval.jsonl",
    "hard": "healthbench/hard_2025-05-08-21-00-10.jsonl",
    "consensus": "healthbench/consensus_2025-05-09-20-00-46.jsonl",
}


class HealthBenchParams(FileDatasetParams):
    subset: Literal["main", "hard", "consensus"] = Field(
        "main",
        description="Which HealthBench file to read by default: main (5,000 conversations), "
        "hard (1,000) or consensus (3,671); downloaded from OpenAI and cached on first use.",
    )
    split: Literal["all", "train", "test"] = Field(
        "all", description="Which part of the deterministic train/test split to load."
    )
    test_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="Share of conversations in the test part (rounded)."
    )
    split_seed: int = Field(
        0,
        ge=0,
        le=2**32 - 1,
        description="Seed of the split; the same seed always gives the same parts.",
    )


def split_test_ids(prompt_ids: list[str], fraction: float, seed: int) -> set[str]:
    """The ids of the test part: the ``round(n * fraction)`` ids with the smallest
    ``sha256(f"{seed}:{id}")``. Depends only on the ids (not on file order, ``limit`` or
    ``shuffle``), so train and test never overlap across runs."""
    ranked = sorted(prompt_ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    return set(ranked[: round(len(ranked) * fraction)])


class HealthBenchDataset(FileDataset):
    """HealthBench conversations; each prompt carries its physician rubric for evaluation only.

    Reads the ``subset``'s file as published by openai/simple-evals (``path:`` reads any file in
    HealthBench's format). ``messages`` is the conversation (``prompt``); ``rubric`` is
    one ``Criterion(text, points)`` per physician criterion (points may be negative); ``meta``
    holds ``example_tags`` and each criterion's ``tags`` (``rubric_tags``, aligned with the
    rubric). Ideal completions are not loaded. ``split`` picks a deterministic part by seed.
    """

    name = "healthbench"
    task = "freeform"
    Params: ClassVar[type[HealthBenchParams]] = HealthBenchParams

    params: HealthBenchParams

    @property
    def default_file(self) -> str:  # type: ignore[override]
        return SUBSET_FILES[self.params.subset]

    def load(self) -> list[Prompt]:
        _, records = self.read_records()
        ids = [str(self.require(r, "prompt_id", i)) for i, r in enumerate(records)]
        first: dict[str, int] = {}
        for i, pid in enumerate(ids):
            if pid in first:
                raise DatasetFileError(
                    f"{self.where(i)}: prompt_id {pid!r} is used again (first by "
                    f"{self.where(first[pid])}); prompt ids must be unique"
                )
            first[pid] = i
        keep = set(ids)
        if self.params.split != "all":
            test = split_test_ids(ids, self.params.test_fraction, self.params.split_seed)
            keep = test if self.params.split == "test" else keep - test
        prompts = []
        for i, (pid, r) in enumerate(zip(ids, records, strict=True)):
            if pid not in keep:
                continue
            conversation = self.require_conversation(r, "prompt", i)
            rubrics = self.require(r, "rubrics", i)
            prompts.append(
                Prompt(
                    id=pid,
                    messages=self.messages_for(conversation),
                    rubric=self.rubric(rubrics, i),
                    meta={
                        **self.base_meta(i),
                        "example_tags": list(r.get("example_tags") or []),
                        "rubric_tags": [list(c.get("tags") or []) for c in rubrics],
                    },
                )
            )
        return self.finish(prompts)

    def rubric(self, items: object, index: int) -> list[Criterion]:
        """The physician criteria of record ``index``: ``{criterion: text, points: number}``."""
        ok = isinstance(items, list) and all(
            isinstance(c, dict)
            and isinstance(c.get("criterion"), str)
            and isinstance(c.get("points"), (int, float))
            and not isinstance(c.get("points"), bool)
            for c in items
        )
        if not ok:
            raise DatasetFileError(
                f"{self.where(index)}: field 'rubrics' must be a list of "
                '{"criterion": "text", "points": number} objects'
            )
        return [Criterion(c["criterion"], float(c["points"])) for c in items]
