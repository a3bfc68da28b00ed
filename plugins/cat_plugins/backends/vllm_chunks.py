"""What a push to ``vllm serve`` replicas is made of, apart from the HTTP: the weight chunks the
``cat_file`` transfer carries (safetensors files that appear only whole), and the reading of what
each replica reports it serves (``/collective_rpc cat_weight_sums``)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

from cat_framework import BackendError
from cat_framework.components import EXACT_RTOL
from cat_plugins.backends.vllm_server_wire import ServerError

#: the weight transfer the servers run (:mod:`.vllm_file_transfer`, registered under this name)
BACKEND = "cat_file"
#: what reports the served weights' sums (``/collective_rpc cat_weight_sums``)
WORKER_EXTENSION = "cat_plugins.backends.vllm_file_transfer.CatWorkerExtension"


def write_chunks(
    weights: Iterable[tuple[str, Any]], folder: str, chunk_mb: float
) -> Iterator[tuple[str, list[str], int]]:
    """Write the tensors as safetensors files of about ``chunk_mb`` each (a file appears only
    whole: written under a temporary name, then renamed); yields (path, names, bytes)."""
    from safetensors.torch import save_file

    limit = int(chunk_mb * 1024 * 1024)
    part: dict[str, Any] = {}
    size = count = 0

    def flush() -> tuple[str, list[str], int]:
        nonlocal part, size, count
        path = os.path.join(folder, f"chunk-{count}.safetensors")
        try:
            save_file(part, path + ".part")
        except OSError as exc:
            raise BackendError(
                f"vllm-server: cannot write a weight chunk in {folder} ({exc}): free space "
                "there, lower chunk_mb, or set transfer_dir to a larger shared folder"
            ) from exc
        os.replace(path + ".part", path)
        out = (path, list(part), size)
        part, size, count = {}, 0, count + 1
        return out

    for name, tensor in weights:
        copy = tensor.detach().to("cpu", copy=True).contiguous()
        part[name] = copy
        size += copy.numel() * copy.element_size()
        if size >= limit:
            yield flush()
    if part:
        yield flush()


def worker_report(url: str, answer: Any) -> dict[str, Any] | None:
    """The one worker's report in a replica's ``/collective_rpc cat_weight_sums`` answer; None
    for a replica with several workers (tensor or data parallel: each answers for its own
    part or copy, no single whole report to compare)."""
    results = (answer or {}).get("results") if isinstance(answer, dict) else answer
    if isinstance(results, list) and results and all("sums" in (r or {}) for r in results):
        return results[0] if len(results) == 1 else None
    raise ServerError(
        f"vllm-server: {url} did not report its weights (cat_weight_sums): start it with "
        f"--worker-extension-cls {WORKER_EXTENSION} (`cat-framework serve-command` prints it)"
    )


def differing(first: dict[str, Any], other: dict[str, Any], rtol: float) -> list[str]:
    """The keys two replicas' reports disagree on: float64 summation noise allowed for sums
    read element by element, ``rtol`` for the kernel-probed ones (whose float32 accumulation
    may differ between machines)."""
    a, b, exact = first["sums"], other["sums"], set(first["exact"])

    def far(k: str) -> bool:
        tol = EXACT_RTOL if k in exact else rtol
        return abs(a[k] - b[k]) > tol * max(1.0, abs(a[k]))

    return sorted(k for k in set(a) | set(b) if k not in a or k not in b or far(k))


__all__ = ["BACKEND", "WORKER_EXTENSION", "differing", "worker_report", "write_chunks"]
