"""The base classes plugins implement.

A component is a class with a registered ``name``, a nested pydantic ``Params`` model that
validates its pipeline parameters (unknown keys are errors: ``extra="forbid"``), and batched
methods: a batch is what makes a backend fast, so a plugin never gets one item at a time.

Instances are built by the pipeline with validated params and the run's :class:`Roles`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from cat_framework.errors import NotSupportedError
from cat_framework.types import (
    Completion,
    GenerationRequest,
    Message,
    Prompt,
    Reference,
    Rewards,
    RolloutGroup,
)

if TYPE_CHECKING:  # torch is a dependency of training only
    import torch

Task = Literal["math", "freeform"]


class ComponentParams(BaseModel):
    """Base of every ``Params`` model: unknown keys are rejected so typos surface at validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Component:
    """Shared construction: ``Component(params, roles=...)``; ``params`` may be a mapping."""

    kind: ClassVar[str] = "component"
    name: ClassVar[str] = ""
    Params: ClassVar[type[ComponentParams]] = ComponentParams
    #: where the pipeline configures it (``models.judge``), for messages that name a key; set
    #: when the pipeline builds it, None for a component built by hand
    config_path: str | None = None

    def __init__(
        self,
        params: ComponentParams | Mapping[str, Any] | None = None,
        *,
        roles: Roles | None = None,
    ) -> None:
        if params is None:
            params = {}
        if not isinstance(params, self.Params):
            params = self.Params.model_validate(dict(params))
        self.params = params
        self.roles = roles

    @classmethod
    def describe(cls) -> str:
        """First paragraph of the class docstring (shown by ``cat-framework components``)."""
        doc = (cls.__doc__ or "").strip()
        return doc.split("\n\n")[0].replace("\n", " ") if doc else "Undocumented"

    def require_roles(self) -> Roles:
        if self.roles is None:
            raise RuntimeError(f"{type(self).__name__} needs model roles but was built without any")
        return self.roles


@dataclass(frozen=True)
class WeightChecksums:
    """Float64 sums of the weights a backend serves, by checkpoint (``state_dict``) name. A
    weight the backend stores fused with others is keyed by its parts' names joined by ``+``
    (its sum is theirs: a sum is additive over concatenation). The trainer compares each with
    its own tensors' sums, cast to ``dtype`` first (the engine holds exactly that rounding of
    them): they agree when ``|served - trained| <= tol * sum(|trained|)``, where ``tol`` is float64
    summation noise (:data:`EXACT_RTOL`) for the keys in ``exact`` (read element by element, so
    any differing element shows unless differences cancel) and ``rtol`` for the others (read
    through a kernel, e.g. an all-ones probe)."""

    sums: dict[str, float]
    rtol: float
    dtype: Any = None  # a torch.dtype; None: the trainer's own
    exact: frozenset[str] = frozenset()
    source: str = ""  # which server(s) reported them, for the error message


#: relative tolerance of a sum read element by element: float64 summation order only
EXACT_RTOL = 1e-9


@dataclass(frozen=True)
class ServerCommand:
    """A server a backend talks to, as the command that starts it (``cat-framework
    serve-command``): its environment, its argv, and the URL the backend expects it at."""

    url: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()

    def shell(self) -> str:
        """One line for a POSIX shell."""
        import shlex

        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env)
        return f"{env} {shlex.join(self.argv)}".strip()


