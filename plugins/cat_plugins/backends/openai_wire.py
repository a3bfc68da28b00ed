"""The wire side of the ``openai`` backend: request pacing, what a failed request means, and
reading responses defensively (a 200 can still carry a cut JSON body or a proxy's HTML page).

Kept apart from :mod:`.openai_backend` (the request logic) so each stays readable.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

from cat_framework import BackendError, Completion, PartialBatchError

#: the longest ``Retry-After`` honoured (s): a server asking for more is treated as asking this
MAX_RETRY_AFTER = 120.0
#: statuses that mean the configuration is wrong for every request (key, model, URL)
CONFIG_STATUSES = frozenset({401, 403, 404})


class ServerConfigError(BackendError):
    """The server refuses every request as configured (401/403/404): retrying or skipping the
    item cannot help, so it ends the batch rather than failing items one by one."""


class Malformed(Exception):
    """A 200 answer without a usable completion (cut JSON, an HTML page, no choices): a server
    or proxy fault, retried like a 5xx."""


def run_sync(make_coro: Any) -> Any:
    """Run a coroutine to completion from sync code, even under a running event loop (a
    notebook's): then in a helper thread with a loop of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make_coro())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, make_coro()).result()


class Pacer:
    """Spaces request starts ``60 / rpm`` seconds apart (no bursts: hosted limits are per
    second-ish windows too)."""

    def __init__(self, requests_per_minute: float | None) -> None:
        self.interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self.next_start = 0.0
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self.lock:
            now = time.monotonic()
            start = max(now, self.next_start)
            self.next_start = start + self.interval
        await asyncio.sleep(start - now)


def retry_after(exc: Any) -> float | None:
    """Seconds the server asked to wait: ``retry-after-ms``, or ``Retry-After`` as seconds or as
    an HTTP date (RFC 9110); capped at :data:`MAX_RETRY_AFTER`, ``None`` when absent/unreadable."""
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    seconds: float | None = None
    try:
        seconds = float(headers.get("retry-after-ms", "")) / 1000.0
    except ValueError:
        value = str(headers.get("retry-after", "")).strip()
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                return None
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
            seconds = (when - datetime.now(timezone.utc)).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def with_choices(response: Any) -> Any:
    """The response, if it is a completion object with a ``choices`` list (else malformed)."""
    if not isinstance(getattr(response, "choices", None), list):
        snippet = response[:80] if isinstance(response, str) else type(response).__name__
        raise Malformed(f"not a completion object: {snippet!r}")
    return response


def read_completions(response: Any, chat: bool) -> list[Completion]:
    """The response's completions in choice order; at least one, or the answer is malformed."""
    choices = with_choices(response).choices
    if not choices:
        raise Malformed("no choices")
    try:
        return [to_completion(c, chat) for c in sorted(choices, key=lambda c: c.index)]
    except (AttributeError, TypeError, ValueError) as exc:
        raise Malformed(f"unreadable choice ({type(exc).__name__}: {exc})") from exc


def to_completion(choice: Any, chat: bool) -> Completion:
    text = (choice.message.content or "") if chat else choice.text
    logprobs = None
    lp = getattr(choice, "logprobs", None)
    if lp is not None:
        if chat and lp.content is not None:
            logprobs = [t.logprob for t in lp.content]
        elif not chat and lp.token_logprobs is not None:
            logprobs = [float(v) for v in lp.token_logprobs]
    token_ids = getattr(choice, "token_ids", None) or ()
    if token_ids and logprobs is not None and len(logprobs) != len(token_ids):
        logprobs = None  # misaligned (e.g. a stop string trimmed): do not guess
    finish = "length" if choice.finish_reason == "length" else "stop"
    return Completion(text=text, token_ids=token_ids, logprobs=logprobs, finish_reason=finish)


__all__ = [
    "CONFIG_STATUSES",
    "MAX_RETRY_AFTER",
    "Malformed",
    "Pacer",
    "PartialBatchError",
    "ServerConfigError",
    "read_completions",
    "retry_after",
    "run_sync",
    "to_completion",
    "with_choices",
]
