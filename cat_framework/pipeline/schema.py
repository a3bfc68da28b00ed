"""The pydantic schema of a pipeline file (everything but the components' own params).

A component is written as a mapping whose selector key names it (``backend:`` for roles,
``dataset:`` for data, ``name:`` for aggregators and rewards); every other key is a parameter
validated by that component's ``Params``. A bare string is shorthand for ``{selector: string}``.
Defaults follow the paper (Jayalath et al., arXiv 2509.14234): G=8, LR 5e-7, KL 1e-3.

Every count has an upper bound far above any real run but far below what exhausts memory, so a
typo such as ``n: 1000000000`` fails at ``validate`` instead of after the run directory exists.
"""

from __future__ import annotations

import re
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from cat_framework.confine import MAX_NAME_BYTES
from cat_framework.engine.grpo_losses import LossType

Mode = Literal["evaluate", "train", "sft"]
#: role references allowed instead of a backend spec, per role
ROLE_CHOICES = {
    "anchor": ("initial-policy", "policy"),
    "judge": ("anchor", "policy", "initial-policy"),
}


#: upper bounds of sizes (see the module docstring)
MAX_ROLLOUTS = 1024
MAX_TOKENS = 262_144
MAX_STEPS = 10_000_000
MAX_BATCH = 1_000_000
MAX_SEED = 2**32 - 1  # numpy's limit; torch and random accept it too
MAX_THREADS = 4096
#: what a run name may not contain: it would leave (or not name) a folder inside output.dir
_NOT_PLAIN = re.compile(r"[/\\:\x00]|\.\.|^\s*\.?\s*$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _shorthand(selector: str, value: Any) -> Any:
    return {selector: value} if isinstance(value, str) else value


class ComponentSpec(BaseModel):
    """A component selector plus its params (checked later against the component's Params)."""

    model_config = ConfigDict(extra="allow")

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class BackendSpec(ComponentSpec):
    backend: str = Field("transformers", description="Registered backend name.")


class DatasetSpec(ComponentSpec):
    dataset: str = Field(description="Registered dataset name, e.g. math500, gsm8k, healthbench.")


class NamedSpec(ComponentSpec):
    name: str = Field(description="Registered component name.")


class Models(Strict):
    """Roles (DESIGN.md section 2). Anchor and judge may reuse another role by name."""

    policy: BackendSpec = Field(description="The model sampled and trained.")
    anchor: BackendSpec | Literal["initial-policy", "policy"] = Field(
        "initial-policy",
        description="Frozen pi_0 for synthesis and rubrics: 'initial-policy' shares the policy's "
        "initial weights (with LoRA: adapters disabled, no copy), or a backend spec.",
    )
    judge: BackendSpec | Literal["anchor", "policy", "initial-policy"] = Field(
        "anchor",
        description="Scores rollouts against rubric criteria: a role name or a backend spec.",
    )

    @field_validator("policy", mode="before")
    @classmethod
    def _policy_shorthand(cls, v: Any) -> Any:
        return {"model": v} if isinstance(v, str) else v

    @field_validator("anchor", "judge", mode="before")
    @classmethod
    def _role(cls, v: Any, info: ValidationInfo) -> Any:
        allowed = ROLE_CHOICES[info.field_name]
        if isinstance(v, str):
            if v not in allowed:
                raise ValueError(
                    f"{v!r} is not a role; use one of {', '.join(allowed)} "
                    "or a backend mapping such as {backend: transformers, model: ...}"
                )
            return v
        if isinstance(v, dict):
            return BackendSpec(**v)
        raise ValueError("expected a role name or a backend mapping")


class Data(Strict):
    train: DatasetSpec | None = Field(None, description="Prompts to train on (train, sft).")
    eval: DatasetSpec | None = Field(
        None, description="Prompts to evaluate on (evaluate, periodic)."
    )

    @field_validator("train", "eval", mode="before")
    @classmethod
    def _dataset_shorthand(cls, v: Any) -> Any:
        return _shorthand("dataset", v)


class Rollouts(Strict):
    """Sampling of the G policy rollouts per prompt."""

    n: int = Field(8, ge=1, le=MAX_ROLLOUTS, description="G: rollouts per prompt (paper: 8).")
    temperature: float = Field(1.0, ge=0.0, description="Sampling temperature (0 = greedy).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    top_k: int = Field(0, ge=0, le=MAX_BATCH, description="Top-k sampling (0 = off).")
    max_new_tokens: int = Field(
        1536,
        ge=1,
        le=MAX_TOKENS,
        description="Generation budget (paper: 1536 math, 1024 HealthBench).",
    )
    stop: list[str] = Field(default_factory=list, description="Extra stop strings.")
    reference_n: int | None = Field(
        None,
        ge=1,
        description="Rollouts the reference is built from (default: n). More than n samples "
        "reference_n, builds the reference from all of them and trains on the first n.",
    )

    @field_validator("reference_n")
    @classmethod
    def _reference_n(cls, v: int | None, info: ValidationInfo) -> int | None:
        n = info.data.get("n")
        if v is not None and isinstance(n, int) and v < n:
            raise ValueError(f"reference_n ({v}) must be >= n ({n}): GRPO trains on the first n")
        return v

    @property
    def sampled(self) -> int:
        """Rollouts sampled per prompt (``reference_n``, else ``n``)."""
        return self.reference_n or self.n


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


class Eval(Strict):
    """Test-time comparison of reference estimators (mode: evaluate, periodic evaluation)."""

    aggregators: list[NamedSpec] = Field(
        default_factory=lambda: [NamedSpec(name="single")],
        min_length=1,
        description="Aggregators compared side by side on the same rollouts.",
    )
    scorer: NamedSpec | None = Field(
        None,
        description="Reward deriver that grades references against gold for freeform tasks "
        "(e.g. human_rubric); math answers are checked for equivalence with the gold answer.",
    )
    limit: int | None = Field(
        None, ge=1, le=MAX_BATCH * 1000, description="Evaluate on the first N prompts only."
    )
    batch_size: int = Field(
        8, ge=1, le=MAX_BATCH, description="Prompts sampled per policy generate call."
    )
    bootstrap: int = Field(
        1000, ge=0, le=1_000_000, description="Bootstrap resamples for confidence intervals."
    )
    confidence: float = Field(0.95, gt=0.0, lt=1.0, description="Confidence level of intervals.")

    @field_validator("aggregators", mode="before")
    @classmethod
    def _names(cls, v: Any) -> Any:
        return [_shorthand("name", x) for x in v] if isinstance(v, list) else v

    @field_validator("scorer", mode="before")
    @classmethod
    def _scorer(cls, v: Any) -> Any:
        return _shorthand("name", v)


class Output(Strict):
    dir: str = Field("runs", description="Parent directory of run directories.")
    run_name: str | None = Field(
        None,
        description="Run directory name (default: name + time): a plain name, created inside "
        "`dir` (no path separators or '..', at most 255 bytes).",
    )
    secret_keys: list[str] = Field(
        default_factory=list,
        max_length=1000,
        description="Names of more keys whose values are secrets (e.g. an extra_body header): "
        "masked like api_key in config.yaml, the report, logs, errors and TensorBoard.",
    )

    @field_validator("run_name")
    @classmethod
    def _plain_name(cls, v: str | None) -> str | None:
        # a name with a separator or '..' would write the run outside `dir`
        if v is not None and _NOT_PLAIN.search(v):
            raise ValueError(
                f"run_name {v!r} must be a plain folder name (no '/', '\\', ':' or '..'): "
                "the run is written inside output.dir; to write elsewhere, change output.dir"
            )
        size = len(v.encode("utf-8", "surrogatepass")) if v is not None else 0
        if size > MAX_NAME_BYTES:  # the run would fail creating its folder
            raise ValueError(
                f"run_name {v[:40]!r}... is {size} bytes long, and a folder name can have at "
                f"most {MAX_NAME_BYTES} (the filesystem's limit): choose a shorter name"
            )
        return v


class PipelineConfig(Strict):
    """A whole pipeline file."""

    name: str = Field(description="Experiment name (used for the run directory).")
    description: str | None = Field(None, description="Free text.")
    mode: Mode = Field(description="evaluate (test-time CaT) | train (CaT-RL) | sft (CaT-SFT).")
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="Seeds sampling, shuffling and initialisation."
    )
    requires: list[str] = Field(
        default_factory=list, description="Plugins (distribution names) this pipeline needs."
    )
    threads: Literal["auto"] | int = Field(
        "auto",
        description="torch threads per process: 'auto' shares the usable cores among the run's "
        "local processes and the helper processes it starts (OMP_NUM_THREADS wins over auto), "
        "or a count that wins over everything (docs/scaling.md#cpu-threads).",
    )
    models: Models
    data: Data = Field(default_factory=Data)
    rollouts: Rollouts = Field(default_factory=Rollouts)
    aggregator: NamedSpec | None = Field(None, description="Reference estimator (train, sft).")
    reward: NamedSpec | None = Field(None, description="Reward deriver (train).")
    trainer: Trainer = Field(default_factory=Trainer)
    eval: Eval = Field(default_factory=Eval)
    output: Output = Field(default_factory=Output)

    @field_validator("aggregator", "reward", mode="before")
    @classmethod
    def _named(cls, v: Any) -> Any:
        return _shorthand("name", v)

    @field_validator("threads", mode="before")
    @classmethod
    def _threads(cls, v: Any) -> Any:
        ok = v == "auto" or (type(v) is int and 1 <= v <= MAX_THREADS)
        if not ok:
            raise ValueError(
                f"threads must be 'auto' or a whole number from 1 to {MAX_THREADS} (torch "
                f"threads per process), not {v!r}"
            )
        return v


#: what each mode needs: (path, why)
MODE_REQUIREMENTS: dict[str, list[tuple[tuple[str, ...], str]]] = {
    "evaluate": [(("data", "eval"), "mode 'evaluate' needs prompts to evaluate on")],
    "train": [
        (("data", "train"), "mode 'train' needs prompts to train on"),
        (("aggregator",), "mode 'train' needs an aggregator to build references"),
        (("reward",), "mode 'train' needs a reward deriver"),
    ],
    "sft": [
        (("data", "train"), "mode 'sft' needs prompts to train on"),
        (("aggregator",), "mode 'sft' needs an aggregator to synthesize targets"),
    ],
}


#: what :func:`default_of` returns for a key the schema does not define
NO_DEFAULT = object()


def default_of(key: str) -> Any:
    """The schema's default for a dotted config key (``"trainer.async_rollouts"``), or
    :data:`NO_DEFAULT`. A run's ``config.yaml`` written before a key existed lacks it; at its
    default the key changes nothing, so resuming such a run is not a change of results."""
    model: Any = PipelineConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = getattr(model, "model_fields", None)
        if not isinstance(fields, dict) or part not in fields:
            return NO_DEFAULT
        field = fields[part]
        if i == len(parts) - 1:
            if field.is_required():
                return NO_DEFAULT
            return field.get_default(call_default_factory=True)
        nested = [t for t in (field.annotation, *get_args(field.annotation))
                  if isinstance(t, type) and issubclass(t, BaseModel)]  # fmt: skip
        if not nested:
            return NO_DEFAULT
        model = nested[0]
    return NO_DEFAULT
