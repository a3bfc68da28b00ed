"""Hostile values in a training run's files (issue 23, item 1): the rollouts a one-step-off
checkpoint keeps for the next step, with a NaN log-prob or a token id outside the vocabulary,
would turn every weight into NaN or fail deep in a forward pass; ``run --resume`` names the file
and the record instead."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from cat_framework import hookimpl
from tests.reliability.corpus import Case

#: a tiny train run with one-step-off rollouts (its model is built by ``_cut_run``)
TRAIN = """\
name: rel-train
mode: train
seed: 3
models:
  policy: {backend: transformers, model: model, device: cpu}
data:
  train: {dataset: jsonl, path: data.jsonl, answer_field: answer}
rollouts: {n: 2, temperature: 1.0, max_new_tokens: 6}
aggregator: {name: majority, fallback: number}
reward: {name: programmatic, fallback: number}
trainer: {steps: 2, prompts_per_step: 2, learning_rate: 0.01, save_every: 1, async_rollouts: 1}
"""
DATA = "".join(
    json.dumps({"question": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n" for i in range(4)
)


class _StopAfterFirstStep:
    """An observer that interrupts the run after step 1, like a kill between steps."""

    @hookimpl
    def on_step_end(self, step: int) -> None:
        if step == 1:
            raise KeyboardInterrupt


def _cut_run(edit: Any):
    """A tiny model, a train run cut after step 1 (its checkpoint keeps step 2's rollouts),
    then ``edit(rollouts)`` applied to the first rollout of the pending-rollouts file."""

    def prepare(work: Path) -> None:
        from cat_framework import load_plugins
        from cat_framework.pipeline import load_pipeline
        from cat_framework.runner import run_pipeline
        from tests.plugins.backends.conftest import build_tiny_model, build_tiny_tokenizer

        tok = build_tiny_tokenizer()
        build_tiny_model(len(tok), seed=1).save_pretrained(work / "model")
        tok.save_pretrained(work / "model")
        here = Path.cwd()
        os.chdir(work)  # the pipeline's relative paths are resolved as the CLI will
        try:
            plugins = load_plugins(extra=[("stop", _StopAfterFirstStep())])
            with contextlib.suppress(KeyboardInterrupt):
                run_pipeline(load_pipeline("p.yaml", plugins=plugins), plugins, run_dir="r")
        finally:
            os.chdir(here)
        file = work / "r" / "checkpoints" / "step-000001" / "pending-rollouts-0.json"
        data = json.loads(file.read_text())
        edit(data["rollouts"][0][0])
        file.write_text(json.dumps(data))

    return prepare


def _set(field: str, value: Any):
    def edit(rollout: dict[str, Any]) -> None:
        rollout[field][0] = value

    return edit


CASES = [
    Case(
        "resume-with-a-nan-log-prob-in-pending-rollouts",
        argv=("run", "p.yaml", "--resume", "r"),
        expect=(
            "pending-rollouts-0.json: group 0, rollout 0: log-prob 'NaN' is not a finite number",
        ),
        files={"p.yaml": TRAIN, "data.jsonl": DATA},
        prepare=_cut_run(_set("logprobs", "NaN")),
    ),
    Case(
        "resume-with-a-token-id-outside-the-vocabulary-in-pending-rollouts",
        argv=("run", "p.yaml", "--resume", "r"),
        expect=("pending-rollouts-0.json: group 0, rollout 0: token id 1000000 is outside",),
        files={"p.yaml": TRAIN, "data.jsonl": DATA},
        prepare=_cut_run(_set("token_ids", 10**6)),
    ),
]
