"""The markdown report of ``benchmarks/grpo_vs_trl.py`` (raw numbers stay in the .json)."""

from __future__ import annotations

from typing import Any

SETTINGS = """\
## Settings (both sides)

- Model: the embedded SmolLM2-135M-Instruct, fp32; TRL loads the very folder our
  `transformers` backend resolves `embedded:smollm2-135m-instruct` to (`{model_folder}`).
- Data: our `arithmetic` dataset (train split, seed 0), each step's prompts in our trainer's
  order on both sides (TRL: `shuffle_dataset=False` over a dataset laid out in that order);
  the tokenizer's chat template with the generation prompt on both sides.
- Sampling: HF generation on both sides (TRL `use_vllm=False`: `model.generate`; ours: the
  `transformers` backend's KV-cached loop), temperature 0.7, top_p 1.0, top_k 0, G = {g},
  {prompts} prompts per step, max_new_tokens {max_new_tokens}.
- Reward: `majority` (fallback: number) + `programmatic` on both sides; TRL's reward function
  calls the same plugin classes per group of G (`grpo_vs_trl_trl_side.py`), so neither side
  calls a model and the reward work is the same.
- GRPO: beta 0 (no reference model on either side), num_iterations 1, loss_type `grpo`,
  epsilon 0.2, scale_rewards `group`, AdamW (torch) lr {learning_rate}, constant schedule,
  no warm-up, weight decay 0, max_grad_norm {max_grad_norm}, micro-batch {micro_batch_size}
  sequences (TRL: `per_device_train_batch_size={micro_batch_size}`,
  `gradient_accumulation_steps={accum}`: one optimizer step per generation batch), no
  gradient checkpointing (TRL's default is on: turned off), fp32 (TRL's bf16 default: off),
  no truncation masking, no dropout in the model (SmolLM2 has none), one process.
- No pi_0 on either side: ours sets `models.anchor: policy` (no role of this pipeline samples
  from pi_0, and with the default `initial-policy` a full fine-tuning run would hold a frozen
  copy it never uses); TRL loads no reference model at beta 0.
- LoRA configuration: r 16, alpha 32, dropout 0, `all-linear` target modules on both sides
  (peft {peft}).
- Phases. Ours: `metrics.jsonl` of the run (`time/rollouts`, `time/teacher`, `time/training`,
  `time/step`). TRL: wrapped `GRPOTrainer._generate` (prompt tokenisation, `model.generate`,
  decoding) = generation; wrapped `_calculate_rewards` = reward; a `TrainerCallback`'s
  `on_step_begin` -> `on_step_end` = step, and update = step - generation - reward
  (advantages, forwards/backwards, clipping, optimizer step, TRL's metric gathering).
  Tokens: completion tokens kept (up to and including EOS) per step. Peak RSS: `ru_maxrss` of
  each side's process from `os.wait4` (whole run: load, steps, ours also its final save).

## Differences that could not be removed

- Random draws: each side samples with its own generators, so rollouts, their lengths and the
  rewards differ between sides (repeats of one side reproduce its draws: the seeds are fixed).
  The two samplers draw from the same distribution: 128 completions each of the same prompts
  at these settings are 52.3 tokens long on average from our backend and 52.5 from
  `model.generate` on a left-padded batch (TRL's generation), standard deviation 41, Welch
  t = -0.05 (`completion_lengths-cpu-2core.json`, `benchmarks/completion_lengths.py`). With
  that spread a step's 16 completions vary by about 166 tokens from draw to draw, so a gap of
  ~100 tokens per step between the sides is one draw, not a setting. The fixed-length
  configuration removes it: every completion on both sides is exactly `max_new_tokens` long
  (a copy of the model folder whose end-of-sequence token is one the model never samples), so
  both do the same work; times are also given per generated token.
- Generation strategy (part of what is measured): `model.generate` steps every row until the
  longest ends and prefills each prompt G times; our backend drops finished rows from the batch
  and prefills each prompt once per group (its KV cache copied to the G rows).
- Update (part of what is measured): our update forwards each micro-batch at its own width
  (columns that are padding in every row are skipped); TRL forwards every micro-batch at the
  generation batch's width.
- Bookkeeping outside the timed step: our run writes `records.jsonl`/`metrics.jsonl` per step
  (inside `time/step`: no; the records are built after it) and a final checkpoint at the end
  (in the wall time and RSS, not in the step); TRL saves nothing (`save_strategy="no"`).
"""

