"""Pipelines around the tiny policy for the TRL teacher-reward tests: only the teacher section
(aggregator, reward, models) matters to the reward; the rest makes a valid training pipeline."""

from __future__ import annotations

from pathlib import Path

MAJORITY = (
    "aggregator: {name: majority, fallback: number}\n"
    "reward: {name: programmatic, fallback: number}\n"
)
SYNTHESIS = "aggregator: {name: synthesis, max_new_tokens: 16}\nreward: programmatic\n"


def write_pipeline(tmp: Path, model: Path, teacher: str, roles: str = "") -> Path:
    """``tmp/pipeline.yaml`` with ``teacher`` (aggregator, reward); ``roles``: ``models`` keys."""
    path = tmp / "pipeline.yaml"
    path.write_text(
        "name: trl-teacher\nmode: train\n"
        f"models:\n  policy: {{backend: transformers, model: '{model}', device: cpu}}\n{roles}"
        "data:\n  train: {dataset: arithmetic, count: 4}\n"
        "rollouts: {n: 2, max_new_tokens: 8}\ntrainer: {steps: 1, prompts_per_step: 2}\n" + teacher
    )
    return path
