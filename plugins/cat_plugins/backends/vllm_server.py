"""The ``vllm-server`` backend: a policy sampled by one or more ``vllm serve`` replicas and fed the
trainer's weights through vLLM's own weight-update routes.

Sampling sends exact prompt token ids (templated here with the model's tokenizer, as the trainer
encodes them) to ``/v1/completions`` and reads back the sampled token ids and their log-probs;
requests are spread over the replicas and sent concurrently. A push (:meth:`update_weights`)
runs vLLM's RL protocol on every replica: ``/pause`` (mode ``wait``: the run's own requests have
all returned by then, one-step-off sampling included; anyone else's finish on the old weights)
-> ``/start_weight_update`` -> ``/update_weights`` per chunk -> ``/finish_weight_update`` (the
weight version ``<run tag>:<push>``) -> ``/resume``. The chunks travel through the ``cat_file``
transfer (:mod:`cat_plugins.backends.vllm_file_transfer`): safetensors files in a folder the
trainer and the servers share, ``/dev/shm`` on one machine. :meth:`weight_checksums` asks each
replica what it serves (``/collective_rpc cat_weight_sums``); replicas that disagree fail the
run, naming the replica and tensors.

Every call has a timeout; a replica that is down, dies or stalls ends the run with its URL and
what to do (:mod:`cat_plugins.backends.vllm_server_wire`). The server needs
``VLLM_SERVER_DEV_MODE=1``, ``--weight-transfer-config '{"backend": "cat_file"}'`` and
``--worker-extension-cls cat_plugins.backends.vllm_file_transfer.CatWorkerExtension``:
``cat-framework serve-command PIPELINE`` prints the exact line.
"""

from __future__ import annotations

import concurrent.futures
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from cat_framework import Backend, BackendError, Completion, ComponentParams, GenerationRequest
from cat_framework.components import ServerCommand, WeightChecksums
from cat_framework.types import Message
from cat_plugins.backends import vllm_chunks
from cat_plugins.backends.vllm_chunks import BACKEND, WORKER_EXTENSION
from cat_plugins.backends.vllm_server_wire import RESTART, ServerError, base_url, call
from cat_plugins.backends.vllm_support import (
    check_prompt_fits,
    encode_prompt,
    normalize_weight_names,
    score_spans,
    with_tied_head,
)

#: sent with every sampling request: a server fills what a request leaves out from the model's
#: generation_config.json (a repetition penalty, min_p), which the trainer never applies
NEUTRAL = {"repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
           "min_p": 0.0}  # fmt: skip
#: a chunk file's tensors, in MB, by default
CHUNK_MB = 128
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


