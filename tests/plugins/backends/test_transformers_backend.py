"""The transformers backend on a tiny random Llama (fixtures in conftest.py); the embedded default
model has its own module, test_embedded_model.py."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from pydantic import ValidationError

from cat_framework import BackendError, Completion, GenerationRequest
from cat_plugins.backends.sampling import filter_candidates, sample
from cat_plugins.backends.transformers_backend import TransformersBackend

EOS = 2


@pytest.fixture(autouse=True)
def _one_thread_for_tiny_models(request):
    """Tiny matmuls gain nothing from threads but lose ~20x to thread sync on a busy CPU."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def flat(results: list[list[Completion]]) -> list[Completion]:
    return [c for group in results for c in group]


def assert_scores_match(backend: Any, requests: list[GenerationRequest], out: Any, **kw: Any):
    """Each sample's log-probs equal a teacher-forced recomputation of its own tokens."""
    contexts = [r.messages or r.text for r in requests for _ in range(r.n)]
    comps = flat(out)
    scores = backend.score(contexts, [c.token_ids for c in comps], **kw)
    for c, s in zip(comps, scores, strict=True):
        assert len(s) == len(c.token_ids) == len(c.logprobs)
        assert s == pytest.approx(list(c.logprobs), abs=1e-4)


# ---------------------------------------------------------------------- tiny model


def test_generate_shapes_and_length_finish(tiny_backend):
    requests = [
        GenerationRequest(messages=chat("hi"), n=3, max_new_tokens=7, seed=1),
        GenerationRequest(text="hello world and the", n=2, max_new_tokens=4, seed=2),
    ]
    out = tiny_backend.generate(requests)
    assert [len(g) for g in out] == [3, 2]
    for req, group in zip(requests, out, strict=True):
        for c in group:
            assert len(c.logprobs) == len(c.token_ids) <= req.max_new_tokens
            assert all(lp <= 0 for lp in c.logprobs)
            if c.finish_reason == "length":
                assert len(c.token_ids) == req.max_new_tokens and EOS not in c.token_ids
    assert len({c.token_ids for c in out[0]}) > 1, "n samples of one prompt should differ"


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"), [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.3, 5, 0.8)]
)
def test_logprobs_are_unfiltered_log_softmax_at_temperature(
    tiny_backend, temperature, top_k, top_p
):
    """Prompts of different lengths share a left-padded batch; the log-probs still equal
    log_softmax(logits / T) recomputed by score(), whatever top-k / top-p filtered."""
    requests = [
        GenerationRequest(
            messages=chat("x" * k),
            n=2,
            max_new_tokens=12,
            seed=k,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
        )
        for k in (1, 9, 25)
    ]
    out = tiny_backend.generate(requests)
    assert_scores_match(tiny_backend, requests, out, temperature=temperature)


def reference_filter(scaled, top_k, top_p):
    """Full-sort top-k then top-p, one row at a time (the textbook definition)."""
    out = scaled.clone()
    for r in range(scaled.size(0)):
        order = scaled[r].argsort(descending=True)
        keep = order if top_k[r] <= 0 else order[: top_k[r]]
        if top_p[r] < 1:
            probs = scaled[r, keep].softmax(-1)
            before = probs.cumsum(-1) - probs
            keep = keep[before <= top_p[r]]
        drop = torch.ones(scaled.size(1), dtype=torch.bool)
        drop[keep] = False
        out[r, drop] = float("-inf")
    return out


@pytest.mark.parametrize("width", [1024, 8])  # 8: nuclei reach past the candidates
def test_filter_matches_full_sort_definition(width):
    gen = torch.Generator().manual_seed(0)
    scaled = torch.randn(6, 300, generator=gen) * 2
    top_k = torch.tensor([0, 5, 0, 40, 0, 1])
    top_p = torch.tensor([1.0, 1.0, 0.9, 0.5, 0.3, 0.7])
    got = filter_candidates(scaled, top_k, top_p, width=width)
    assert torch.equal(got.isinf(), reference_filter(scaled, top_k, top_p).isinf())
    assert torch.equal(got[~got.isinf()], scaled[~got.isinf()])


def test_sampling_frequencies_follow_the_distribution():
    logits = torch.tensor([2.0, 0.0, 1.0, -1.0, 0.5]).repeat(4000, 1)
    ones = torch.ones(4000)
    gens = [torch.Generator().manual_seed(i) for i in range(4000)]
    tokens, logps = sample(logits, ones * 0.8, torch.zeros(4000, dtype=torch.long), ones, gens)
    freq = torch.bincount(tokens, minlength=5) / 4000
    expected = (logits[0] / 0.8).softmax(-1)
    assert freq == pytest.approx(expected.tolist(), abs=0.03)
    assert torch.allclose(logps, expected.log()[tokens])
    # top-k 2: only the two best tokens, in their renormalised proportion
    tokens, _ = sample(logits, ones, torch.full((4000,), 2), ones, gens)
    assert set(tokens.tolist()) == {0, 2}
    assert (tokens == 0).float().mean() == pytest.approx(1 / (1 + torch.e**-1), abs=0.03)


