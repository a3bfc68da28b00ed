"""HTTP to ``vllm serve`` replicas for the ``vllm-server`` backend: JSON calls with a timeout each,
and errors that name the replica, the route and what to do.

Only the standard library: the trainer's side needs no HTTP client package. Sampling calls are
retried a few times on a refused or reset connection (a replica restarting behind a proxy);
weight-update calls never are: a half-applied update is only undone by restarting the server.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from typing import Any

from cat_framework import BackendError
from cat_framework.scrub import mask_url

#: what a message about a dead or broken server tells the user to do
RESTART = (
    "restart the server (`cat-framework serve-command PIPELINE` prints its command) and run "
    "again with --resume: nothing already saved is lost"
)


class ServerError(BackendError):
    """A replica that is down, timed out, or refused a call."""


def base_url(url: str) -> str:
    """``http://host:port`` from what a user may write (with or without ``/v1`` or a slash): the
    port explicit (``serve-command`` starts the server on it), no other path."""
    from urllib.parse import urlsplit

    url = url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None or parts.path:
        raise ValueError(
            f"a server URL is http://HOST:PORT (or https://), optionally ending in /v1 (got "
            f"{mask_url(url)!r})"
        )
    return url


def call(
    url: str,
    route: str,
    body: Any = None,
    *,
    timeout: float,
    method: str = "POST",
    retries: int = 0,
    what: str = "",
) -> Any:
    """``method route`` on the replica at ``url`` with a JSON ``body``; the JSON answer.

    ``timeout``: seconds the server may stay silent (per socket operation). ``retries``: more
    tries after a refused or reset connection, a second apart. Raises :class:`ServerError`."""
    shown = mask_url(url)  # what messages name: never a credential in the URL
    data = None if body is None and method == "GET" else json.dumps(body or {}).encode()
    headers = {"Content-Type": "application/json"}
    for attempt in range(retries + 1):
        request = urllib.request.Request(url + route, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                raw = answer.read()
            return json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:400]
            raise ServerError(
                f"vllm-server: {shown} answered {method} {route} with HTTP {exc.code}{what}: "
                f"{detail}{_hint(exc.code, route)}"
            ) from exc
        except TimeoutError as exc:
            raise ServerError(
                f"vllm-server: {shown} did not answer {method} {route} within {timeout:g} s{what}: "
                f"the server hangs or is overloaded; raise the backend's timeout if its work "
                f"takes longer, else {RESTART}"
            ) from exc
        except (urllib.error.URLError, ConnectionError, http.client.HTTPException) as exc:
            if isinstance(getattr(exc, "reason", None), TimeoutError):
                raise ServerError(
                    f"vllm-server: {shown} did not accept a connection within {timeout:g} s "
                    f"({method} {route}{what}): {RESTART}"
                ) from exc
            if attempt < retries:
                time.sleep(1.0)
                continue
            reason = getattr(exc, "reason", exc)
            raise ServerError(
                f"vllm-server: {shown} is unreachable ({method} {route}{what}: {reason}, "
                f"{attempt + 1} tries): the server is down; {RESTART}"
            ) from exc
        except json.JSONDecodeError as exc:
            raise ServerError(
                f"vllm-server: {shown} answered {method} {route} with something not JSON: is it a "
                "vLLM server?"
            ) from exc
    raise AssertionError("unreachable")


def _hint(status: int, route: str = "") -> str:
    if status >= 500 and "weight" in route:
        return f"; a weight update the server could not finish leaves it unusable: {RESTART}"
    if status == 404:
        return (
            " (the route is missing: start the server with VLLM_SERVER_DEV_MODE=1 in its "
            "environment; `cat-framework serve-command PIPELINE` prints the whole command)"
        )
    return ""


__all__ = ["RESTART", "ServerError", "base_url", "call"]
