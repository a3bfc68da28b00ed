"""Run under ``accelerate launch`` with 2 CPU processes by ``tests/test_trl_reward.py``: TRL
``GRPOTrainer`` steps with the teacher reward, in one of two batch layouts.

    trl_two_processes.py split|whole PIPELINE MODEL OUT

``split``: 3 completions per process and G=2, which TRL accepts (6 in all is a multiple of G)
but which splits a prompt's group between the processes: the reward must refuse it (no ``args``
is given, so the refusal comes from the reward call, not the config check). ``whole``: 2 per
process, G=2: each process scores its own group, and the main process writes both."""

from __future__ import annotations

import sys

import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from cat_framework.engine.process_group import leave_process_group
from cat_framework.integrations.trl import teacher_reward


def main(layout: str, pipeline: str, model: str, out: str) -> None:
    torch.set_num_threads(1)
    rows = [
        {"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}], "prompt_id": f"q{i}"}
        for i in range(6)
    ]
    config = GRPOConfig(
        output_dir=f"{out}/trl", use_cpu=True, bf16=False, num_generations=2,
        per_device_train_batch_size=3 if layout == "split" else 2, gradient_accumulation_steps=1,
        max_completion_length=8, max_steps=2, learning_rate=1e-3, logging_steps=1,
        report_to="none", save_strategy="no", shuffle_dataset=False, seed=0,
        dataloader_num_workers=0, model_init_kwargs={"dtype": torch.float32},
    )  # fmt: skip
    run_dir = f"{out}/teacher" if layout == "whole" else None
    with teacher_reward(pipeline, num_generations=2, run_dir=run_dir) as reward:
        trainer = GRPOTrainer(
            model=model, reward_funcs=reward, args=config, train_dataset=Dataset.from_list(rows)
        )
        trainer.train()
    leave_process_group()  # a gloo group left to the exit-time destructor may abort


if __name__ == "__main__":
    main(*sys.argv[1:5])
