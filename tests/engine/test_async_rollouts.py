"""One-step-off rollouts (``trainer.async_rollouts: 1``) on a tiny random Llama (CPU): which
weights sample each step, the importance weights that correct the staleness, exact resume, a
tampered pending file, and a failing background sampler."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from cat_framework import hookimpl
from cat_framework.components import Backend, RewardDeriver
from cat_framework.engine.async_rollouts import RolloutsAhead
from cat_framework.engine.checkpoint import latest_checkpoint
from cat_framework.engine.schedule import derive_seed
from cat_framework.engine.sequences import build_batch, completion_logps
from cat_framework.engine.teacher import explore
from cat_framework.errors import CatError
from cat_framework.pipeline import load_pipeline
from cat_framework.pipeline.schema import Rollouts
from cat_framework.plugins import load_plugins
from cat_framework.records import RunRecord
from cat_framework.types import Prompt, Rewards
from cat_plugins.backends.transformers_backend import TransformersBackend
from tests.engine.test_trainer import StopAt, comparable, read_jsonl, run, write_pipeline

ASYNC = (
    "{steps: %d, prompts_per_step: 2, learning_rate: 0.01, beta: 0.0, save_every: 1, "
    "keep_checkpoints: 10, async_rollouts: %d}"
)


class EvenTokens(RewardDeriver):
    """The share of even token ids: the tiny model's random rollouts always spread on it, so
    every step moves the weights, and learning shows as a rising reward."""

    name = "even_tokens"

    def derive(self, groups: Any, references: Any) -> list[Rewards]:
        return [
            Rewards(values=[sum(t % 2 == 0 for t in c.token_ids) / max(len(c.token_ids), 1)
                            for c in g.rollouts])
            for g in groups
        ]  # fmt: skip


class EvenTokensPlugin:
    @hookimpl
    def register_reward_derivers(self, register: Any) -> None:
        register(EvenTokens)


PLUGIN = ("even-tokens", EvenTokensPlugin())


def pipeline_file(tmp: Path, model: Path, data: Path, steps: int, mode: int) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    path = write_pipeline(tmp, model, data, ASYNC % (steps, mode))
    path.write_text(
        path.read_text().replace(
            "reward: {name: programmatic, fallback: number}", "reward: even_tokens"
        )
    )
    return path


def step_records(run_dir: Path, step: int) -> list[RunRecord]:
    rows = read_jsonl(run_dir / "records.jsonl")
    return [RunRecord.from_dict(r) for r in rows if r["step"] == step]


def sampled_by(model_dir: Path, pipeline: Path, step: int) -> list[Any]:
    """The tokens and their log-probs the weights in ``model_dir`` sample for ``step``'s
    prompts and seeds."""
    pipe = load_pipeline(pipeline, plugins=load_plugins(entry_points=False, extra=[PLUGIN]))
    cfg = pipe.config
    records = step_records(pipeline.parent / "async", step)
    seeds = [derive_seed(cfg.seed, "rollouts", step, k) for k in range(len(records))]
    backend = TransformersBackend({"model": str(model_dir), "device": "cpu"})
    prompts = [Prompt(r.prompt_id, tuple(r.messages)) for r in records]
    groups = explore(backend, prompts, cfg.rollouts, seeds=seeds)
    return [(c.token_ids, c.logprobs) for g in groups for c in g.rollouts]


def weights_after(run_dir: Path, step: int, base: Path, into: Path) -> Path:
    """A model folder holding the trained weights of ``step``'s checkpoint."""
    model = TransformersBackend({"model": str(base), "device": "cpu"})
    state = load_file(str(run_dir / "checkpoints" / f"step-{step:06d}" / "trainable.safetensors"))
    model.model.load_state_dict(state)
    model.model.save_pretrained(into)
    model.tokenizer.save_pretrained(into)
    return into


