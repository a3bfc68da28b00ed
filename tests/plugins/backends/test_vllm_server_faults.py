"""The ``vllm-server`` backend against a server that misbehaves (stdlib HTTP on 127.0.0.1, in a
thread): every call ends in bounded time with the replica, the route and what to do; a push that
fails is never resumed and always consumes the trainer's stream. The real ``vllm serve`` path is
tested in tests/engine/test_server_placement.py."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import torch

from cat_plugins.backends.vllm_server_wire import ServerError, base_url, call

#: route -> what the server does: "ok", "hang", "drop" (close the connection), "404", "html"
Behaviour = dict[str, str]


class Misbehaving:
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.calls: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                self._answer()

            def _answer(self) -> None:
                route = self.path.split("?")[0]
                server.calls.append(route)
                what = server.behaviour.get(route, "ok")
                if what == "hang":
                    time.sleep(5)
                    return
                if what == "drop":
                    self.close_connection = True
                    self.connection.close()
                    return
                status, body = 200, json.dumps(self._ok(route)).encode()
                if what == "404":
                    status, body = 404, b'{"detail": "Not Found"}'
                if what == "html":
                    body = b"<html>proxy</html>"
                if what.startswith("json:"):
                    body = what.removeprefix("json:").encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _ok(self, route: str) -> Any:
                if route == "/v1/models":
                    return {"data": [{"id": "tiny"}]}
                return {"status": "ok"}

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator[Any]:
    started: list[Misbehaving] = []

    def start(**behaviour: str) -> Misbehaving:
        server = Misbehaving({"/" + k.replace("__", "/"): v for k, v in behaviour.items()})
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def test_urls_are_read_with_or_without_v1():
    assert base_url("http://h:8000/v1/") == base_url("http://h:8000") == "http://h:8000"
    for wrong in ("h:8000", "http://h", "http://h:8000/api/v1", "http://h:port"):
        with pytest.raises(ValueError, match="http://HOST:PORT"):  # serve-command needs a port
            base_url(wrong)


def test_a_silent_server_times_out_naming_it(serve):
    server = serve(pause="hang")
    t0 = time.monotonic()
    with pytest.raises(ServerError, match=r"did not answer POST /pause within 0.5 s") as err:
        call(server.url, "/pause", timeout=0.5)
    assert time.monotonic() - t0 < 3 and server.url in str(err.value)


def test_a_dead_server_is_named_with_what_to_do():
    from tests.helpers.openai_server import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens
    with pytest.raises(ServerError, match="is unreachable") as err:
        call(url, "/v1/completions", {}, timeout=5, retries=1)
    assert url in str(err.value) and "2 tries" in str(err.value) and "--resume" in str(err.value)


def test_a_missing_route_asks_for_dev_mode(serve):
    server = serve(start_weight_update="404")
    with pytest.raises(ServerError, match="VLLM_SERVER_DEV_MODE=1"):
        call(server.url, "/start_weight_update", timeout=5)


def test_an_answer_that_is_not_json_is_named(serve):
    server = serve(resume="html")
    with pytest.raises(ServerError, match="not JSON"):
        call(server.url, "/resume", timeout=5)


def backend(url: str, tmp_path, **params: Any) -> Any:
    from cat_plugins.backends.vllm_server import VLLMServerBackend
    from tests.engine.placement_runs import tiny_llama
    from tests.plugins.backends.conftest import build_tiny_tokenizer

    model = tmp_path / "model"
    tiny_llama().save_pretrained(model)
    build_tiny_tokenizer().save_pretrained(model)
    folder = tmp_path / "chunks"
    folder.mkdir()
    return VLLMServerBackend({"model": str(model), "urls": [url], "transfer_dir": str(folder),
                              "update_timeout": 1.0, **params})  # fmt: skip


def stream(consumed: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    for i in range(4):
        consumed.append(f"w{i}")
        yield f"model.layers.0.w{i}.weight", torch.ones(8, 8)


@pytest.mark.parametrize("fault", ["drop", "hang"])
def test_a_server_lost_during_a_push_ends_it_and_is_never_resumed(serve, tmp_path, fault):
    server = serve(update_weights=fault)
    policy = backend(server.url, tmp_path, chunk_mb=0.0001)  # a chunk per tensor
    consumed: list[str] = []
    t0 = time.monotonic()
    with pytest.raises(ServerError, match=r"push 1, .*chunk 0") as err:
        policy.update_weights(stream(consumed))
    assert time.monotonic() - t0 < 10
    assert server.url in str(err.value) and "--resume" in str(err.value)
    assert consumed == ["w0", "w1", "w2", "w3"]  # every process's collectives still happen
    assert "/resume" not in server.calls and "/finish_weight_update" not in server.calls
    assert not list((tmp_path / "chunks").rglob("*.safetensors"))  # no chunk left behind
    policy.close()


def test_a_push_follows_vllms_protocol(serve, tmp_path):
    server = serve()
    policy = backend(server.url, tmp_path, chunk_mb=0.0001)
    policy.update_weights(stream([]))
    routes = [c for c in server.calls if c != "/v1/models"]
    assert routes == ["/is_paused", "/init_weight_transfer_engine", "/pause", "/start_weight_update",
                      *["/update_weights"] * 4, "/finish_weight_update", "/resume"]  # fmt: skip
    assert policy.last_push_bytes == 4 * 64 * 4
    policy.close()


def test_a_remote_server_needs_a_shared_transfer_folder(tmp_path):
    from cat_framework import BackendError
    from cat_plugins.backends.vllm_server import VLLMServerBackend

    policy = VLLMServerBackend.__new__(VLLMServerBackend)
    policy.params = VLLMServerBackend.Params(urls=["http://10.1.2.3:8000"])
    policy.urls, policy._folder = list(policy.params.urls), None
    with pytest.raises(BackendError, match="set transfer_dir to a shared folder"):
        policy._chunk_folder()


def test_a_run_whose_server_is_down_at_the_start_ends_with_one_message(tmp_path):
    """Nothing listens at the policy's URL: the run ends in seconds with the URL and what to do,
    no traceback, and its run directory says it failed."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.engine.placement_runs import tiny_llama
    from tests.helpers.openai_server import free_port
    from tests.plugins.backends.conftest import build_tiny_tokenizer

    model = tmp_path / "model"
    tiny_llama().save_pretrained(model)
    build_tiny_tokenizer().save_pretrained(model)
    url = f"http://127.0.0.1:{free_port()}"
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        f"name: down\nmode: train\nmodels:\n  anchor: policy\n"
        f"  policy: {{backend: vllm-server, model: '{model}', urls: ['{url}']}}\n"
        "data:\n  train: {dataset: arithmetic, split: train, count: 4}\n"
        "rollouts: {n: 2, max_new_tokens: 4}\ntrainer: {steps: 1, prompts_per_step: 2}\n"
        "aggregator: {name: majority}\nreward: {name: programmatic}\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CAT_TENSORBOARD": "0"}
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "cat_framework", "run", str(pipeline), "--run-dir",
         str(tmp_path / "run")], env=env, capture_output=True, text=True, timeout=120,
        cwd=Path(__file__).resolve().parents[3],
    )  # fmt: skip
    assert time.monotonic() - t0 < 60
    assert proc.returncode != 0
    assert f"{url} is unreachable" in proc.stderr and "serve-command" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "failed"