def test_top_k_one_and_greedy_agree(tiny_backend):
    greedy = GenerationRequest(text="the", max_new_tokens=10, temperature=0.0)
    top1 = greedy.replace(temperature=1.0, top_k=1, seed=3)
    a, b = flat(tiny_backend.generate([greedy, top1]))
    assert a.token_ids == b.token_ids
    # greedy reports T=1 log-probs
    assert tiny_backend.score(["the"], [a.token_ids])[0] == pytest.approx(
        list(a.logprobs), abs=1e-4
    )


def test_seed_determinism_independent_of_batching(tiny_model, tiny_tokenizer):
    backend = TransformersBackend.from_model(tiny_model, tiny_tokenizer)
    req = GenerationRequest(messages=chat("hello"), n=3, max_new_tokens=15, seed=7)
    others = [GenerationRequest(text="and " * k, n=2, max_new_tokens=9, seed=k) for k in (1, 2)]
    alone = backend.generate([req])[0]
    batched = backend.generate([others[0], req, others[1]])[1]
    small = TransformersBackend.from_model(tiny_model, tiny_tokenizer, {"max_batch_tokens": 40})
    micro = small.generate([others[0], req, others[1]])[1]
    for a, b, c in zip(alone, batched, micro, strict=True):  # log-probs: up to float noise
        assert a.token_ids == b.token_ids == c.token_ids and a.text == b.text == c.text
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
        assert a.logprobs == pytest.approx(c.logprobs, abs=1e-4)
    assert alone != backend.generate([req.replace(seed=8)])[0]


def test_unseeded_requests_follow_torch_manual_seed(tiny_backend):
    req = GenerationRequest(text="the", n=2, max_new_tokens=10)
    torch.manual_seed(123)
    first = tiny_backend.generate([req])
    torch.manual_seed(123)
    assert tiny_backend.generate([req]) == first


def test_prompt_is_prefilled_once_for_n_samples(tiny_model, tiny_tokenizer):
    backend = TransformersBackend.from_model(tiny_model, tiny_tokenizer)
    shapes: list[tuple[int, ...]] = []
    hook = tiny_model.model.embed_tokens.register_forward_hook(
        lambda _m, args, _o: shapes.append(tuple(args[0].shape))
    )
    try:
        backend.generate([GenerationRequest(messages=chat("hi" * k), n=4, seed=k, max_new_tokens=3)
                          for k in (1, 2)])  # fmt: skip
    finally:
        hook.remove()
    prompt_len = len(backend.encode_context(chat("hihi")))
    assert shapes[0] == (2, prompt_len)  # one row per prompt
    assert shapes[1:] == [(8, 1), (8, 1)]  # then 2 x 4 sampled rows, one token per step


def test_micro_batches_stay_within_token_budget(tiny_model, tiny_tokenizer):
    budget = 60
    backend = TransformersBackend.from_model(
        tiny_model, tiny_tokenizer, {"max_batch_tokens": budget}
    )
    prefill_rows: list[int] = []

    def record(_m, args, _o):
        if args[0].shape[1] > 1:
            prefill_rows.append(args[0].shape[0])

    hook = tiny_model.model.embed_tokens.register_forward_hook(record)
    requests = [
        GenerationRequest(text="hello " * 3, n=3, max_new_tokens=10, seed=k) for k in range(4)
    ]
    try:
        out = backend.generate(requests)
    finally:
        hook.remove()
    row_cost = len(tiny_tokenizer("hello " * 3)["input_ids"]) + 10
    assert len(prefill_rows) > 1
    assert all(n * row_cost <= budget for n in prefill_rows)
    assert [len(g) for g in out] == [3] * 4


def test_eos_stops_and_is_kept_in_token_ids(tiny_model, tiny_tokenizer):
    """A +4 logit bias makes EOS likely, so rows finish at different steps (and the batch
    shrinks); EOS ends a sample, is its last token and is not in the text."""
    backend = TransformersBackend.from_model(tiny_model, tiny_tokenizer)

    def bias_eos(_m, _args, logits):
        logits[..., EOS] += 4.0
        return logits

    hook = tiny_model.lm_head.register_forward_hook(bias_eos)
    try:
        requests = [GenerationRequest(text="the", n=8, max_new_tokens=30, seed=5)]
        out = backend.generate(requests)
        comps = out[0]
        for c in comps:
            if c.finish_reason == "stop":
                assert c.token_ids[-1] == EOS
            assert EOS not in c.token_ids[:-1]
            assert "<|im_end|>" not in c.text
        assert sum(c.finish_reason == "stop" for c in comps) >= 4
        assert len({len(c.token_ids) for c in comps}) > 1
        assert_scores_match(backend, requests, out)
    finally:
        hook.remove()


