"""The ``trainer:`` section of a pipeline: GRPO (``mode: train``) and CaT-SFT (``mode: sft``)
settings, and LoRA. Part of :mod:`cat_framework.pipeline.schema`, which re-exports both."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from cat_framework.engine.grpo_losses import LossType
from cat_framework.pipeline.specs import MAX_BATCH, MAX_STEPS, NamedSpec, Strict, _shorthand


class Lora(Strict):
    r: int = Field(16, ge=1, le=65536, description="LoRA rank.")
    alpha: int = Field(32, ge=1, le=MAX_BATCH, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or 'all-linear'."
    )


class Trainer(Strict):
    """GRPO (mode: train) and SFT (mode: sft) settings."""

    steps: int = Field(1000, ge=1, le=MAX_STEPS, description="Optimizer steps (paper: <= 1000).")
    prompts_per_step: int = Field(
        32, ge=1, le=MAX_BATCH, description="Prompts per step (x G rollouts)."
    )
    micro_batch_size: int = Field(
        8, ge=1, le=MAX_BATCH, description="Sequences per forward/backward pass."
    )
    learning_rate: float = Field(5e-7, gt=0.0, description="Paper: 5e-7, constant.")
    lr_scheduler: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="Schedule."
    )
    warmup_steps: int = Field(0, ge=0, le=MAX_STEPS, description="Linear warm-up steps.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float | None = Field(1.0, gt=0.0, description="Gradient clipping (None = off).")
    nonfinite_stop_after: int = Field(
        3,
        ge=1,
        le=MAX_STEPS,
        description="An update whose loss or gradient is NaN or infinite is skipped (the weights "
        "never see it; counted as train/nonfinite_steps); this many in a row stop the run.",
    )
    beta: float = Field(1e-3, ge=0.0, description="KL coefficient (0 = no reference forward).")
    kl_in: Literal["loss", "reward"] = Field(
        "loss",
        description="'loss': k3 KL term in the loss; 'reward': KL penalty on rewards (paper).",
    )
    epsilon: float = Field(0.2, gt=0.0, description="Lower clip range of the policy ratio.")
    epsilon_high: float | None = Field(
        None, gt=0.0, description="Upper clip range (None = epsilon)."
    )
    loss_type: LossType = Field(  # type: ignore[valid-type]
        "grpo",
        description="How token losses are aggregated (docs/training.md#the-loss).",
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="Divide advantages by the group's std, the batch's std, or nothing."
    )
    num_iterations: int = Field(
        1, ge=1, le=1000, description="mu: optimisation passes per generation batch."
    )
    mask_truncated_completions: bool = Field(
        False, description="Drop truncated rollouts from loss."
    )
    vllm_importance_sampling: bool = Field(
        False, description="Correct for engine/trainer log-prob mismatch (vLLM rollouts)."
    )
    importance_cap: float = Field(
        3.0,
        gt=0,
        description="Truncate per-token importance weights at this value (TRL's token_truncate "
        "cap); is_weight/raw_mean and is_weight/capped_share log them before truncation.",
    )
    kl_in_group_std: bool = Field(
        True,
        description="With kl_in: reward, whether the KL penalty is part of the reward that is "
        "group-centred and divided by the group std (true, as verl's use_kl_in_reward) or stays "
        "out of the normalisation (false: task-reward group advantage minus the penalty's "
        "deviation from its group mean, so a group of equal task rewards gets only a beta-scale "
        "KL signal). kl/only_signal_groups counts such groups.",
    )
    async_rollouts: int = Field(
        0,
        ge=0,
        le=1,
        description="1: sample the next step's rollouts while this step updates (one-step-off; "
        "staleness corrected by importance weights). mode: train only.",
    )
    lora: Lora | None = Field(None, description="Train LoRA adapters instead of all weights.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory.")
    logprob_chunk: int = Field(
        256,
        ge=0,
        le=1 << 20,
        description="Tokens per chunk of the LM head fused with the log-softmax in the update "
        "(no full-vocabulary logits; docs/training.md#memory); 0: plain logits.",
    )
    mixed_precision: Literal["no", "bf16", "fp16"] = Field("no", description="accelerate setting.")
    rollout_dtype: Literal["same", "bfloat16", "float16"] = Field(
        "same",
        description="Weights rollouts are sampled from, for a policy that samples in this "
        "process: 'same', the trained ones; 'bfloat16'/'float16', a copy of them at that "
        "precision refreshed after every update (a decode step reads half the bytes; "
        "docs/performance.md#rollouts-from-a-bfloat16-copy). The log-prob mismatch is "
        "importance-weighted as for vLLM (vllm_importance_sampling is implied).",
    )
    fsdp_gather_for_generation: bool = Field(
        True,
        description="FSDP2 only: sample from a whole generation copy refilled after every step "
        "(memory for speed); false: generate on the sharded weights, every process decoding in "
        "lock-step until all are done (docs/scaling.md). Ignored without FSDP2.",
    )
    save_every: int = Field(
        50, ge=0, le=MAX_STEPS, description="Checkpoint every N steps (0 = only at the end)."
    )
    keep_checkpoints: int = Field(2, ge=1, le=10_000, description="Checkpoints kept on disk.")
    eval_every: int = Field(
        0, ge=0, le=MAX_STEPS, description="Evaluate every N steps (0 = never)."
    )
    eval_before: bool = Field(
        False, description="Evaluate before the first step too (step 0: the test-time baseline)."
    )
    sft_epochs: int = Field(
        1, ge=1, le=10_000, description="Epochs over synthesized references (mode: sft)."
    )
    sft_loss: Literal["token_mean", "sequence_mean"] = Field(
        "token_mean",
        description="mode: sft. 'sequence_mean': each reference's token mean, averaged over "
        "references (the paper, Eq. 13: every reference weighs alike); 'token_mean': one mean "
        "over all target tokens (long references weigh more). Also the validation loss.",
    )
    sft_validation: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="mode: sft. Share of the prompts with a reference held out (their anchor "
        "references, never gold) for the validation loss of early stopping (the paper); the "
        "run ends with the weights of the lowest one. 0: no validation, all train, last weights.",
    )
    sft_validate_every: int = Field(
        0,
        ge=0,
        le=MAX_STEPS,
        description="mode: sft. Steps between validation losses (0: at each epoch's end); the "
        "last step is always validated.",
    )
    sft_patience: int | None = Field(
        1,
        ge=1,
        le=MAX_STEPS,
        description="mode: sft. Validations in a row without a new lowest loss that stop "
        "training (None: never stop early; the run still ends with the best weights).",
    )
    reference_fallback: NamedSpec | None = Field(
        None,
        description="Aggregator whose reference replaces a math reference that commits to no "
        "final answer (e.g. majority). Default: none, such a group gets no learning signal.",
    )

    @field_validator("reference_fallback", mode="before")
    @classmethod
    def _fallback(cls, v: Any) -> Any:
        return _shorthand("name", v)
