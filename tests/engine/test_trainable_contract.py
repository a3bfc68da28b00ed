"""The trainable-backend contract: the engine trains any :class:`TrainableBackend` a plugin ships,
and finds the trainer of an engine-served policy by the contract, never by a built-in's name."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from pydantic import Field

from cat_framework import Backend, ComponentParams, hookimpl, load_plugins
from cat_framework.components import TrainableBackend
from cat_framework.engine.placement import trainable_class
from cat_framework.errors import CatError
from cat_plugins.backends.transformers_backend import TransformersBackend
from tests.engine.test_trainer import read_jsonl, run, write_pipeline


class ThirdPartyBackend(TrainableBackend):
    """A plugin's trainable backend: its own class, delegating the work to a transformers one."""

    name = "third_party"
    built: list[ThirdPartyBackend] = []
    wrapped: list[ThirdPartyBackend] = []

    class Params(ComponentParams):
        model: str = Field(description="Model folder.")
        device: str = "cpu"

    def __init__(self, params: Any = None, *, roles: Any = None, inner: Any = None) -> None:
        super().__init__(params, roles=roles)
        self.inner = inner or TransformersBackend({"model": self.params.model, "device": "cpu"})
        self.model, self.tokenizer = self.inner.model, self.inner.tokenizer
        ThirdPartyBackend.built.append(self)

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, params: Any = None) -> ThirdPartyBackend:
        backend = cls(params, inner=TransformersBackend.from_model(model, tokenizer))
        cls.wrapped.append(backend)
        return backend

    def generate(self, requests):
        return self.inner.generate(requests)

    def score(self, contexts, continuations):
        return self.inner.score(contexts, continuations)

    def encode_context(self, context):
        return self.inner.encode_context(context)

    def update_weights(self, named_tensors):
        self.inner.update_weights(named_tensors)


class EngineOnly(Backend):
    """Samples but cannot wrap a module (the vLLM shape)."""

    name = "engine_only"

    def generate(self, requests):
        raise NotImplementedError

    def score(self, contexts, continuations):
        raise NotImplementedError

    def update_weights(self, named_tensors):
        pass


class NamedEngine(EngineOnly):
    name = "named_engine"
    trains_with = "third_party"


class Plugin:
    @hookimpl
    def register_backends(self, register):
        for cls in (ThirdPartyBackend, EngineOnly, NamedEngine):
            register(cls)


def test_a_plugins_trainable_backend_trains_the_policy(tmp_path, tiny_policy, toy_data, captured):
    ThirdPartyBackend.built.clear()
    ThirdPartyBackend.wrapped.clear()
    trainer = "{steps: 2, prompts_per_step: 3, learning_rate: 0.01, beta: 0.01}"
    path = write_pipeline(tmp_path, tiny_policy, toy_data, trainer)
    path.write_text(path.read_text().replace("backend: transformers,", "backend: third_party,"))
    start = {
        k: v.clone()
        for k, v in ThirdPartyBackend({"model": str(tiny_policy)}).model.state_dict().items()
    }
    run(path, tmp_path / "run", ("third", Plugin()))
    policy = captured[0]
    assert isinstance(policy.trainable, ThirdPartyBackend) and policy.sampler is policy.trainable
    # pi_0 (for the KL term and the anchor) is served through the plugin's own from_model
    assert policy.anchor in ThirdPartyBackend.wrapped and policy.anchor.model is policy.frozen
    trained = policy.model.state_dict()
    assert any(not torch.equal(trained[k], start[k]) for k in start)
    assert [m["step"] for m in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 2]


def test_an_engine_trains_with_the_backend_it_names_or_the_only_one():
    plugins = load_plugins(entry_points=False, extra=[("third", Plugin())])
    assert trainable_class(NamedEngine, plugins) is ThirdPartyBackend
    assert trainable_class(ThirdPartyBackend, plugins) is ThirdPartyBackend
    # two trainable backends installed (transformers and third_party): ambiguous, said so
    with pytest.raises(CatError, match=r"third_party, transformers.*trains_with"):
        trainable_class(EngineOnly, plugins)
    builtins = load_plugins(entry_points=False)
    assert trainable_class(EngineOnly, builtins) is TransformersBackend


def test_trains_with_must_name_a_trainable_backend():
    class Wrong(EngineOnly):
        name = "wrong"
        trains_with = "engine_only"

    plugins = load_plugins(entry_points=False, extra=[("third", Plugin())])
    with pytest.raises(CatError, match="'engine_only', which is not a TrainableBackend"):
        trainable_class(Wrong, plugins)
