"""The placement contract across processes: every sharded placement, launched on 2 processes
(FSDP2 on CPU, gloo), trains like one process, and the sharded placements that checkpoint
resume exactly after a kill. One table of placements, one test per promise:

- ``train``: 3 GRPO steps agree with one process (metrics, the same rollouts and references,
  the exported model), each push parity-checked on the way (a skipped tensor fails the run:
  test_placement_edges.py, and per placement in one process: test_placements.py);
- ``sft``: pi_0 synthesizes the same references and the fine-tuning agrees;
- ``resume``: a run killed after step 3 and resumed equals an uninterrupted one, bit for bit.

Tolerances: placement_runs.py."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.engine.placement_runs import (
    ADAPTERS,
    LORA,
    TRAINER,
    WEIGHTS,
    assert_same_final,
    assert_same_run,
    kl_only_pi0,
    launch,
    single,
    straight_and_resumed,
    to_sft,
    vllm_pipeline,
)
from tests.engine.test_trainer import read_jsonl, run, write_pipeline

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

WITH_LORA = TRAINER.removesuffix("}") + f", {LORA}}}"
SFT = "{steps: 4, sft_epochs: 2, prompts_per_step: 4, micro_batch_size: 2, learning_rate: 0.01}"


@dataclass(frozen=True)
class Case:
    trainer: str
    lora: bool = False
    engine: bool = False  # a vLLM policy engine in every process
    kl_only: bool = False  # anchor: the policy, so pi_0 only gives KL log-probs (sharded too)
    lockstep: bool = False  # no whole copy: the shards generate in lock-step

    @property
    def policy(self) -> str:
        return "vllm_policy" if self.engine else "tiny_policy"


CASES = {
    "gathered-copy": Case(TRAINER, kl_only=True),
    "gathered-copy-lora": Case(WITH_LORA, lora=True),  # pi_0 generates: the copy, adapters off
    "on-shards": Case(
        TRAINER.replace("beta: 0.01", "beta: 0.01, fsdp_gather_for_generation: false"),
        lockstep=True,
    ),
    "vllm-engine": Case(TRAINER, engine=True),
    "vllm-engine-lora": Case(WITH_LORA, lora=True, engine=True),
}


def cases(*names: str) -> list:
    return [
        pytest.param(n, marks=[pytest.mark.vllm] if CASES[n].engine else [], id=n) for n in names
    ]


def pipeline_for(case: Case, tmp_path: Path, policy: Path, data: Path, trainer: str) -> Path:
    if case.engine:
        return vllm_pipeline(tmp_path, policy, data, trainer)
    path = write_pipeline(tmp_path, policy, data, trainer)
    return kl_only_pi0(path) if case.kl_only else path


def run_both(case: Case, pipeline: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The pipeline on 2 processes and in one: (sharded run, single run)."""
    proc = launch("run", str(pipeline), "--run-dir", str(tmp_path / "fsdp"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    if case.engine:  # vLLM in its own process, as a user runs it
        proc = single(pipeline, tmp_path / "single")
        assert proc.returncode == 0, proc.stderr[-3000:]
    else:
        run(pipeline, tmp_path / "single")
    return tmp_path / "fsdp", tmp_path / "single"


def events(run_dir: Path, name: str) -> list[dict]:
    return [e for e in read_jsonl(run_dir / "log.jsonl") if e["event"] == name]


def assert_really_sharded(ckpt: Path, policy: Path, lora: bool) -> None:
    """The checkpoint holds each process's half of the weights (or of the adapters)."""
    state = json.loads((ckpt / "state.json").read_text())
    assert state["sharded"] is True and state["processes"] == 2
    shards = [load_file(str(ckpt / f"trainable-{i}.safetensors")) for i in range(2)]
    base = "model.layers.0.mlp.up_proj.weight"
    rows = load_file(str(policy / "model.safetensors"))[base].shape[0]
    name = "base_model.model.model.layers.0.mlp.up_proj.lora_B.default.weight" if lora else base
    assert [s[name].shape[0] for s in shards] == [rows // 2, rows - rows // 2]
    if lora:
        assert all("lora_" in n for s in shards for n in s)  # only adapters train


@pytest.mark.parametrize("name", cases(*CASES))
def test_two_processes_train_like_one(name, request, tmp_path, toy_data):
    case = CASES[name]
    policy = request.getfixturevalue(case.policy)
    pipeline = pipeline_for(case, tmp_path, policy, toy_data, case.trainer)
    sharded, one = run_both(case, pipeline, tmp_path)
    assert len(events(sharded, "fsdp2 on cpu")) == 2
    assert len(events(sharded, "sharded weights: no replica check")) == 2
    assert_really_sharded(sharded / "checkpoints" / "step-000003", policy, case.lora)
    if case.lockstep:
        summaries = events(sharded, "lockstep generation")
        assert len(summaries) == 2 and all(s["forwards"] > 0 for s in summaries)
    for run_dir in (sharded, one):  # every push was checked against what the engine serves
        names = [e["event"] for e in read_jsonl(run_dir / "log.jsonl")]
        assert not any(n.startswith(("no weight parity check", "weight parity:")) for n in names)
    metrics = assert_same_run(sharded, one, [1, 2, 3])  # the same samples: the same weights
    if case.engine:
        assert all(m["time/training/push_weights"] > 0 for m in metrics)  # every step pushed
    if case.lora:
        assert metrics[-1]["kl"] > 0  # the reference (adapters off) differs from the policy
    assert_same_final(one, sharded, policy, case.lora)


@pytest.mark.parametrize("name", cases("gathered-copy", "gathered-copy-lora", "vllm-engine"))
def test_two_processes_fine_tune_like_one(name, request, tmp_path, toy_data):
    """``mode: sft``: pi_0 (the copy, the copy with adapters off, or the engine before any push)
    synthesizes the same references; the sharded twin trains on them like one process."""
    case = CASES[name]
    policy = request.getfixturevalue(case.policy)
    trainer = SFT.removesuffix("}") + f", {LORA}}}" if case.lora else SFT
    pipeline = to_sft(pipeline_for(case, tmp_path, policy, toy_data, trainer))
    # a synthesis prompt holds all G rollouts: a longer context than the rollouts need
    pipeline.write_text(pipeline.read_text().replace("max_model_len: 256", "max_model_len: 1024"))
    sharded, one = run_both(case, pipeline, tmp_path)
    state = sharded / "checkpoints" / "step-000004" / "state.json"
    assert json.loads(state.read_text())["sharded"] is True  # really FSDP2, not DDP
    losses = [read_jsonl(d / "metrics.jsonl") for d in (sharded, one)]
    assert [m["step"] for m in losses[0]] == [1, 2, 3, 4]
    for a, b in zip(*losses, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), a["step"]
    refs = [sorted(read_jsonl(d / "records.jsonl"), key=lambda r: r["prompt_id"]) for d in (
        sharded, one)]  # fmt: skip
    assert len(refs[0]) == 6 and refs[0] == refs[1]
    assert_same_final(one, sharded, policy, case.lora)


@pytest.mark.parametrize("name", cases("gathered-copy", "gathered-copy-lora"))
def test_a_sharded_run_resumes_exactly(name, tiny_policy, tmp_path, toy_data):
    """Killed after step 3 (checkpoints every 2), resumed from step 2: the same metrics, records
    and final model as an uninterrupted run; step 4's rollouts come from the resumed weights,
    pushed to the copy at the resume."""
    case = CASES[name]
    trainer = case.trainer.replace("steps: 3", "steps: 4, save_every: 2, lr_scheduler: linear")
    pipeline = write_pipeline(tmp_path, tiny_policy, toy_data, trainer)  # pi_0 anchor: whole
    straight, cut = straight_and_resumed(tmp_path, pipeline)
    final = ADAPTERS if case.lora else WEIGHTS
    a, b = load_file(str(straight / final)), load_file(str(cut / final))
    assert set(a) == set(b) and all((a[k] == b[k]).all() for k in a)
