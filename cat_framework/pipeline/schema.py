"""The pydantic schema of a pipeline file (everything but the components' own params).

A component is written as a mapping whose selector key names it (``backend:`` for roles,
``dataset:`` for data, ``name:`` for aggregators and rewards); every other key is a parameter
validated by that component's ``Params``. A bare string is shorthand for ``{selector: string}``.
Defaults follow the paper (Jayalath et al., arXiv 2509.14234): G=8, LR 5e-7, KL 1e-3.

Every count has an upper bound far above any real run but far below what exhausts memory, so a
typo such as ``n: 1000000000`` fails at ``validate`` instead of after the run directory exists.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from cat_framework.confine import MAX_NAME_BYTES
from cat_framework.pipeline.specs import (  # noqa: F401  (re-exported)
    _NOT_PLAIN,
    MAX_BATCH,
    MAX_ROLLOUTS,
    MAX_SEED,
    MAX_STEPS,
    MAX_THREADS,
    MAX_TOKENS,
    BackendSpec,
    ComponentSpec,
    DatasetSpec,
    NamedSpec,
    Strict,
    _shorthand,
)
from cat_framework.pipeline.trainer_schema import Lora, Trainer  # noqa: F401

Mode = Literal["evaluate", "train", "sft"]
#: role references allowed instead of a backend spec, per role
ROLE_CHOICES = {
    "anchor": ("initial-policy", "policy"),
    "judge": ("anchor", "policy", "initial-policy"),
}


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
    disjoint: bool = Field(
        False,
        description="Refuse a run, before any model loads, when a data.eval question also "
        "occurs in data.train (the same conversation, case and spacing aside). Either way "
        "the run records duplicates and overlap in data.json (docs/datasets.md).",
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
