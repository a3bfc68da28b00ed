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
## Profile of our side, and what remains

`py-spy record -r 50 --format raw -- python -m cat_framework run ...` on a 2-step full
fine-tuning run (G = 8, 2 prompts, 64 new tokens, 2 threads; 2,495 samples):

- Generation (`TransformersBackend._generate_batch`): 98.3 % of its samples are inside the
  model's forward, 1.4 % in `sample()` (temperature, top-k/top-p, the draw, the log-prob),
  0.3 % in `select_rows` (KV-cache shrinking); the per-token Python work (stop checks,
  bookkeeping) does not register. No framework overhead to remove there.
- Update (`GRPOStep`, outside generation): backward 58 %, the training forward
  (`completion_logps`) 32 %, AdamW 6.6 %, teacher 2 %, gradient clipping 0.4 %; self time is
  `Linear.forward` and autograd's engine. Log-softmax and entropy over the vocabulary are < 1 %.
- A decode step of this model on this CPU costs ~39 ms for 1 row and ~73 ms for 16 rows (KV
  cache, 2 threads): it is bound by reading the 0.54 GB of fp32 weights, not by the rows. So
  generation wins by running fewer decode steps (finished rows leave the batch; each prompt is
  prefilled once per group), not per token.

Fixes made from the profile, both in the measured code:
- each update micro-batch is forwarded at its own width (`TokenBatch.trimmed()`: the columns
  that are padding in every row of the micro-batch are skipped; log-probs are identical,
  `tests/engine/test_sequences_trim.py`);
- micro-batches are cut from the step's rows sorted by completion length (`GRPOStep._micro`;
  the loss is normalised by global counts, so the gradient is the same sum), so the trim skips
  most padding. {sort_note}

What remains between the ratio above and 0.6x, and the next levers:

1. The update is the model's own forward and backward on the tokens it must see: only fewer
   FLOPs (LoRA does not help on CPU: peft's extra matmuls) reduce it further.
2. **Generation is weight-bandwidth bound**: fewer decode steps per token (a larger batch:
   more prompts per step, or sampling the next step during this update, `async_rollouts`,
   which on a 2-core CPU competes for the same cores) or fewer bytes per step (bf16 weights:
   not equal settings here) are the levers; a compiled static-cache decode would cut the
   per-step Python and kernel-launch cost that the ~39 ms single-row step carries.
"""


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
    lines.append(PROFILE.format(sort_note=result.get("sort_note", "not measured in this run.")))
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