def test_each_step_trains_on_rollouts_of_the_weights_one_update_older(
    tmp_path, tiny_policy, toy_data
):
    """Step 1 samples in place (staleness 0); step t >= 2 trains on rollouts sampled with the
    weights before step t-1's update, and weighs them by min(pi_{t-1} / pi_{t-2}, 3) per token."""
    pipeline = pipeline_file(tmp_path, tiny_policy, toy_data, 3, 1)
    run(pipeline, tmp_path / "async", PLUGIN)
    metrics = read_jsonl(tmp_path / "async" / "metrics.jsonl")
    assert [m["rollouts/staleness"] for m in metrics] == [0.0, 1.0, 1.0]
    assert metrics[0]["is_weight/mean"] == pytest.approx(1.0, abs=1e-4)  # the same weights
    # step 2's rollouts come from the initial weights (step 1's sampler), not from step 1's
    # (step 1's checkpoint holds them, token ids and sampler log-probs included)
    theta1 = weights_after(tmp_path / "async", 1, tiny_policy, tmp_path / "theta1")
    ckpt = tmp_path / "async" / "checkpoints" / "step-000001" / "pending-rollouts-0.json"
    pending = json.loads(ckpt.read_text())
    assert pending["step"] == 2
    records = step_records(tmp_path / "async", 2)
    assert [[c["text"] for c in g] for g in pending["rollouts"]] == [
        [r.text for r in rec.rollouts] for rec in records
    ]
    step2 = [(tuple(c["token_ids"]), c["logprobs"]) for g in pending["rollouts"] for c in g]
    by_theta0, by_theta1 = sampled_by(tiny_policy, pipeline, 2), sampled_by(theta1, pipeline, 2)
    assert [t for t, _ in step2] == [t for t, _ in by_theta0]
    lp2, lp0, lp1 = (
        torch.tensor([x for _, lp in r for x in lp]) for r in (step2, by_theta0, by_theta1)
    )
    assert torch.allclose(lp2, lp0, atol=1e-5)
    assert lp1.shape != lp2.shape or (lp1 - lp2).abs().max() > 1e-3
    # the importance weight of step 2: exp(log pi_theta1 - log pi_theta0), capped at 3
    model = TransformersBackend({"model": str(theta1), "device": "cpu"})
    prompt_ids, completion_ids, engine = [], [], []
    for record, group in zip(records, pending["rollouts"], strict=True):
        for c in group:
            prompt_ids.append(model.encode_context(record.messages))
            completion_ids.append(list(c["token_ids"]))
            engine.append(list(c["logprobs"]))
    batch = build_batch(prompt_ids, completion_ids, model.tokenizer.pad_token_id or 0)
    with torch.no_grad():
        logp, _ = completion_logps(model.model, batch, 1.0)
    mask = batch.completion_mask.float()
    engine_logp = torch.zeros_like(logp)
    for b, e in enumerate(engine):
        engine_logp[b, : len(e)] = torch.tensor(e)
    weights = torch.exp(logp - engine_logp).clamp(max=3.0)
    expected = float((weights * mask).sum() / mask.sum())
    assert metrics[1]["is_weight/mean"] == pytest.approx(expected, rel=1e-4)
    assert abs(expected - 1.0) > 1e-3  # the update moved the policy: the weights matter


def test_one_step_off_learns_like_the_synchronous_loop(tmp_path, tiny_policy, toy_data):
    """On the tiny model the majority-vote reward rises over 8 steps with and without
    one-step-off sampling, to a similar level."""
    curves = {}
    for mode in (0, 1):
        pipeline = pipeline_file(tmp_path / str(mode), tiny_policy, toy_data, 8, mode)
        run(pipeline, tmp_path / str(mode) / "async", PLUGIN)
        curves[mode] = [
            m["reward/mean"] for m in read_jsonl(pipeline.parent / "async" / "metrics.jsonl")
        ]
    for curve in curves.values():
        assert sum(curve[-3:]) / 3 > sum(curve[:3]) / 3 + 0.1, curve
    assert abs(sum(curves[0][-3:]) - sum(curves[1][-3:])) / 3 < 0.25, curves


def test_resume_is_exact_with_rollouts_sampled_ahead(tmp_path, tiny_policy, toy_data, captured):
    """The checkpoint holds the next step's rollouts (sampled with weights no checkpoint keeps);
    a run cut after step 2 and resumed equals an uninterrupted one."""
    pipeline = pipeline_file(tmp_path / "p", tiny_policy, toy_data, 4, 1)
    run(pipeline, tmp_path / "straight", PLUGIN)
    with pytest.raises(KeyboardInterrupt):
        run(pipeline, tmp_path / "cut", PLUGIN, ("stop", StopAt(2)))
    ckpt = latest_checkpoint(tmp_path / "cut")
    assert ckpt.step == 2 and ckpt.extra == ["pending-rollouts"]
    pending = json.loads((ckpt.path / "pending-rollouts-0.json").read_text())
    assert pending["step"] == 3
    run(pipeline, tmp_path / "cut", PLUGIN, resume=True)
    straight, resumed = captured[0].model.state_dict(), captured[2].model.state_dict()
    assert all(torch.equal(straight[n], resumed[n]) for n in straight)
    m_straight = read_jsonl(tmp_path / "straight" / "metrics.jsonl")
    assert comparable(m_straight) == comparable(read_jsonl(tmp_path / "cut" / "metrics.jsonl"))
    r_straight = read_jsonl(tmp_path / "straight" / "records.jsonl")
    assert r_straight == read_jsonl(tmp_path / "cut" / "records.jsonl")


