"""Model folders that are not models: one message from the transformers backend, at load time
(the same check ``validate`` runs, for code that builds a backend directly)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cat_framework import BackendError
from cat_plugins.backends.embedded import model_source_problem
from cat_plugins.backends.transformers_backend import TransformersBackend


def test_a_folder_that_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(BackendError) as info:
        TransformersBackend({"model": str(tmp_path), "device": "cpu"})
    message = str(info.value)
    assert "is not a model folder: it has no config.json" in message
    assert "notes.txt" in message and str(tmp_path) in message


def test_a_config_transformers_cannot_read_is_a_backend_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(BackendError, match=f"could not load model '{tmp_path}'"):
        TransformersBackend({"model": str(tmp_path), "device": "cpu"})


def test_model_source_problem(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    (tmp_path / "f.bin").write_bytes(b"x")
    assert model_source_problem(str(tmp_path / "m")) is None
    assert model_source_problem("org/name") is None  # a hub id is not checked
    assert "no such folder" in (model_source_problem(str(tmp_path / "absent")) or "")
    assert "is a file" in (model_source_problem(str(tmp_path / "f.bin")) or "")
    assert "unknown embedded model" in (model_source_problem("embedded:nope") or "")