def test_what_a_replica_reports_is_read_or_refused():
    from cat_plugins.backends.vllm_chunks import worker_report

    one = {"sums": {"w": 1.0}, "exact": ["w"], "dtype": "torch.float32"}
    assert worker_report("http://a:1", {"results": [one]}) == one
    assert worker_report("http://a:1", {"results": [one, one]}) is None  # tensor parallel
    with pytest.raises(ServerError, match="--worker-extension-cls"):
        worker_report("http://a:1", {"results": [None]})  # the method is missing


def test_a_server_left_paused_by_a_failed_update_is_refused_before_the_first_push(serve, tmp_path):
    server = serve(is_paused='json:{"is_paused": true}')
    policy = backend(server.url, tmp_path)
    with pytest.raises(ServerError, match=r"is paused .*restart the server"):
        policy.update_weights(stream([]))
    assert "/start_weight_update" not in server.calls
    policy.close()


def test_sampling_refuses_a_server_that_holds_other_weights(serve, tmp_path):
    """Before any push: weights another run pushed (an evaluation would not sample the model it
    names); after one: a replica that does not hold it (restarted: base weights)."""
    from cat_framework import GenerationRequest

    server = serve(weight_info='json:{"weight_version": "abcd:3"}')
    policy = backend(server.url, tmp_path)
    request = GenerationRequest(text="1 + 1 =", max_new_tokens=2)
    with pytest.raises(ServerError, match=r"holds weight version 'abcd:3', not None: another run"):
        policy.generate([request])
    policy.update_weights(stream([]))
    with pytest.raises(ServerError, match=r"not '[0-9a-f]{8}:1': it was restarted"):
        policy.generate([request])
    assert "/v1/completions" not in server.calls
    policy.close()
