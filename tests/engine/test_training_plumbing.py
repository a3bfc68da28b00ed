"""Run plumbing without models: process-count checks, schedules (resume truncation: test_files)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from cat_framework.engine.accelerator import check_processes
from cat_framework.engine.schedule import derive_seed, shard, step_prompts
from cat_framework.errors import CatError


def test_prompts_per_step_must_split_evenly_over_processes():
    check_processes(4, SimpleNamespace(num_processes=2))
    with pytest.raises(CatError, match=r"prompts_per_step \(3\) must be a multiple .* \(2\)"):
        check_processes(3, SimpleNamespace(num_processes=2))


def test_step_prompts_cover_each_epoch_once_and_are_reproducible():
    steps = [step_prompts(5, 2, s, seed=7) for s in range(1, 6)]  # 10 draws = 2 epochs
    flat = [i for s in steps for i in s]
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:]) == list(range(5))
    assert flat[:5] != flat[5:]  # a fresh order per epoch
    assert steps == [step_prompts(5, 2, s, seed=7) for s in range(1, 6)]
    assert step_prompts(5, 2, 1, seed=8) != steps[0] or step_prompts(5, 2, 2, 8) != steps[1]


def test_shards_are_whole_and_disjoint():
    items = list(range(6))
    parts = [shard(items, r, 3) for r in range(3)]
    assert sorted(i for p in parts for i in p) == items and all(len(p) == 2 for p in parts)


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(1, "rollouts", 2, 3) == derive_seed(1, "rollouts", 2, 3)
    assert len({derive_seed(0, s) for s in range(1000)}) == 1000
    assert 0 <= derive_seed("x") < 2**62


@pytest.mark.parametrize(
    ("kind", "version", "message"),
    [
        ("DEEPSPEED", None, r"DEEPSPEED is not supported (?s:.*)fsdp2\.yaml"),
        ("FSDP", 1, r"FSDP version 1(?s:.*)fsdp_version: 2"),
    ],
)
def test_unsupported_launch_modes_are_refused_clearly(monkeypatch, kind, version, message):
    import accelerate
    from accelerate.utils import DistributedType

    from cat_framework.engine.accelerator import make_accelerator

    class FakeAccelerator:
        def __init__(self, **kwargs):
            self.distributed_type = DistributedType[kind]
            plugin = type("Plugin", (), {"fsdp_version": version})() if version else None
            self.state = type("State", (), {"fsdp_plugin": plugin})()

    monkeypatch.setattr(accelerate, "Accelerator", FakeAccelerator)
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    with pytest.raises(CatError, match=message):
        make_accelerator("no")


@pytest.mark.parametrize(
    ("anchor", "judge", "want_anchor", "want_judge"),
    [
        ("initial-policy", "anchor", "pi0", "pi0"),
        ("policy", "anchor", "sampler", "sampler"),
        ("policy", "initial-policy", "sampler", "pi0"),
        ("initial-policy", "policy", "pi0", "sampler"),
    ],
)
def test_training_roles(anchor, judge, want_anchor, want_judge, make_plugins, tmp_path):
    from cat_framework.engine.placement import training_roles as build_training_roles
    from cat_framework.pipeline import load_pipeline
    from cat_framework.pipeline.build import BackendPool

    text = (
        f"name: r\nmode: train\nmodels: {{policy: {{model: x}}, anchor: {anchor}, judge: {judge}}}\n"
        "data: {train: {dataset: gsm8k}}\naggregator: single\nreward: programmatic\n"
    )
    (tmp_path / "r.yaml").write_text(text)
    pipe = load_pipeline(tmp_path / "r.yaml", plugins=make_plugins())
    policy = SimpleNamespace(sampler=object(), anchor=object())
    roles = build_training_roles(pipe, BackendPool(), policy)  # type: ignore[arg-type]
    names = {id(policy.sampler): "sampler", id(policy.anchor): "pi0"}
    assert names[id(roles.anchor)] == want_anchor and names[id(roles.judge)] == want_judge
    assert roles.policy is policy.sampler


def test_a_policy_backend_that_cannot_take_weights_is_refused_before_loading(
    make_plugins, tmp_path
):
    from cat_framework.engine.placement import build_placement
    from cat_framework.pipeline import load_pipeline
    from cat_framework.pipeline.build import BackendPool

    (tmp_path / "p.yaml").write_text(
        "name: r\nmode: train\nmodels: {policy: {backend: openai, model: gpt-4o}}\n"
        "data: {train: {dataset: gsm8k}}\naggregator: single\nreward: programmatic\n"
    )
    plugins = make_plugins()
    pipe = load_pipeline(tmp_path / "p.yaml", plugins=plugins)
    with pytest.raises(CatError, match="backend 'openai' cannot receive the trainer's weights"):
        one = SimpleNamespace(is_fsdp2=False, num_processes=1, device="cpu")
        build_placement(pipe, plugins, BackendPool(), one, need_frozen=False)