def test_a_tampered_pending_file_is_a_clear_error(tmp_path, tiny_policy, toy_data):
    pipeline = pipeline_file(tmp_path, tiny_policy, toy_data, 3, 1)
    with pytest.raises(KeyboardInterrupt):
        run(pipeline, tmp_path / "cut", PLUGIN, ("stop", StopAt(1)))
    file = latest_checkpoint(tmp_path / "cut").path / "pending-rollouts-0.json"
    data = json.loads(file.read_text())
    data["prompt_ids"] = list(reversed(data["prompt_ids"]))
    file.write_text(json.dumps(data))
    with pytest.raises(CatError, match=r"pending-rollouts-0\.json: its rollouts are for prompts"):
        run(pipeline, tmp_path / "cut", PLUGIN, resume=True)
    data["prompt_ids"].reverse()
    file.write_text(json.dumps({**data, "step": 5}))
    with pytest.raises(CatError, match="rollouts for step 5, but the run resumes at step 2"):
        run(pipeline, tmp_path / "cut", PLUGIN, resume=True)
    data["rollouts"][0] = data["rollouts"][0][:1]
    file.write_text(json.dumps(data))
    with pytest.raises(CatError, match=r"group 0 is not valid rollouts \(a list of 4 completions"):
        run(pipeline, tmp_path / "cut", PLUGIN, resume=True)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("logprobs", "NaN", "log-prob 'NaN' is not a finite number <= 0"),
        ("logprobs", float("nan"), "log-prob nan is not a finite number <= 0"),
        ("logprobs", 1e308, r"log-prob 1e\+308 is not a finite number <= 0"),
        ("token_ids", -1, r"token id -1 is outside the model's vocabulary \(0 to \d+\)"),
        ("token_ids", 10**6, r"token id 1000000 is outside the model's vocabulary"),
        ("token_ids", "7", "token id '7' is not an integer"),
    ],
)
def test_a_pending_file_with_bad_numbers_is_refused_by_name(
    tmp_path, tiny_policy, toy_data, field, value, message
):
    """A NaN log-prob in the pending rollouts would turn every weight into NaN; an id outside
    the vocabulary fails deep in a forward pass: one message naming the file and the record."""
    pipeline = pipeline_file(tmp_path, tiny_policy, toy_data, 3, 1)
    with pytest.raises(KeyboardInterrupt):
        run(pipeline, tmp_path / "cut", PLUGIN, ("stop", StopAt(1)))
    ckpt = latest_checkpoint(tmp_path / "cut")
    file = ckpt.path / "pending-rollouts-0.json"
    data = json.loads(file.read_text())
    data["rollouts"][1][2][field][0] = value
    file.write_text(json.dumps(data))
    before = (ckpt.path / "trainable.safetensors").read_bytes()
    where = r"pending-rollouts-0\.json: group 1, rollout 2: "
    with pytest.raises(CatError, match=where + message):
        run(pipeline, tmp_path / "cut", PLUGIN, resume=True)
    assert (ckpt.path / "trainable.safetensors").read_bytes() == before
    assert not (tmp_path / "cut" / "final").exists()


class FailingSampler(Backend):
    """A sampler whose engine dies mid-generation (what a crashed server looks like)."""

    name = "failing"

    def generate(self, requests: Any) -> Any:
        raise RuntimeError("engine died")

    def score(self, contexts: Any, continuations: Any) -> Any:
        raise RuntimeError("engine died")


def test_a_background_sampling_error_reaches_the_training_thread():
    ahead = RolloutsAhead(FailingSampler(None), Rollouts(n=2), lambda step: ([], []))
    ahead.start(2)
    with pytest.raises(RuntimeError, match="engine died"):
        ahead.join()
    ahead.close()  # nothing left running


