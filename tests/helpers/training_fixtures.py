"""Training fixtures shared by the engine and report tests (registered in tests/conftest.py):
a tiny random Llama policy saved to disk, a toy math dataset, and a spy on the built policy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from cat_framework.engine import training_run as training_run_mod
from tests.plugins.backends.conftest import build_tiny_model, build_tiny_tokenizer


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama whose samples are varied enough to disagree (default init, no sharpening)."""
    path = tmp_path_factory.mktemp("tiny-policy")
    tok = build_tiny_tokenizer()
    model = build_tiny_model(len(tok), seed=1)
    with torch.no_grad():
        model.lm_head.weight.div_(40 / 3)  # undo most of the fixture's sharpening
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "toy.jsonl"
    rows = [
        {"id": f"q{i}", "question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(6)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The placement each run builds (to inspect the trained module afterwards)."""
    built: list[Any] = []
    original = training_run_mod.build_placement

    def spy(*args: Any, **kwargs: Any) -> Any:
        built.append(original(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(training_run_mod, "build_placement", spy)
    return built