PROFILE = """\
## Profile of both sides, and what remains

`benchmarks/profile_step.py --config full-fixed` runs each side once under `py-spy record
--native` (50 Hz, 2 steps of the fixed-length configuration, the same settings) and puts every
sample in a bucket (`benchmarks/results/profile_step-full-fixed-cpu-2core.md`, seconds of the
whole process, py-spy's overhead included):

| bucket | ours s | TRL s | ours/TRL |
|---|---|---|---|
| generation (the model's decode steps) | 25.7 | 34.2 | 0.75x |
| update: backward | 15.2 | 24.7 | 0.62x |
| update: training forward | 17.9 | 18.8 | 0.95x |
| update: optimizer (AdamW, clipping) | 3.2 | 2.5 | 1.26x |

- **Backward (0.62x)**: ours never forms the full-vocabulary logits or their gradient (the LM
  head fused with the log-softmax in chunks, its backward written out: `engine/linear_logps.py`),
  and forwards each micro-batch at its own width from length-sorted rows.
- **Training forward (0.95x) and optimizer (1.26x)**: the same model forward and the same
  single-tensor AdamW with clipping on both sides.
- **Generation (0.75x-0.85x)**: the same decode step per token, bound by reading the float32
  weights (`generation_levers-cpu-2core.md`: 33 ms for 1 row, 69 ms for 16); ours prefills each
  prompt once per group and drops finished rows (at fixed length none finish).

So at equal float32 work the step cannot reach 0.6x TRL's: 34 % of its profiled time (the training
forward and the optimizer) runs the same kernels as TRL's, and generation is the same model forward. Only
fewer bytes or cheaper arithmetic per token go further, and that changes the settings: sampling
from a bfloat16 copy (`trainer.rollout_dtype: bfloat16`) takes generation to 0.54x and the step
to 0.67x in this run.
{notes}"""


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# GRPO step: cat-framework vs TRL GRPOTrainer (CPU)",
        "",
        f"Machine: {m['cores']}-core CPU ({m['cpu']}), no GPU; Python {m['python']}, "
        f"torch {m['torch']}, transformers {m['transformers']}, peft {m['peft']}, "
        f"TRL {m['trl']}; {m['threads_per_process']} OpenMP threads per process, one process "
        f"at a time. Load average (1/5/15 min) {fmt_load(result['load_start'])} at the start, "
        f"{fmt_load(result['load_end'])} at the end; {result['wall_s'] / 60:.1f} min in all.",
        f"Command: `{result['command']}`",
        "",
    ]
    for cfg in result["configs"].values():
        lines += section(cfg)
    s = next(iter(result["configs"].values()))["settings"]
    accum = s["prompts_per_step"] * s["g"] // s["micro_batch_size"]
    lines.append(
        SETTINGS.format(
            model_folder=result["model_folder"],
            prompts=s["prompts_per_step"],
            accum=accum,
            peft=m["peft"],
            **s,
        )
    )
    lines.append(PROFILE.format(notes=result.get("notes", "")))
    return "\n".join(lines)


def section(cfg: dict[str, Any]) -> list[str]:
    s = cfg["settings"]
    title = "LoRA (r=16, alpha=32, all-linear)" if s["lora"] else "Full fine-tuning"
    if s.get("fixed_length"):
        title += ", fixed length (every completion exactly max_new_tokens, both sides)"
    if s.get("amp"):
        title += "; bf16 autocast on both sides (ours `mixed_precision: bf16`, TRL `bf16=True`)"
    if s.get("bf16_rollouts"):
        title += (
            "; ours samples from a bfloat16 copy (`rollout_dtype: bfloat16`, importance "
            "weights on), TRL from its float32 weights: a lever, not equal settings"
        )
    lines = [
        f"## {title}",
        "",
        f"{s['prompts_per_step']} prompts x G={s['g']}, max_new_tokens={s['max_new_tokens']}, "
        f"{s['steps']} steps per run (the first is a warm-up, left out), "
        f"{len(cfg['runs']['ours'])} runs per side, A/B interleaved. Medians over the "
        "measured steps; RSS: the peak over runs.",
        "",
        "| phase | ours | TRL | ours/TRL |",
        "|---|---|---|---|",
    ]
    ours, trl, ratio = cfg["ours"], cfg["trl"], cfg["ratio_ours_over_trl"]
    rows = [
        ("generation (s)", "generation", 1.0, "{:.2f}"),
        ("reward (s)", "reward", 1.0, "{:.3f}"),
        ("update (s)", "update", 1.0, "{:.2f}"),
        ("**step (s)**", "step_total", 1.0, "{:.2f}"),
        ("tokens generated / step", "tokens", 1.0, "{:.0f}"),
        ("generation ms / token", "s_per_token_generation", 1e3, "{:.1f}"),
        ("update ms / token", "s_per_token_update", 1e3, "{:.1f}"),
        ("**step ms / token**", "s_per_token_step_total", 1e3, "{:.1f}"),
        ("peak RSS (GiB)", "peak_rss_gib", 1.0, "{:.2f}"),
    ]
    for label, key, scale, f in rows:
        if key not in ours:  # a result written before the row existed
            continue
        r = ratio.get(key)
        r_s = f"{r:.2f}x" if r else "-"
        lines.append(
            f"| {label} | {f.format(ours[key] * scale)} | {f.format(trl[key] * scale)} | {r_s} |"
        )
    lines += ["", "Raw, per run (seconds of each step; the first is the warm-up):", ""]
    lines += ["| side | repeat | step s | generation s | update s | tokens | RSS GiB | load |"]
    lines += ["|---|---|---|---|---|---|---|---|"]
    for rep in range(len(cfg["runs"]["ours"])):
        for side in ("ours", "trl"):
            r = cfg["runs"][side][rep]

            def col(key: str, f: str = "{:.1f}", steps: list = r["steps"]) -> str:
                return ", ".join(f.format(x[key]) for x in steps)

            lines.append(
                f"| {side} | {rep} | {col('step_total')} | {col('generation')} | "
                f"{col('update')} | {col('tokens', '{:.0f}')} | {r['peak_rss_gib']:.2f} | "
                f"{r['load_before'][0]:.1f} -> {r['load_after'][0]:.1f} |"
            )
    lines.append("")
    return lines


def fmt_load(load: Any) -> str:
    return "/".join(f"{x:.1f}" for x in load)