def test_nothing_is_sampled_past_the_last_step():
    planned: list[int] = []

    def plan(step: int) -> Any:
        planned.append(step)
        return None

    ahead = RolloutsAhead(FailingSampler(None), Rollouts(n=2), plan)
    ahead.start(5)
    assert ahead.join() == 0.0 and ahead.state() is None and planned == [5]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_fsdp2_gathered_copy_samples_ahead_like_one_process(tmp_path, tiny_policy, toy_data):
    """Under FSDP2 the gathered generation copy samples the next step during the sharded update
    (it is kept, not freed, for that); 2 processes match one process."""
    from tests.engine.placement_runs import assert_same_run, kl_only_pi0, launch

    pipeline = kl_only_pi0(pipeline_file(tmp_path / "p", tiny_policy, toy_data, 3, 1))
    plugin = tmp_path / "p" / "run_with_plugin.py"
    plugin.write_text(
        f"import sys\nsys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n"
        "from tests.engine.test_async_rollouts import PLUGIN\n"
        "from tests.engine.test_trainer import run\n"
        "from pathlib import Path\n"
        "run(Path(sys.argv[1]), Path(sys.argv[2]), PLUGIN)\n"
    )
    proc = launch(str(pipeline), str(tmp_path / "fsdp"), script=plugin)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run(pipeline, tmp_path / "single", PLUGIN)
    metrics = assert_same_run(tmp_path / "fsdp", tmp_path / "single", [1, 2, 3])
    assert [m["rollouts/staleness"] for m in metrics] == [0.0, 1.0, 1.0]
    assert metrics[1]["is_weight/mean"] == pytest.approx(
        read_jsonl(tmp_path / "single" / "metrics.jsonl")[1]["is_weight/mean"], rel=1e-5
    )


def test_lora_pushes_leave_pi0_bit_for_bit(tmp_path, tiny_policy, toy_data, captured):
    """Under LoRA the sampling copy gets W + s*B@A computed apart: the trained module's base
    weights (pi_0: the anchor and the KL reference) never pass through a merge and unmerge."""
    pipeline = pipeline_file(tmp_path, tiny_policy, toy_data, 3, 1)
    text = pipeline.read_text().replace(
        "async_rollouts: 1}", "async_rollouts: 1, lora: {r: 4, alpha: 8}}"
    )
    pipeline.write_text(text)
    run(pipeline, tmp_path / "lora", PLUGIN)
    start = load_file(str(tiny_policy / "model.safetensors"))
    trained = captured[0].model.state_dict()
    for name, tensor in trained.items():
        if "lora_" in name:
            continue
        base = name.removeprefix("base_model.model.").replace(".base_layer", "")
        assert torch.equal(tensor, start[base]), name


def test_another_process_count_samples_the_pending_step_again(tmp_path):
    """Pending rollouts were split by process: with another count they are not used."""
    from cat_framework.engine.checkpoint import Checkpoint

    ahead = RolloutsAhead(FailingSampler(None), Rollouts(n=2), lambda step: None)
    ckpt = Checkpoint(tmp_path, 2, {"extra": ["pending-rollouts"], "processes": 2})
    ahead.resume(ckpt, 3, [], processes=1, index=0)
    assert ahead.state() is None  # nothing restored: step 3 samples in place


def test_bad_pending_numbers_fall_back_to_the_older_checkpoint(tmp_path, tiny_policy, toy_data):
    """Every process checks every pending file before choosing a checkpoint, so a bad one is
    skipped alike everywhere (no process waits for another that failed) and the older one used."""
    pipeline = pipeline_file(tmp_path, tiny_policy, toy_data, 3, 1)
    with pytest.raises(KeyboardInterrupt):
        run(pipeline, tmp_path / "cut", PLUGIN, ("stop", StopAt(2)))
    newest = latest_checkpoint(tmp_path / "cut")
    assert newest.step == 2
    file = newest.path / "pending-rollouts-0.json"
    data = json.loads(file.read_text())
    data["rollouts"][0][0]["logprobs"][0] = "NaN"
    file.write_text(json.dumps(data))
    run(pipeline, tmp_path / "cut", PLUGIN, resume=True)
    log = (tmp_path / "cut" / "log.jsonl").read_text()
    assert "pending-rollouts-0.json: group 0, rollout 0: log-prob 'NaN'" in log
    assert "resuming from an older checkpoint" in log
    assert (tmp_path / "cut" / "final").exists()


def test_a_sampler_without_log_probs_stops_one_step_off_sampling(
    monkeypatch, tmp_path, tiny_policy, toy_data
):
    """Stale rollouts cannot be importance-weighted without the sampler's log-probs: the run
    stops with what to do (decided on every process alike), never trains on them uncorrected."""
    import dataclasses

    from cat_plugins.backends.transformers_backend import TransformersBackend

    generate = TransformersBackend.generate

    def without_log_probs(self: Any, requests: Any) -> Any:
        return [
            [dataclasses.replace(c, logprobs=None) for c in cs] for cs in generate(self, requests)
        ]

    monkeypatch.setattr(TransformersBackend, "generate", without_log_probs)
    pipeline = pipeline_file(tmp_path, tiny_policy, toy_data, 2, 1)
    with pytest.raises(
        CatError, match=r"did not return one log-prob per sampled token(?s:.*)async_rollouts: 0"
    ):
        run(pipeline, tmp_path / "run", PLUGIN)
