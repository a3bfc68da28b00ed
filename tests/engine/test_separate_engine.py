"""A policy served by a separate engine (the vLLM pattern): the trainer trains a transformers twin
and pushes its weights to the engine after every optimizer step.

The engine here is a second in-process transformers model with its own weights, standing in for
vLLM's (the real vLLM backend's ``update_weights`` is tested in tests/plugins/backends)."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from cat_framework import Backend, ComponentParams, hookimpl
from cat_plugins.backends.transformers_backend import TransformersBackend
from tests.engine.test_trainer import read_jsonl, run, write_pipeline


class SeparateEngine(Backend):
    """Samples with its own copy of the weights; cannot wrap the trainer's model."""

    name = "separate_engine"
    instances: list[SeparateEngine] = []

    class Params(ComponentParams):
        model: str = Field(description="Model folder.")
        sleeps: bool = Field(False, description="Release memory during updates (sleep mode).")

    def __init__(self, params: Any = None, *, roles: Any = None) -> None:
        super().__init__(params, roles=roles)
        self.engine = TransformersBackend({"model": self.params.model, "device": "cpu"})
        self.pushes: list[dict[str, torch.Tensor]] = []
        self.events: list[str] = []
        self.asleep = False
        SeparateEngine.instances.append(self)

    def generate(self, requests):
        assert not self.asleep, "generate() on a sleeping engine"
        self.events.append("generate")
        return self.engine.generate(requests)

    def release_memory(self) -> bool:
        if self.params.sleeps:
            self.asleep = True
            self.events.append("sleep")
        return self.params.sleeps

    def score(self, contexts, continuations):
        return self.engine.score(contexts, continuations)

    def encode_context(self, context):
        return self.engine.encode_context(context)

    def update_weights(self, named_tensors):
        self.asleep = False
        self.events.append("push")
        tensors = {k: v.detach().clone() for k, v in named_tensors}
        self.pushes.append(tensors)
        self.engine.update_weights(tensors.items())


class EnginePlugin:
    @hookimpl
    def register_backends(self, register):
        register(SeparateEngine)


def engine_pipeline(tmp, model, data, trainer):
    path = write_pipeline(tmp, model, data, trainer)
    path.write_text(
        path.read_text()
        .replace("backend: transformers,", "backend: separate_engine,")
        .replace(", device: cpu}", "}")
    )
    return path


def test_weights_are_pushed_after_every_step(tmp_path, tiny_policy, toy_data, captured):
    SeparateEngine.instances.clear()
    trainer = (
        "{steps: 2, prompts_per_step: 3, learning_rate: 0.01, beta: 0.01, "
        "vllm_importance_sampling: true}"
    )
    run(engine_pipeline(tmp_path, tiny_policy, toy_data, trainer), tmp_path / "run",
        ("engine", EnginePlugin()))  # fmt: skip
    (engine,) = SeparateEngine.instances
    policy = captured[0]
    assert policy.pushes_weights and policy.sampler is engine
    assert len(engine.pushes) == 2  # once per optimizer step
    trained = policy.model.state_dict()
    served = engine.engine.model.state_dict()
    assert all(torch.equal(trained[k], served[k]) for k in trained)
    assert not torch.equal(engine.pushes[0]["lm_head.weight"], engine.pushes[1]["lm_head.weight"])
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    # engine and trainer log-probs agree before the first update, so IS weights are ~1
    assert "is_weight/mean" in metrics[0] and abs(metrics[0]["is_weight/mean"] - 1) < 1e-3


def test_lora_pushes_merged_weights(tmp_path, tiny_policy, toy_data, captured):
    SeparateEngine.instances.clear()
    trainer = (
        "{steps: 1, prompts_per_step: 3, learning_rate: 0.05, beta: 0.0, lora: {r: 4, alpha: 8}}"
    )
    run(engine_pipeline(tmp_path, tiny_policy, toy_data, trainer), tmp_path / "run",
        ("engine", EnginePlugin()))  # fmt: skip
    (engine,) = SeparateEngine.instances
    (push,) = engine.pushes
    assert not any("lora_" in k for k in push)
    policy = captured[0]
    base = policy.model.get_base_model()
    policy.model.merge_adapter()
    merged = {k: v.clone() for k, v in base.state_dict().items() if "lora_" not in k}
    policy.model.unmerge_adapter()
    key = "model.layers.0.self_attn.q_proj.weight"
    pushed_key = next(k for k in push if k.endswith("layers.0.self_attn.q_proj.weight"))
    merged_key = next(
        k
        for k in merged
        if k.endswith("layers.0.self_attn.q_proj.base_layer.weight") or k.endswith(key)
    )
    torch.testing.assert_close(push[pushed_key], merged[merged_key])


def test_an_engine_that_can_sleep_sleeps_through_every_update(tmp_path, tiny_policy, toy_data):
    """vLLM's sleep mode needs a GPU; this engine records the calls the real one would get."""
    SeparateEngine.instances.clear()
    trainer = "{steps: 2, prompts_per_step: 3, learning_rate: 0.01, beta: 0.01}"
    path = engine_pipeline(tmp_path, tiny_policy, toy_data, trainer)
    path.write_text(
        path.read_text().replace(
            "backend: separate_engine,", "backend: separate_engine, sleeps: true,"
        )
    )
    run(path, tmp_path / "run", ("engine", EnginePlugin()))
    (engine,) = SeparateEngine.instances
    steps = "".join("G" if e == "generate" else e[0].upper() for e in engine.events)
    # per step: rollouts (and the teacher) generate, the engine sleeps for the update, the push
    # wakes it; never a sleep without the push that ends it, never a generate while asleep
    assert steps.count("S") == 2 and steps.count("P") == 2, engine.events
    assert "SP" in steps and steps.index("S") > steps.index("G") and steps.endswith("P"), steps
    log = read_jsonl(tmp_path / "run" / "log.jsonl")
    assert sum(e["event"] == "sampler sleeps during updates" for e in log) == 1