class VLLMServerBackend(Backend):
    """A policy sampled by ``vllm serve`` replicas (data parallel: prompts spread over them)
    that receive the trainer's weights after every update through vLLM's weight-transfer
    routes, checked against what the trainer pushed."""

    name = "vllm-server"
    trains_with = "transformers"  # the trainer's twin of the served model
    shared_sampler: ClassVar[bool] = True  # one set of servers for every trainer process

    class Params(ComponentParams):
        model: str = Field(
            "default",
            description="The model the servers were started with (hub id, folder or embedded "
            "name): the trainer loads it, and its tokenizer templates prompts.",
        )
        urls: list[str] = Field(
            ..., min_length=1, description="Base URLs of the vllm serve replicas."
        )
        served_model_name: str | None = Field(
            None, description="The name the servers serve the model under; unset = ask them."
        )
        chat_template_kwargs: dict[str, Any] = Field(
            default_factory=dict, description="Extra arguments to apply_chat_template."
        )
        logprobs_mode: Literal["processed_logprobs", "raw_logprobs"] = Field(
            "processed_logprobs", description="The servers' --logprobs-mode (as the vllm backend)."
        )
        max_model_len: int | None = Field(None, ge=1, description="The servers' context length.")
        dtype: str = Field("auto", description="The servers' --dtype (serve-command).")
        seed: int = Field(0, description="The servers' --seed (serve-command).")
        server_args: list[str] = Field(
            default_factory=list,
            description="More vllm serve arguments for serve-command (e.g. --enforce-eager).",
        )
        transfer_dir: str | None = Field(
            None,
            description="Folder for weight chunks that the trainer and every server see; unset "
            "= /dev/shm (servers on this machine only).",
        )
        chunk_mb: float = Field(CHUNK_MB, gt=0, description="Size of one weight chunk file (MB).")
        timeout: float = Field(
            600.0, gt=0, description="Seconds a server may stay silent on a sampling request."
        )
        update_timeout: float = Field(
            300.0, gt=0, description="Seconds a server may take for one weight-update call."
        )
        connect_timeout: float = Field(
            30.0, gt=0, description="Seconds for short calls (health, pause, resume)."
        )
        max_concurrency: int = Field(16, ge=1, description="Sampling requests in flight at once.")

        @field_validator("urls")
        @classmethod
        def _urls(cls, urls: list[str]) -> list[str]:
            return [base_url(u) for u in urls]

    @classmethod
    def server_commands(cls, params: Any) -> list[ServerCommand]:
        """One ``vllm serve`` per replica, as this backend needs it (:func:`.policy_commands`)."""
        from cat_plugins.backends.serve_commands import policy_commands

        return policy_commands(params)

    def __init__(self, params: Any = None, *, roles: Any = None) -> None:
        super().__init__(params, roles=roles)
        from transformers import AutoConfig, AutoTokenizer

        from cat_plugins.backends.embedded import resolve_model_path

        p = self.params
        self.urls: list[str] = list(p.urls)
        self._pool = concurrent.futures.ThreadPoolExecutor(max(p.max_concurrency, len(self.urls)))
        self.served_model = p.served_model_name or self._ask_model()
        path = resolve_model_path(p.model)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        config = AutoConfig.from_pretrained(path)  # a tied head is pushed as the embedding too
        self._tied_head = bool(getattr(config, "tie_word_embeddings", False))
        self._offset = int(os.environ.get("RANK", "0"))  # processes start on different replicas
        self._calls = 0  # batches sent: request i of batch c goes to replica (i + rank + c) mod R
        self._tag = secrets.token_hex(4)  # this backend's pushes: weight version <tag>:<n>
        self._pushes = 0
        self._folder: str | None = None  # this run's chunk folder, made at the first push
        self.last_push_bytes = 0

    # ------------------------------------------------------------------ start
    def _ask_model(self) -> str:
        """The one model every replica serves (they must all serve the same)."""
        names = set()
        for url in self.urls:
            answer = call(url, "/v1/models", method="GET", timeout=self.params.connect_timeout,
                          retries=2)  # fmt: skip
            served = [m.get("id") for m in (answer or {}).get("data", [])]
            if len(served) != 1:
                raise ServerError(
                    f"vllm-server: {url} serves {served or 'no model'}: set served_model_name"
                )
            names.add(served[0])
        if len(names) > 1:
            raise ServerError(f"vllm-server: the replicas serve different models: {sorted(names)}")
        return names.pop()

    # ------------------------------------------------------------------ prompts
    def encode_context(self, context: Sequence[Message] | str) -> list[int]:
        """Prompt token ids, as the vllm backend and the trainer make them."""
        return encode_prompt(self.tokenizer, context, self.params.chat_template_kwargs)

    def _spread(self, bodies: list[dict[str, Any]], route: str) -> list[Any]:
        """POST every body, concurrently, spread over the replicas (rotating per batch)."""
        replicas, offset = len(self.urls), self._offset + self._calls
        self._calls += 1
        futures = [
            self._pool.submit(
                call,
                self.urls[(i + offset) % replicas],
                route,
                body,
                timeout=self.params.timeout,
                retries=2,
            )
            for i, body in enumerate(bodies)
        ]
        return [f.result() for f in futures]

    # ------------------------------------------------------------------ Backend API
    def _check_served(self) -> None:
        """Every replica holds what this backend last pushed (a replica an orchestrator restarted
        would serve the base weights), or, before any push, nothing pushed by anyone (an
        evaluation of a server a training run fed would not sample the model it names). Checked
        by the process that pushes (the main one)."""
        if self._offset != 0:
            return
        expected = f"{self._tag}:{self._pushes}" if self._pushes else None
        for url, answer in zip(self.urls, self._each("/weight_info", method="GET"), strict=True):
            held = (answer or {}).get("weight_version")
            if held != expected:
                why = "it was restarted (base weights)" if self._pushes else "another run fed it"
                raise ServerError(
                    f"vllm-server: {url} holds weight version {held!r}, not {expected!r}: {why}; "
                    + RESTART
                )

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        self._check_served()
        bodies = []
        for req in requests:
            ids = self.encode_context(req.messages if req.messages is not None else req.text or "")
            check_prompt_fits(len(ids), self.params.max_model_len)
            body: dict[str, Any] = {
                "model": self.served_model, "prompt": ids, "n": req.n,
                "temperature": req.temperature, "top_p": req.top_p, "top_k": req.top_k,
                "max_tokens": req.max_new_tokens, "logprobs": 0, "return_token_ids": True,
                **NEUTRAL,
            }  # fmt: skip
            if req.stop:
                body["stop"] = list(req.stop)
            if req.seed is not None:
                body["seed"] = req.seed
            bodies.append(body)
        return [self._completions(a, b) for a, b in zip(self._spread(bodies, "/v1/completions"),
                                                        bodies, strict=True)]  # fmt: skip

    @staticmethod
    def _completions(answer: Any, body: dict[str, Any]) -> list[Completion]:
        choices = sorted((answer or {}).get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != body["n"]:
            raise ServerError(f"vllm-server: asked for {body['n']} samples, got {len(choices)}")
        out = []
        for c in choices:
            if c.get("finish_reason") not in ("stop", "length") or c.get("token_ids") is None:
                raise ServerError(
                    f"vllm-server: a sample ended with finish_reason={c.get('finish_reason')!r} "
                    "or without token ids (is the server vLLM >= 0.10?)"
                )
            logprobs = (c.get("logprobs") or {}).get("token_logprobs")
            if logprobs is not None and len(logprobs) != len(c["token_ids"]):
                raise ServerError(
                    f"vllm-server: a sample has {len(c['token_ids'])} tokens but "
                    f"{len(logprobs)} log-probs"
                )
            out.append(Completion(
                text=c.get("text", ""), token_ids=tuple(c["token_ids"]),
                logprobs=tuple(logprobs) if logprobs is not None else None,
                finish_reason=c["finish_reason"],
            ))  # fmt: skip
        return out

    def score(
        self,
        contexts: Sequence[Sequence[Message] | str],
        continuations: Sequence[str | Sequence[int]],
    ) -> list[list[float]]:
        """Teacher-forced T=1 log-probs from the servers' prompt log-probs."""
        spans, bodies = [], []
        for ctx_ids, cont_ids in score_spans(
            self.encode_context, self.tokenizer, contexts, continuations
        ):
            check_prompt_fits(len(ctx_ids) + len(cont_ids), self.params.max_model_len)
            spans.append((len(ctx_ids), cont_ids))
            bodies.append({"model": self.served_model, "prompt": ctx_ids + cont_ids,
                           "max_tokens": 1, "prompt_logprobs": 0})  # fmt: skip
        answers = self._spread(bodies, "/v1/completions")
        results = []
        for (start, cont_ids), answer in zip(spans, answers, strict=True):
            steps = answer["choices"][0]["prompt_logprobs"][start : start + len(cont_ids)]
            results.append([s[str(t)]["logprob"] for s, t in zip(steps, cont_ids, strict=True)])
        return results

    def logprob_support(self) -> Literal["full", "sampled", "raw"]:
        return "sampled" if self.params.logprobs_mode == "processed_logprobs" else "raw"

    # ------------------------------------------------------------------ weights
    def update_weights(self, named_tensors: Iterable[tuple[str, Any]]) -> None:
        """Push the trainer's tensors to every replica (module docstring). The stream is always
        consumed to its end (under FSDP2 each tensor is a collective every process enters)."""
        source = iter(named_tensors)
        try:
            self._push(source)
        finally:
            for _ in source:
                pass

    def _push(self, named_tensors: Iterator[tuple[str, Any]]) -> None:
        folder = self._chunk_folder()
        if not self._pushes:  # a push that failed before this run left a server paused, unusable
            for url, answer in zip(self.urls, self._each("/is_paused", method="GET"), strict=True):
                if (answer or {}).get("is_paused"):
                    raise ServerError(f"vllm-server: {url} is paused (an unfinished weight "
                                      f"update?); {RESTART}")  # fmt: skip
        self._each("/init_weight_transfer_engine", {"init_info": {"root": folder}})
        self._each("/pause?mode=wait&clear_cache=true", timeout=self.params.update_timeout)
        self._pushes += 1
        where = f" (push {self._pushes}, transfer {BACKEND!r})"
        self._each("/start_weight_update", timeout=self.params.update_timeout, what=where)
        weights: Iterable[tuple[str, Any]] = normalize_weight_names(named_tensors)
        if self._tied_head:
            weights = with_tied_head(weights)
        self.last_push_bytes = 0
        for i, (path, names, size) in enumerate(
            vllm_chunks.write_chunks(weights, folder, self.params.chunk_mb)
        ):
            try:
                info = {"update_info": {"file": os.path.basename(path), "names": names}}
                self._each("/update_weights", info, timeout=self.params.update_timeout,
                           what=f"{where}, chunk {i}")  # fmt: skip
            finally:
                os.unlink(path)
            self.last_push_bytes += size
        self._each("/finish_weight_update", {"weight_version": f"{self._tag}:{self._pushes}"},
                   timeout=self.params.update_timeout, what=where)  # fmt: skip
        self._each("/resume")

    def _chunk_folder(self) -> str:
        if self._folder is None:
            root = self.params.transfer_dir
            if root is None:
                remote = [u for u in self.urls if urlsplit(u).hostname not in _LOCAL_HOSTS]
                if remote:
                    raise BackendError(
                        f"vllm-server: {remote[0]} is on another machine, so weight chunks need "
                        "a folder it sees too: set transfer_dir to a shared folder"
                    )
                root = "/dev/shm" if os.path.isdir("/dev/shm") else None
            try:
                self._folder = tempfile.mkdtemp(prefix="cat-weights-", dir=root)
            except OSError as exc:
                raise BackendError(
                    f"vllm-server: cannot make a weight chunk folder in {root} ({exc}): set "
                    "transfer_dir to a writable folder every server sees"
                ) from exc
        return self._folder

    def _each(
        self,
        route: str,
        body: Any = None,
        *,
        timeout: float | None = None,
        what: str = "",
        method: str = "POST",
    ) -> list[Any]:
        """``route`` on every replica at once; the first failure is raised (its URL named)."""
        limit = timeout or self.params.connect_timeout
        futures = [self._pool.submit(call, u, route, body, timeout=limit, what=what, method=method)
                   for u in self.urls]  # fmt: skip
        answers, errors = [], []
        for future in futures:
            try:
                answers.append(future.result())
            except ServerError as exc:
                errors.append(str(exc))
        if errors:
            more = f" ({len(errors) - 1} more replicas failed too)" if len(errors) > 1 else ""
            raise ServerError(f"{errors[0]}{more}")
        return answers

    def weight_checksums(self) -> WeightChecksums | None:
        """What the replicas serve; they must all serve the same (else the run fails, naming
        the replica and tensors). Parameters read directly compare exactly, kernel-probed
        ones within float32 accumulation error (:mod:`cat_plugins.backends.vllm_checksums`)."""
        import torch

        from cat_plugins.backends.vllm_checksums import PROBE_RTOL

        answers = self._each("/collective_rpc", {"method": "cat_weight_sums"},
                             timeout=self.params.update_timeout)  # fmt: skip
        reports = [
            vllm_chunks.worker_report(url, a) for url, a in zip(self.urls, answers, strict=True)
        ]
        if any(report is None for report in reports):
            return None  # replicas of several workers: the run logs that no check is possible
        first = reports[0]
        dtype = getattr(torch, first["dtype"].removeprefix("torch."), torch.float32)
        rtol = PROBE_RTOL + torch.finfo(dtype).eps
        for url, report in zip(self.urls[1:], reports[1:], strict=False):
            differ = vllm_chunks.differing(first, report, rtol)
            if differ:
                raise ServerError(
                    f"vllm-server: replica {url} serves other weights than {self.urls[0]} "
                    f"({len(differ)} tensors differ, e.g. {differ[:3]}); {RESTART}"
                )
        return WeightChecksums(first["sums"], rtol=rtol, dtype=dtype,
                               exact=frozenset(first["exact"]),
                               source=f"replicas {', '.join(self.urls)}")  # fmt: skip

    def close(self) -> None:
        folder, self._folder = getattr(self, "_folder", None), None
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["CHUNK_MB", "WORKER_EXTENSION", "VLLMServerBackend"]