class Backend(Component, ABC):
    """Turns prompts into text and token log-probabilities."""

    kind = "backend"

    @abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        """Sample ``request.n`` completions for every request; one inner list per request."""

    @abstractmethod
    def score(
        self,
        contexts: Sequence[Sequence[Message] | str],
        continuations: Sequence[str | Sequence[int]],
    ) -> list[list[float]]:
        """Per-token log-probs of each continuation given its context (teacher forcing, T=1).

        A context is chat messages (templated with the generation prompt) or raw text; a
        continuation is text or the exact token ids (preferred: no re-tokenisation drift).
        """

    #: when this backend samples a policy being trained but cannot wrap a module itself (an
    #: engine such as vLLM), the registered :class:`TrainableBackend` that loads the same model
    #: for the trainer; ``None``: the one trainable backend installed
    trains_with: ClassVar[str | None] = None

    #: one sampler serves every trainer process (servers reached over the network): the main
    #: process alone pushes weights to it and checks them, the others wait for the outcome
    shared_sampler: ClassVar[bool] = False

    @classmethod
    def helper_cores(cls, params: ComponentParams) -> int:
        """CPU cores that processes this backend would start beside the run's own keep busy (an
        engine core in its own process), given its validated params; asked before it is built,
        so the run gives its own torch threads only the rest (``docs/scaling.md#cpu-threads``).
        Default 0: it computes in the calling process, or on another machine."""
        return 0

    @classmethod
    def server_commands(cls, params: ComponentParams) -> list[ServerCommand]:
        """The servers this backend, with these validated params, expects to find running,
        as the commands that start them (``cat-framework serve-command``). Default: none."""
        return []

    def update_weights(self, named_tensors: Iterable[tuple[str, Any]]) -> None:
        """Load new weights (e.g. the trainer's policy after an optimizer step)."""
        raise NotSupportedError(f"backend {self.name!r} cannot receive weight updates")

    @property
    def supports_update_weights(self) -> bool:
        return type(self).update_weights is not Backend.update_weights

    def release_memory(self) -> bool:
        """Free what this backend holds on the accelerator until its next :meth:`update_weights`
        (a colocated engine while the trainer updates: its weights and KV cache would otherwise
        sit beside the optimizer states). ``False``: it cannot (the default)."""
        return False

    def logprob_support(self) -> Literal["full", "sampled", "raw"]:
        """What the log-probs of its sampled tokens (``Completion.logprobs``) are: ``"full"``,
        ``log_softmax(logits / temperature)`` over the whole vocabulary (the default, the
        ``transformers`` backend's); ``"sampled"``, the distribution actually sampled from, top-k
        and top-p renormalised over the kept tokens (vLLM's ``processed_logprobs``); ``"raw"``,
        the model's temperature-1 log-probs. The trainer computes its own on the same support
        before it compares them (importance weights)."""
        return "full"

    def weight_checksums(self) -> WeightChecksums | None:
        """What this backend serves now, for the trainer's weight-parity check after
        :meth:`update_weights` (an engine that silently kept an old tensor would sample from
        weights the trainer never had). ``None``: it cannot tell (the trainer logs that no check
        is possible)."""
        return None

    def close(self) -> None:
        """Release processes, servers or memory. Safe to call twice."""