def test_stop_string_truncates_text_tokens_and_logprobs(tiny_backend):
    req = GenerationRequest(messages=chat("hello"), n=2, max_new_tokens=40, seed=11)
    free = tiny_backend.generate([req])[0]
    text = free[0].text
    stop = next(text[i : i + 2] for i in range(5, len(text)) if text[i : i + 2].isprintable())
    stopped = tiny_backend.generate([req.replace(stop=(stop, "never-there"))])[0]
    c, ref = stopped[0], free[0]
    assert c.finish_reason == "stop"
    assert c.text == ref.text[: ref.text.find(stop)]
    assert c.token_ids == ref.token_ids[: len(c.token_ids)]
    assert c.logprobs == ref.logprobs[: len(c.token_ids)]
    decode = tiny_backend.tokenizer.decode
    assert stop in decode(list(c.token_ids)) and stop not in decode(list(c.token_ids[:-1]))
    # a stop string that never appears changes nothing
    unchanged = tiny_backend.generate([req.replace(stop=("never-there",))])[0]
    assert unchanged == free


def test_score_text_and_ids_and_batching(tiny_backend, tiny_tokenizer):
    contexts = [chat("hello"), "the thing", chat("x" * 30)]
    texts = [" world and", "ing", "hello"]
    ids = [tiny_tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    by_text = tiny_backend.score(contexts, texts)
    by_ids = tiny_backend.score(contexts, ids)
    one_by_one = [tiny_backend.score([c], [i])[0] for c, i in zip(contexts, ids, strict=True)]
    assert [len(s) for s in by_text] == [len(i) for i in ids]
    for a, b, c in zip(by_text, by_ids, one_by_one, strict=True):
        assert a == pytest.approx(b, abs=1e-6) and a == pytest.approx(c, abs=1e-4)
    assert tiny_backend.score(["the"], [[]]) == [[]]
    # explicit teacher forcing, no padding: the reference value
    full = torch.tensor([tiny_backend.encode_context("the thing") + ids[1]])
    logits = tiny_backend.model(full).logits[0, -len(ids[1]) - 1 : -1].log_softmax(-1)
    expected = logits.gather(-1, torch.tensor(ids[1])[:, None])[:, 0].tolist()
    assert by_ids[1] == pytest.approx(expected, abs=1e-5)


def test_wraps_trainer_model_without_copy_and_restores_train_mode(tiny_model, tiny_tokenizer):
    backend = TransformersBackend.from_model(tiny_model, tiny_tokenizer)
    assert backend.model is tiny_model and not backend.owns_model
    tiny_model.train()
    try:
        backend.generate([GenerationRequest(text="the", max_new_tokens=2, seed=0)])
        assert tiny_model.training, "the trainer's mode must be restored"
    finally:
        tiny_model.eval()
    assert tiny_tokenizer.pad_token is None, "the trainer's tokenizer must not be mutated"


def test_update_weights_changes_output(tiny_tokenizer, tiny_dir):
    backend = TransformersBackend({"model": str(tiny_dir), "device": "cpu"})
    req = GenerationRequest(text="the", max_new_tokens=8, temperature=0.0)
    before = backend.generate([req])[0][0]
    weight = backend.model.lm_head.weight
    ptr = weight.data_ptr()
    backend.update_weights([("lm_head.weight", torch.randn_like(weight) * 5)])
    assert weight.data_ptr() == ptr  # in place
    assert backend.generate([req])[0][0].token_ids != before.token_ids
    with pytest.raises(BackendError, match="no tensor named"):
        backend.update_weights([("nope.weight", weight)])
    backend.close()
    backend.close()  # safe twice


def test_load_by_path_with_dtype(tiny_dir):
    backend = TransformersBackend({"model": str(tiny_dir), "device": "cpu", "dtype": "bfloat16"})
    assert backend.model.dtype == torch.bfloat16
    (c,) = backend.generate([GenerationRequest(text="the", max_new_tokens=3, seed=0)])[0]
    assert len(c.token_ids) == 3 and all(lp <= 0 for lp in c.logprobs)


def test_params_validation():
    with pytest.raises(ValidationError):
        TransformersBackend.Params(modle="x")
    with pytest.raises(ValidationError):
        TransformersBackend.Params(device="gpu0")
    assert TransformersBackend.Params(device="cuda:1").device == "cuda:1"
    for name, info in TransformersBackend.Params.model_fields.items():
        assert info.description, f"param {name} needs a description"


def test_chat_template_kwargs_are_passed(tiny_model, tiny_tokenizer):
    plain = TransformersBackend.from_model(tiny_model, tiny_tokenizer)
    greeted = TransformersBackend.from_model(
        tiny_model, tiny_tokenizer, {"chat_template_kwargs": {"greeting": "hello"}}
    )
    without = tiny_tokenizer.decode(plain.encode_context(chat("hi")))
    assert tiny_tokenizer.decode(greeted.encode_context(chat("hi"))) == "hello\n" + without


def test_missing_model_is_a_backend_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub id below must fail fast, not time out
    with pytest.raises(BackendError, match=r"could not load .*absent.*: no such folder"):
        TransformersBackend({"model": str(tmp_path / "absent"), "device": "cpu"})
    with pytest.raises(BackendError, match="could not load"):  # a hub id that is not there
        TransformersBackend({"model": "no-such-org-xyz/no-such-model", "device": "cpu"})
