"""TRL's side of ``benchmarks/grpo_vs_trl.py``: one GRPOTrainer run, timed per phase.

Runs inside the benchmark's own venv (TRL is never a dependency of the project):

    <venv>/bin/python benchmarks/grpo_vs_trl_trl_side.py SETTINGS.json OUT.json

The reward is ours, called the way our trainer calls it: each group of G completions goes
through the ``majority`` aggregator and the ``programmatic`` reward (``cat_plugins``), so neither
side calls a model in the reward and both do the same reward work. Phases are timed by wrapping
GRPOTrainer methods (TRL 1.16): ``_generate`` (tokenising prompts, ``model.generate``, decoding)
is *generation*, ``_calculate_rewards`` is *reward*, and the rest of the optimizer step
(``on_step_begin`` to ``on_step_end``, which includes ``_generate_and_score_completions``) is
*update* (advantages, the forwards/backwards, clipping, the optimizer step, logging).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch


def reward_function(group_size: int) -> Any:
    """Majority vote + programmatic answer match per group of ``group_size`` completions."""
    from cat_framework import Completion, RolloutGroup
    from cat_framework.types import Prompt
    from cat_plugins.aggregators.majority import MajorityAggregator
    from cat_plugins.rewards.programmatic import ProgrammaticReward

    aggregator = MajorityAggregator({"fallback": "number"})
    reward = ProgrammaticReward({"fallback": "number"})

    def majority_programmatic(prompts: list, completions: list, **_: Any) -> list[float | None]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        if len(texts) % group_size:
            raise ValueError(f"{len(texts)} completions is not a multiple of G={group_size}")
        groups = []
        for start in range(0, len(texts), group_size):
            if any(p != prompts[start] for p in prompts[start : start + group_size]):
                raise ValueError("a reward batch mixes prompts within a group of G")
            rollouts = [Completion(t, [], None, "stop") for t in texts[start : start + group_size]]
            groups.append(RolloutGroup(Prompt(id=str(start), messages=prompts[start]), rollouts))
        references = aggregator.aggregate(groups)
        return [v for r in reward.derive(groups, references) for v in r.values]

    return majority_programmatic


def main(settings_path: str, out_path: str) -> None:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from cat_framework.engine.schedule import step_prompts
    from cat_plugins.datasets.arithmetic import ArithmeticDataset

    s = json.loads(Path(settings_path).read_text())
    torch.manual_seed(s["seed"])
    steps, g, p = s["steps"], s["g"], s["prompts_per_step"]
    prompts = ArithmeticDataset({"split": "train", "count": steps * p, "seed": 0}).load()
    # the prompts of each step in our trainer's order (TRL's sampler does not shuffle here)
    order = [i for step in range(1, steps + 1) for i in step_prompts(len(prompts), p, step, 0)]
    rows = [{"prompt": list(map(dict, prompts[i].messages))} for i in order]
    dataset = Dataset.from_list(rows)
    micro = s["micro_batch_size"]
    config = GRPOConfig(
        output_dir=s["workdir"],
        use_cpu=True,
        bf16=bool(s.get("amp")),  # autocast of the weights kept in float32, as ours
        fp16=False,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=p * g // micro,
        num_generations=g,
        max_completion_length=s["max_new_tokens"],
        temperature=s["temperature"],
        top_p=s["top_p"],
        top_k=0,
        beta=0.0,
        num_iterations=1,
        epsilon=s["epsilon"],
        loss_type=s["loss_type"],
        scale_rewards="group",
        learning_rate=s["learning_rate"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=s["max_grad_norm"],
        optim="adamw_torch",
        max_steps=steps,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        gradient_checkpointing=False,
        shuffle_dataset=False,
        mask_truncated_completions=False,
        use_vllm=False,
        log_completions=False,
        seed=s["seed"],
        dataloader_num_workers=0,
        model_init_kwargs={"dtype": torch.float32},
    )
    peft_config = None
    if s["lora"]:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.0,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
    steps_out: list[dict[str, float]] = []
    phase = {"generation": 0.0, "reward": 0.0, "tokens": 0.0}

    def timed(cls: Any, name: str, key: str) -> None:
        original = getattr(cls, name)

        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            out = original(self, *args, **kwargs)
            phase[key] += time.perf_counter() - start
            if key == "generation":  # (prompt_ids, completion_ids, ...): count kept tokens
                phase["tokens"] += sum(len(c) for c in out[1])
            return out

        setattr(cls, name, wrapper)

    timed(GRPOTrainer, "_generate", "generation")
    timed(GRPOTrainer, "_calculate_rewards", "reward")

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            phase.update(generation=0.0, reward=0.0, tokens=0.0, start=time.perf_counter())

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            total = time.perf_counter() - phase["start"]
            gen, rew = phase["generation"], phase["reward"]
            steps_out.append(
                {
                    "step": state.global_step,
                    "generation": gen,
                    "reward": rew,
                    "update": total - gen - rew,
                    "step_total": total,
                    "tokens": phase["tokens"],
                }
            )

    t0 = time.perf_counter()
    trainer = GRPOTrainer(
        model=s["model_path"],
        reward_funcs=reward_function(g),
        args=config,
        train_dataset=dataset,
        peft_config=peft_config,
        callbacks=[StepTimer()],
    )
    setup_s = time.perf_counter() - t0
    trainer.train()
    import trl

    result = {
        "steps": steps_out,
        "setup_s": setup_s,
        "trl": trl.__version__,
        "threads": torch.get_num_threads(),
        "log": trainer.state.log_history,
    }
    Path(out_path).write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
