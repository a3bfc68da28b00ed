"""A scriptable, fault-injecting OpenAI-compatible server (stdlib, in a thread on 127.0.0.1,
milliseconds to start) for tests of the ``openai`` backend and of the rewards that judge with it.

It answers ``/v1/models``, ``/v1/chat/completions`` and ``/v1/completions`` like vLLM would, and a
``plan`` can replace any answer by a :class:`Fault`: a 5xx, a 429 with ``Retry-After`` (seconds
or an HTTP date), or a *200* whose body is unusable (JSON cut mid-way, an HTML proxy page,
``choices: []``), the failures real proxies and overloaded servers produce.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Fault:
    """One injected answer: HTTP status, raw body, content type and extra headers."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)


def server_error(status: int = 500) -> Fault:
    return Fault(status, json.dumps({"error": {"message": f"injected {status}"}}).encode())


def rate_limited(retry_after: str) -> Fault:
    """A 429 asking to wait: ``retry_after`` is seconds or an HTTP date (:func:`http_date`)."""
    body = json.dumps({"error": {"message": "injected 429"}}).encode()
    return Fault(429, body, headers={"Retry-After": retry_after})


def http_date(seconds_from_now: float) -> str:
    """An RFC 7231 HTTP date (whole seconds, so up to 1 s earlier than asked)."""
    return formatdate(time.time() + seconds_from_now, usegmt=True)


def cut_json() -> Fault:
    """A 200 whose JSON body stops mid-way (a connection cut by a proxy)."""
    return Fault(200, b'{"id": "r", "object": "chat.completion", "choices": [{"index": 0, "mes')


def html_page() -> Fault:
    """A 200 with a proxy's HTML error page instead of JSON."""
    page = b"<html><head><title>502</title></head><body>Bad Gateway</body></html>"
    return Fault(200, page, content_type="text/html")


def no_choices() -> Fault:
    """A well-formed 200 that carries no completion."""
    body = {"id": "r", "object": "chat.completion", "created": 0, "model": "m", "choices": []}
    return Fault(200, json.dumps(body).encode())


#: (request index, path, JSON body) -> a Fault, or (status, headers) for a JSON error, or None
Plan = Callable[[int, str, dict[str, Any]], "Fault | tuple[int, dict[str, str]] | None"]


def by_attempt(faults_of: Callable[[dict[str, Any]], Sequence[Fault | None]]) -> Plan:
    """A plan where the k-th request with a given body gets ``faults_of(body)[k]`` (None or past
    the end: a normal answer). Identical bodies are the retries of one request."""
    seen: dict[str, int] = {}
    lock = threading.Lock()

    def plan(index: int, path: str, body: dict[str, Any]) -> Fault | None:
        key = json.dumps(body, sort_keys=True)
        with lock:
            k = seen.get(key, 0)
            seen[key] = k + 1
        faults = faults_of(body)
        return faults[k] if k < len(faults) else None

    return plan