class TrainableBackend(Backend):
    """A backend around a ``torch.nn.Module`` that the trainer can optimise in place.

    The trainer needs more than text in, text out: the module itself (``model``) to compute
    gradients, the tokenizer and the exact prompt token ids (``encode_context``) so training
    rows are the tokens that were sampled, a way to serve *another* module with the same
    settings (``from_model``: the frozen pi_0, a gathered copy of sharded weights), and
    ``update_weights`` to receive tensors by ``state_dict`` name. ``generate``/``score`` must run
    on ``model`` as it is now, so rollouts come from the weights being trained.

    A plugin that subclasses this can serve a training policy; the engine finds it by this
    contract, never by name.
    """

    #: the module being served (and trained): a ``torch.nn.Module``
    model: torch.nn.Module
    #: its tokenizer (Hugging Face interface: ``eos_token_id``, ``pad_token_id``, ``__call__``)
    tokenizer: Any

    @classmethod
    @abstractmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        tokenizer: Any,
        params: ComponentParams | Mapping[str, Any] | None = None,
    ) -> TrainableBackend:
        """A backend serving ``model`` itself (its tensors, not a copy) with ``params``."""

    @abstractmethod
    def encode_context(self, context: Sequence[Message] | str) -> list[int]:
        """The prompt token ids ``generate`` would feed the model for ``context``."""

    @abstractmethod
    def update_weights(self, named_tensors: Iterable[tuple[str, Any]]) -> None:
        """Copy tensors into ``model`` in place, by ``state_dict`` name."""

    #: set by the engine when ``model`` is sharded over processes and generates without a
    #: gathered copy (``trainer.fsdp_gather_for_generation: false``): each forward pass of
    #: ``model`` is then a collective. Call it before *every* forward of ``model``
    #: (``generate`` and ``score``); it returns when all processes run that forward together,
    #: after running :meth:`idle_forward` for processes that are further along
    lockstep: Callable[[], None] | None = None

    def idle_forward(self) -> None:
        """One minimal forward pass of ``model`` (no gradients, result unused): what a process
        runs while another one needs a forward it has no work for. Implementing it declares
        that this backend can generate in lock-step (see ``lockstep``)."""
        raise NotSupportedError(f"backend {self.name!r} cannot generate in lock-step")

    @classmethod
    def supports_lockstep(cls) -> bool:
        """Whether the backend implements :meth:`idle_forward`, so the trainer may generate on
        FSDP2 shards (``trainer.fsdp_gather_for_generation: false``) instead of refusing."""
        return cls.idle_forward is not TrainableBackend.idle_forward


class Aggregator(Component, ABC):
    """Turns each group of rollouts into one :class:`Reference`."""

    kind = "aggregator"
    #: the task kinds this aggregator is defined for (majority vote needs final answers)
    tasks: ClassVar[frozenset[str]] = frozenset({"math", "freeform"})
    #: True for the rollouts' own answer vote: its params' ``fallback`` and ``mode`` are then
    #: how the run votes, and the reference diagnostics' majority reads rollouts the same way
    #: (``engine/diagnostics.majority_reading``), so a vote never disagrees with itself
    is_answer_vote: ClassVar[bool] = False

    @abstractmethod
    def aggregate(self, groups: Sequence[RolloutGroup]) -> list[Reference]:
        """One reference per group, in order. Must never read ``prompt.gold_answer``/``rubric``."""


class RewardDeriver(Component, ABC):
    """Turns groups and their references into one reward per rollout."""

    kind = "reward_deriver"
    tasks: ClassVar[frozenset[str]] = frozenset({"math", "freeform"})

    @abstractmethod
    def derive(
        self, groups: Sequence[RolloutGroup], references: Sequence[Reference]
    ) -> list[Rewards]:
        """One :class:`Rewards` per group, aligned with its rollouts."""


class Dataset(Component, ABC):
    """A source of prompts."""

    kind = "dataset"
    #: "math" (final answers checkable) or "freeform" (open-ended); may depend on params
    task: ClassVar[Task] = "math"

    @property
    def task_kind(self) -> Task:
        return getattr(self.params, "task", None) or self.task

    @abstractmethod
    def load(self) -> list[Prompt]:
        """All prompts of the configured split, in a deterministic order."""


@dataclass
class Roles:
    """The backends a run binds to roles (DESIGN.md section 2).

    ``anchor`` is the frozen initial policy; ``judge`` defaults to the anchor.
    """

    policy: Backend
    anchor: Backend
    judge: Backend

    def distinct(self) -> list[Backend]:
        seen: dict[int, Backend] = {}
        for b in (self.policy, self.anchor, self.judge):
            seen.setdefault(id(b), b)
        return list(seen.values())


COMPONENT_KINDS: dict[str, type[Component]] = {
    "aggregator": Aggregator,
    "reward_deriver": RewardDeriver,
    "backend": Backend,
    "dataset": Dataset,
}

__all__ = [
    "COMPONENT_KINDS",
    "Aggregator",
    "Backend",
    "Component",
    "ComponentParams",
    "Dataset",
    "RewardDeriver",
    "Roles",
    "Task",
    "TrainableBackend",
    "WeightChecksums",
]
