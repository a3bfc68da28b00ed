"""CaT-SFT with a policy served by a separate engine (vLLM, or the gathered generation copy under
FSDP2): the engine receives the fine-tuned weights before the final evaluation, which would
otherwise score the untrained pi_0."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from tests.engine.test_separate_engine import EnginePlugin, SeparateEngine
from tests.engine.test_sft import sft_pipeline
from tests.engine.test_trainer import read_jsonl, run


def test_sft_pushes_the_trained_weights_before_evaluating(
    tmp_path, tiny_policy, toy_data, captured
):
    SeparateEngine.instances.clear()
    path = sft_pipeline(tmp_path, tiny_policy, toy_data)
    text = path.read_text().replace("backend: transformers,", "backend: separate_engine,")
    path.write_text(text.replace(", device: cpu}", "}").replace("steps: 100", "steps: 2"))
    run(path, tmp_path / "run", ("engine", EnginePlugin()))
    (engine,) = SeparateEngine.instances
    assert len(engine.pushes) == 1  # once, after the last step
    policy = captured[0]
    trained = {k: v.clone() for k, v in policy.trained_tensors()}  # LoRA merged, base names
    served = engine.engine.model.state_dict()
    for k, tensor in trained.items():
        torch.testing.assert_close(served[k], tensor)
    assert any(not torch.equal(trained[k], initial) for k, initial in _initial(tiny_policy).items())
    assert any("eval/single/score" in m for m in read_jsonl(tmp_path / "run" / "metrics.jsonl"))


def _initial(path):
    return load_file(str(path / "model.safetensors"))