def message_text(body: Mapping[str, Any]) -> str:
    """All message contents of a chat request (or the prompt of a text one), joined."""
    if "messages" in body:
        return "\n".join(str(m.get("content", "")) for m in body["messages"])
    return str(body.get("prompt", ""))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class FakeServer:
    """Replies are ``reply(body, k)`` for choice k (default ``"reply {k}"``), one fake token per
    word; ``plan`` injects failures; ``honour_n=False`` mimics servers that ignore ``n``;
    ``delay`` slows every request so concurrency can be observed (``max_in_flight``);
    ``requests`` and ``headers`` (names lower-cased) record every POST."""

    port: int
    plan: Plan | None = None
    reply: Callable[[dict[str, Any], int], str] | None = None
    delay: float = 0.0
    honour_n: bool = True
    reject_logprobs: bool = False
    echo: bool = True
    requests: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._send(200, {"object": "list", "data": [{"id": "fake-model"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    index = len(server.requests)
                    server.requests.append((time.monotonic(), self.path, body))
                    server.headers.append({k.lower(): v for k, v in self.headers.items()})
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    time.sleep(server.delay)
                    answer = server.answer(index, self.path, body)
                finally:
                    with server.lock:
                        server.in_flight -= 1
                if isinstance(answer, Fault):
                    self._raw(answer.status, answer.body, answer.content_type, answer.headers)
                else:
                    self._send(*answer)

            def _send(self, status: int, payload: Any, headers: Mapping | None = None) -> None:
                self._raw(status, json.dumps(payload).encode(), "application/json", headers)

            def _raw(self, status: int, data: bytes, ctype: str, headers: Mapping | None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop serving. ``shutdown`` waits for the serving loop to notice; it is asked from a
        helper thread and waited for a bounded time, so a teardown can never hang a suite."""
        if self.httpd is not None:
            stopper = threading.Thread(target=self.httpd.shutdown, daemon=True)
            stopper.start()
            stopper.join(timeout=10)
            self.httpd.server_close()
            self.httpd = None

    def posts(self) -> list[dict[str, Any]]:
        return [body for _, _, body in self.requests]

    def answer(self, index: int, path: str, body: dict[str, Any]) -> Any:
        failure = self.plan(index, path, body) if self.plan else None
        if isinstance(failure, Fault):
            return failure
        if failure is not None:
            status, headers = failure
            return status, {"error": {"message": f"injected {status}", "code": status}}, headers
        if self.reject_logprobs and body.get("logprobs") not in (None, False):
            return 400, {"error": {"message": "logprobs are not supported", "code": 400}}, {}
        n = body.get("n", 1) if self.honour_n else 1
        limit = body.get("max_tokens", 16)
        chat = path.endswith("/chat/completions")
        choices = []
        for k in range(n):
            if self.reply is None:
                words = ["reply", f" {k}"][:limit]
            else:
                words = self.reply(body, k).split(" ")
                words = [w if i == 0 else f" {w}" for i, w in enumerate(words)][:limit]
            text = "".join(words)
            finish = "length" if limit < 2 else "stop"
            logps = [-0.5 - k - 0.25 * i for i in range(len(words))]
            choice: dict[str, Any] = {"index": k, "finish_reason": finish}
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
                if body.get("logprobs"):
                    content = [
                        {"token": w, "logprob": lp, "bytes": None, "top_logprobs": []}
                        for w, lp in zip(words, logps, strict=True)
                    ]
                    choice["logprobs"] = {"content": content}
            else:
                choice.update(self._completion_choice(body, text, words, logps))
            choices.append(choice)
        usage = {"prompt_tokens": len(str(body.get("prompt", ""))), "completion_tokens": 2}
        usage["total_tokens"] = usage["prompt_tokens"] + 2
        obj = "chat.completion" if chat else "text_completion"
        payload = {"id": f"r{index}", "object": obj, "created": 0, "model": "fake-model"}
        return 200, {**payload, "choices": choices, "usage": usage}, {}

    def _completion_choice(self, body: dict, text: str, words: list, logps: list) -> dict:
        """Plain completion; with ``echo`` the prompt comes back one character per token with
        log-prob ``-(offset + 1) / 100`` (the first token has none)."""
        if body.get("echo"):
            if not self.echo:
                return {"text": text, "logprobs": None}
            prompt = body["prompt"]
            tokens = list(prompt) + words
            offsets = list(range(len(prompt))) + [len(prompt)] * len(words)
            values = [None] + [-(i + 1) / 100 for i in range(1, len(prompt))] + logps
            lp = {"tokens": tokens, "token_logprobs": values, "text_offset": offsets}
            return {"text": prompt + text, "logprobs": {**lp, "top_logprobs": None}}
        lp = None
        if body.get("logprobs") is not None:
            lp = {"tokens": words, "token_logprobs": logps, "text_offset": [0] * len(words)}
            lp["top_logprobs"] = None
        return {"text": text, "logprobs": lp}


def run_fake_server() -> Iterator[FakeServer]:
    """Body of a ``fake_server`` fixture (``yield from run_fake_server()``)."""
    server = FakeServer(free_port()).start()
    yield server
    server.stop()


__all__ = [
    "FakeServer",
    "Fault",
    "Plan",
    "by_attempt",
    "cut_json",
    "free_port",
    "html_page",
    "http_date",
    "message_text",
    "no_choices",
    "rate_limited",
    "run_fake_server",
    "server_error",
]
