"""In-process backend on a transformers causal LM.

It samples with its own KV-cached decoding loop rather than ``model.generate``: the loop needs the
*unfiltered* log-probs of each sampled token, per-request sampling settings and seeds inside one
batch, stop strings and shrinking batches, which ``generate`` offers only through extra full-vocab
copies per step. ``benchmarks/generation.py`` compares both on the same batch.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, ValidationInfo, field_validator

from cat_framework import BackendError, Completion, ComponentParams, Roles
from cat_framework.components import TrainableBackend
from cat_framework.types import GenerationRequest, Message
from cat_plugins.backends.embedded import looks_local, model_source_problem, resolve_model_path
from cat_plugins.backends.sampling import eval_mode, left_pad, pack, sample, select_rows, sharded

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_SEED_MIX = 0x9E3779B97F4A7C15
#: score() keeps at most this many logits (rows x positions x vocab) alive: 1 GiB in fp32
_LOGITS_BUDGET = 2**28


class TransformersParams(ComponentParams):
    model: str = Field(
        "default",
        description="Hub id, local folder, or embedded model ('default', "
        "'embedded:smollm2-135m-instruct').",
    )
    tokenizer: str | None = Field(None, description="Tokenizer id or folder; default: the model's.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype; 'auto' is float32 on CPU, the checkpoint's on GPU."
    )
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto | cpu | cuda | cuda:N."
    )
    max_batch_tokens: int = Field(
        32768,
        gt=0,
        description="Micro-batch budget: rows x (padded prompt + max_new_tokens) per forward, "
        "bounding KV-cache and activation memory.",
    )
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra arguments to apply_chat_template, e.g. {enable_thinking: false}.",
    )
    trust_remote_code: bool = Field(False, description="Allow model code from the hub.")
    attn_implementation: str | None = Field(
        None, description="transformers attention kernel (sdpa, eager, flash_attention_2)."
    )

    @field_validator("model", "tokenizer")
    @classmethod
    def _loadable(cls, v: str | None, info: ValidationInfo) -> str | None:
        # only under `validate` (context check_files): a missing or non-model folder fails there
        if v is None or not (info.context or {}).get("check_files"):
            return v
        if info.field_name == "model":
            problem = model_source_problem(v)
        elif looks_local(v) and not Path(v).expanduser().exists():
            problem = f"{v}: no such tokenizer folder"
        else:
            problem = None
        if problem is not None:
            raise ValueError(problem)
        return v


@dataclass
class _Row:
    """One sample being generated."""

    request: int
    sample: int
    prompt: int  # index into the micro-batch's unique prompts
    seed: int
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish: str | None = None


class TransformersBackend(TrainableBackend):
    """Samples and scores with a transformers model in this process; can wrap the trainer's model.

    Log-probs: each sampled token's log-prob is ``log_softmax(logits / temperature)`` of the
    *unfiltered* next-token distribution (top-k / top-p only choose which tokens may be drawn),
    i.e. what a trainer recomputes with ``score(..., temperature=T)``. Greedy requests
    (``temperature <= 0``) report ``log_softmax(logits)``. Sampling applies temperature, then
    top-k, then top-p (as transformers and vLLM do).

    Token ids include the EOS token or the token that completed a stop string (the policy chose to
    stop: the trainer should learn it); ``text`` excludes EOS and everything from the stop string.

    Seeds: sample ``j`` of a request draws from its own generator seeded from ``(seed, j)``, so
    its output does not depend on how requests are batched; without a seed, the seed comes from
    torch's global RNG (``torch.manual_seed`` makes a run repeatable).
    """

    name = "transformers"
    Params = TransformersParams
    params: TransformersParams

    def __init__(
        self,
        params: TransformersParams | Mapping[str, Any] | None = None,
        *,
        roles: Roles | None = None,
        model: Any = None,
        tokenizer: Any = None,
    ) -> None:
        super().__init__(params, roles=roles)
        self.owns_model = model is None
        if model is None:
            model, tokenizer = self._load()
        elif tokenizer is None:
            raise BackendError("wrapping a model needs its tokenizer too")
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        # padding is masked out, so any id works: the tokenizer is not touched
        self.pad_id = next(
            i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None
        )
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos = eos if isinstance(eos, (list, tuple)) else [eos]
        self.eos_ids = {i for i in [*eos, tokenizer.eos_token_id] if i is not None}

    @classmethod
    def from_model(
        cls,
        model: Any,
        tokenizer: Any,
        params: TransformersParams | Mapping[str, Any] | None = None,
    ) -> TransformersBackend:
        """Serve ``model`` itself (its tensors, not a copy): what the trainer updates, this samples."""
        if isinstance(params, ComponentParams):
            values = params.model_dump(exclude_unset=True)
        else:
            values = dict(params or {})
        values.setdefault("model", str(getattr(model, "name_or_path", "") or "<wrapped>"))
        return cls(values, model=model, tokenizer=tokenizer)

    def _load(self) -> tuple[Any, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        p = self.params
        path = resolve_model_path(p.model)
        device = p.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError(f"device {device!r} requested but CUDA is not available")
        dtype = _DTYPES.get(p.dtype, torch.float32 if device == "cpu" else "auto")
        extra = {"attn_implementation": p.attn_implementation} if p.attn_implementation else {}
        problem = model_source_problem(path)
        if problem is not None:
            raise BackendError(f"could not load model {p.model!r}: {problem}")
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                resolve_model_path(p.tokenizer) if p.tokenizer else path,
                trust_remote_code=p.trust_remote_code,
            )
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype, trust_remote_code=p.trust_remote_code, **extra
            )
        except (OSError, ValueError) as exc:  # ValueError: a config transformers cannot read
            raise BackendError(f"could not load model {p.model!r}: {exc}") from exc
        return model.to(device).eval(), tokenizer

    def encode_context(self, context: Sequence[Message] | str) -> list[int]:
        """Token ids of a prompt: chat messages through the chat template (generation prompt
        added), raw text through the tokenizer with its usual special tokens."""
        tok = self.tokenizer
        if isinstance(context, str):
            return list(tok(context)["input_ids"])
        if not getattr(tok, "chat_template", None):
            raise BackendError(f"the tokenizer of {self.params.model!r} has no chat template")
        text = tok.apply_chat_template(
            [dict(m) for m in context],
            tokenize=False,
            add_generation_prompt=True,
            **self.params.chat_template_kwargs,
        )
        return list(tok(text, add_special_tokens=False)["input_ids"])

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        prompts = [self.encode_context(r.messages or r.text or "") for r in requests]
        seeds = [
            r.seed if r.seed is not None else int(torch.randint(0, 2**62, ()).item())
            for r in requests
        ]
        results: list[list[Completion | None]] = [[None] * r.n for r in requests]
        # sort by prompt length so micro-batches carry little padding
        order = sorted(range(len(requests)), key=lambda i: len(prompts[i]))
        units = [(i, j) for i in order for j in range(requests[i].n)]
        with eval_mode(self.model), self._no_grad():
            for batch in pack(
                units,
                lambda u: len(prompts[u[0]]) + requests[u[0]].max_new_tokens,
                self.params.max_batch_tokens,
            ):
                for row in self._generate_batch(batch, requests, prompts, seeds):
                    results[row.request][row.sample] = self._finish(row, requests[row.request])
        return [list(r) for r in results]  # type: ignore[arg-type]

    def _forward(self, **inputs: Any) -> Any:
        if self.lockstep is not None:  # sharded weights: every process runs this forward
            self.lockstep()
        return self.model(**inputs)

    def _no_grad(self) -> Any:
        # FSDP2's gathered weights must not become inference tensors: training reuses them
        # (sharded also in one process, where no lockstep hook is set)
        return torch.no_grad() if self.lockstep or sharded(self.model) else torch.inference_mode()

    def idle_forward(self) -> None:
        """One token through the model: a lock-step process with nothing left to generate."""
        ids = torch.tensor([[self.pad_id]], device=self.device)
        with eval_mode(self.model), torch.no_grad():
            self.model(input_ids=ids, use_cache=False, logits_to_keep=1)

    def _generate_batch(
        self,
        units: list[tuple[int, int]],
        requests: Sequence[GenerationRequest],
        prompts: list[list[int]],
        seeds: list[int],
    ) -> list[_Row]:
        dev = self.device
        uniq = list(dict.fromkeys(i for i, _ in units))  # each prompt prefilled once
        rows = [_Row(i, j, uniq.index(i), (seeds[i] * _SEED_MIX + j) % 2**63) for i, j in units]
        reqs = [requests[r.request] for r in rows]
        ids, mask = left_pad([prompts[i] for i in uniq], self.pad_id, dev)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        expand = torch.tensor([r.prompt for r in rows], device=dev)
        out = self._forward(
            input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1
        )
        cache, logits = out.past_key_values, out.logits[:, -1]
        if len(uniq) != len(rows) and not select_rows(cache, expand):
            # a cache kind without batch selection: prefill every row instead
            ids, mask, pos = ids[expand], mask[expand], pos[expand]
            out = self._forward(
                input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                logits_to_keep=1,
            )  # fmt: skip
            cache, logits, expand = out.past_key_values, out.logits[:, -1], None
        if expand is not None:
            logits, mask = logits[expand], mask[expand]
        next_pos = pos[:, -1].clone() if expand is None else pos[expand, -1]
        temp = torch.tensor([r.temperature for r in reqs], device=dev)
        top_k = torch.tensor([r.top_k for r in reqs], device=dev)
        top_p = torch.tensor([r.top_p for r in reqs], device=dev)
        gens = [torch.Generator(device=dev).manual_seed(r.seed) for r in rows]
        stops = [req.stop for req in reqs]
        stop_window = max((len(s) for st in stops for s in st), default=0) + 8
        live = list(range(len(rows)))  # batch position -> row
        for _ in range(max(r.max_new_tokens for r in reqs)):
            tokens, lps = sample(logits, temp, top_k, top_p, [gens[k] for k in live])
            for b, (k, t, lp) in enumerate(zip(live, tokens.tolist(), lps.tolist(), strict=True)):
                row = rows[k]
                if row.finish:  # done, not yet dropped from the batch
                    tokens[b] = self.pad_id
                    continue
                row.tokens.append(t)
                row.logprobs.append(lp)
                stopped = t in self.eos_ids or any(
                    s in self._decode(row.tokens[-stop_window:]) for s in stops[k]
                )
                if stopped or len(row.tokens) >= reqs[k].max_new_tokens:
                    row.finish = "stop" if stopped else "length"
                    tokens[b] = self.pad_id
            keep = [b for b, k in enumerate(live) if rows[k].finish is None]
            if not keep:
                break
            if len(keep) < len(live) and (len(live) - len(keep)) * 4 >= len(live):
                index = torch.tensor(keep, device=dev)
                if select_rows(cache, index):  # shrink the batch once a quarter of it is done
                    live = [live[b] for b in keep]
                    tokens, mask, next_pos = tokens[index], mask[index], next_pos[index]
                    temp, top_k, top_p = temp[index], top_k[index], top_p[index]
            next_pos = next_pos + 1
            mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
            out = self._forward(
                input_ids=tokens[:, None],
                attention_mask=mask,
                position_ids=next_pos[:, None],
                past_key_values=cache,
                use_cache=True,
            )
            cache, logits = out.past_key_values, out.logits[:, -1]
        return rows

    def _finish(self, row: _Row, request: GenerationRequest) -> Completion:
        """Text of a finished row; cuts at the earliest stop string, checked on the full text so
        the windowed check in the loop only decides when to stop early."""
        tokens, logprobs = row.tokens, row.logprobs
        finish = row.finish or "length"
        text = self._decode(tokens)
        if request.stop and any(s in text for s in request.stop):
            lo, hi = 1, len(tokens)  # smallest prefix whose text contains a stop string
            while lo < hi:
                mid = (lo + hi) // 2
                if any(s in self._decode(tokens[:mid]) for s in request.stop):
                    hi = mid
                else:
                    lo = mid + 1
            tokens, logprobs, finish = tokens[:lo], logprobs[:lo], "stop"
            text = self._decode(tokens)
            text = text[: min(text.find(s) for s in request.stop if s in text)]
        return Completion(text, tokens, logprobs, finish)  # type: ignore[arg-type]

    def score(
        self,
        contexts: Sequence[Sequence[Message] | str],
        continuations: Sequence[str | Sequence[int]],
        *,
        temperature: float = 1.0,
    ) -> list[list[float]]:
        """Per-token log-probs of each continuation under teacher forcing; ``temperature``
        divides the logits (1.0 is the contract; other values match ``generate``'s log-probs)."""
        if temperature <= 0:
            raise ValueError(f"score needs temperature > 0, got {temperature}")
        if len(contexts) != len(continuations):
            raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations")
        ctx = [self._nonempty(self.encode_context(c)) for c in contexts]
        cont = [
            list(self.tokenizer(c, add_special_tokens=False)["input_ids"])
            if isinstance(c, str)
            else [int(t) for t in c]
            for c in continuations
        ]
        results: list[list[float]] = [[] for _ in contexts]
        order = sorted(range(len(ctx)), key=lambda i: len(ctx[i]) + len(cont[i]))
        order = [i for i in order if cont[i]]
        vocab = self.model.get_output_embeddings().weight.shape[0]
        batches = (
            sub
            for batch in pack(
                order, lambda i: len(ctx[i]) + len(cont[i]), self.params.max_batch_tokens
            )
            for sub in pack(batch, lambda i: (len(cont[i]) + 1) * vocab, _LOGITS_BUDGET)
        )
        with eval_mode(self.model), self._no_grad():
            for batch in batches:
                ids, mask = left_pad([ctx[i] + cont[i] for i in batch], self.pad_id, self.device)
                keep = max(len(cont[i]) for i in batch) + 1
                out = self._forward(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                    logits_to_keep=keep,
                )
                logits = out.logits[:, -keep:-1].float() / temperature
                logp = logits.gather(-1, ids[:, -keep + 1 :, None])[..., 0]
                logp = logp - torch.logsumexp(logits, dim=-1)
                for b, i in enumerate(batch):
                    results[i] = logp[b, keep - 1 - len(cont[i]) :].tolist()
        return results

    def _nonempty(self, ids: list[int]) -> list[int]:
        if ids:
            return ids
        if self.tokenizer.bos_token_id is None:
            raise BackendError("cannot score after an empty context: the tokenizer has no BOS")
        return [self.tokenizer.bos_token_id]

    def update_weights(self, named_tensors: Iterable[tuple[str, Any]]) -> None:
        """Copy tensors into the model in place, by ``state_dict`` name (no-op for tensors that
        already are the model's own, as when wrapping the trainer's model)."""
        state = self.model.state_dict(keep_vars=True)
        with torch.no_grad():
            for name, tensor in named_tensors:
                if name not in state:
                    raise BackendError(f"update_weights: the model has no tensor named {name!r}")
                target = state[name]
                if target.data_ptr() != tensor.data_ptr():
                    target.copy_(tensor.to(device=target.device, dtype=target.dtype))

    def close(self) -> None:
        """Drop the model (only a model this backend loaded is freed; a wrapped one lives on)."""
        self.model = None
        if self.owns_model:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


__all__ = ["TransformersBackend", "TransformersParams"]
