"""CaT-SFT as published (arXiv 2509.14234, v1 Eq. 13 and Table 2): each reference's token mean
averaged over references, and early stopping on the loss of held-out *anchor* references, ending
with the weights of the lowest one, the same decision whether or not the run was killed."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from cat_framework.engine import sft_validation
from cat_framework.engine.best_weights import prune_best, referenced_steps
from cat_framework.engine.checkpoint import latest_checkpoint
from cat_framework.engine.early_stopping import STATE_KEY, EarlyStopping, held_out, validation_due
from cat_framework.engine.record_builder import build_record
from cat_framework.engine.sft import sft_examples, split_pairs
from cat_framework.engine.sft_loss import loss_share, loss_total, sequence_nll, validation_sums
from cat_framework.errors import CatError
from cat_framework.types import Completion, Reference, RolloutGroup
from tests.engine.test_sft import sft_pipeline
from tests.engine.test_trainer import StopAt, comparable, read_jsonl, run
from tests.helpers.gold_trap import GoldTrap, armed

# two references: 2 target tokens (log-probs -1, -2) and 1 target token (-3)
LOGP = torch.tensor([[-1.0, -2.0, 0.0], [-3.0, 0.0, 0.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


# ---------------------------------------------------------------------------- the loss
def test_sequence_mean_averages_each_references_own_token_mean():
    assert sequence_nll(LOGP, MASK).tolist() == [1.5, 3.0]
    seq = loss_share(LOGP, MASK, "sequence_mean", float(loss_total(MASK, "sequence_mean")))
    tok = loss_share(LOGP, MASK, "token_mean", float(loss_total(MASK, "token_mean")))
    assert seq.item() == pytest.approx((1.5 + 3.0) / 2)  # 2.25: every reference weighs alike
    assert tok.item() == pytest.approx((1 + 2 + 3) / 3)  # 2.0: the longer one weighs double
    assert seq.item() != pytest.approx(tok.item())
    same = torch.ones(2, 2, dtype=torch.long)  # equal lengths: the two losses agree
    logp = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]])
    assert loss_share(logp, same, "sequence_mean", 2.0).item() == pytest.approx(2.5)
    assert loss_share(logp, same, "token_mean", 4.0).item() == pytest.approx(2.5)


@pytest.mark.parametrize("kind", ["sequence_mean", "token_mean"])
def test_micro_batch_shares_add_up_to_the_global_loss(kind):
    total = float(loss_total(MASK, kind))  # the global count, whatever the micro-batch
    whole = loss_share(LOGP, MASK, kind, total)
    parts = sum(loss_share(LOGP[i : i + 1], MASK[i : i + 1], kind, total) for i in range(2))
    assert parts.item() == pytest.approx(whole.item())


def test_sequence_mean_gradient_is_one_over_length_times_references():
    logp = LOGP.clone().requires_grad_()
    loss_share(logp, MASK, "sequence_mean", 2.0).backward()
    expected = -MASK.float() / MASK.sum(-1, keepdim=True).float() / 2
    torch.testing.assert_close(logp.grad, expected)


def test_validation_sums_are_the_training_loss_and_ignore_padding_rows():
    ones = torch.ones(2)
    for kind in ("sequence_mean", "token_mean"):
        s = validation_sums(LOGP, MASK, ones, kind)
        train = loss_share(LOGP, MASK, kind, float(loss_total(MASK, kind)))
        assert (s[0] / s[1]).item() == pytest.approx(train.item())
    pad = torch.tensor([1.0, 0.0])  # row 2 only pads a process's share
    assert validation_sums(LOGP, MASK, pad, "sequence_mean").tolist() == [1.5, 1.0]
    assert validation_sums(LOGP, MASK, pad, "token_mean").tolist() == [3.0, 2.0]


# ---------------------------------------------------------------------------- early stopping
def test_stops_after_patience_validations_without_a_new_lowest():
    stop = EarlyStopping(patience=3)
    improved, stopped = [], []
    for step, loss in enumerate([5.0, 4.0, 4.0, 4.5, 4.2], start=1):
        improved.append(stop.observe(step, loss))
        stopped.append(stop.stopped)
    assert improved == [True, True, False, False, False]  # a tie is no improvement
    assert stopped == [False, False, False, False, True]
    assert (stop.best, stop.best_step, stop.bad) == (4.0, 2, 3)


def test_an_improvement_resets_the_count_and_nonfinite_never_improves():
    stop = EarlyStopping(patience=2)
    for step, loss in enumerate([math.nan, 3.0, 3.5, 2.0, math.inf, 2.5], start=1):
        stop.observe(step, loss)
    assert stop.stopped and (stop.best, stop.best_step) == (2.0, 4)
    never = EarlyStopping(patience=None)
    for step in range(1, 50):
        never.observe(step, 10.0 + step)
    assert not never.stopped and never.best_step == 1


def test_state_round_trips_through_json_and_damage_is_refused():
    stop = EarlyStopping(3)
    for step, loss in enumerate([2.0, 1.0, 1.5], start=1):
        stop.observe(step, loss)
    state = json.loads(json.dumps(stop.state()))
    assert EarlyStopping.resume(3, state) == stop
    assert EarlyStopping.resume(3, {"prompts_seen": 4}) == EarlyStopping(3)  # a fresh run
    good = {"best": 1.0, "best_step": 2, "bad": 1, "stopped": False}
    for damage in (
        [],
        {**good, "extra": 1},
        {**good, "best": "1.0"},
        {**good, "best": math.nan},
        {**good, "best_step": None},
        {**good, "best_step": True},
        {**good, "bad": -1},
        {**good, "stopped": 1},
    ):
        with pytest.raises(CatError, match="damaged"):
            EarlyStopping.resume(3, {STATE_KEY: damage})


def test_validation_cadence():
    due = [s for s in range(1, 9) if validation_due(s, 0, 3, 8)]
    assert due == [3, 6, 8]  # each epoch's end, and the last step
    assert [s for s in range(1, 9) if validation_due(s, 2, 3, 8)] == [2, 4, 6, 8]


# ---------------------------------------------------------------------------- the split
def test_the_split_is_seeded_order_free_and_sized():
    ids = [f"q{i}" for i in range(100)]
    val = held_out(ids, 0.1, seed=0)
    assert len(val) == 10 and val <= set(ids)
    assert held_out(list(reversed(ids)), 0.1, seed=0) == val  # file order does not matter
    assert held_out(ids, 0.1, seed=1) != val
    assert held_out(ids, 0.0, seed=0) == set()
    assert len(held_out(ids[:2], 0.9, seed=0)) == 1  # one is always left to train on
    assert len(held_out(ids[:3], 0.01, seed=0)) == 1  # and one to validate on
    with pytest.raises(CatError, match="at least 2"):
        held_out(ids[:1], 0.5, seed=0)


class _Tokenizer:
    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


class _Placement:
    tokenizer = _Tokenizer()

    def encode(self, messages):
        return [ord(c) for c in messages[-1]["content"]]


def test_held_out_targets_are_the_anchors_references_never_gold():
    prompts = [
        GoldTrap(
            gold_answer=f"GOLD {i}",
            id=f"q{i}",
            messages=[{"role": "user", "content": f"question {i}"}],
            meta={"task": "freeform"},
        )
        for i in range(10)
    ]
    refs = {}
    for p in prompts:
        group = RolloutGroup(p, (Completion("a"), Completion("b")))
        ref = Reference(f"anchor on {p.id}", "synthesis")
        refs[p.id] = build_record("sft", 0, group, {"synthesis": ref}, "synthesis").to_dict()
    for p in prompts:
        armed(p)  # from here on, reading a gold answer or rubric raises
    train, held = split_pairs(sft_examples(_Placement(), prompts, refs), 0.3, seed=7)
    assert (len(train), len(held)) == (7, 3)
    questions = {text(q) for q, _ in held}
    assert questions.isdisjoint(text(q) for q, _ in train)  # never validated and trained on
    expected = held_out([p.id for p in prompts], 0.3, seed=7)
    assert questions == {f"question {pid[1:]}" for pid in expected}
    for q, target in held:
        assert target[-1] == 0 and text(target[:-1]) == f"anchor on q{text(q).split()[-1]}"


def text(ids):
    return "".join(chr(i) for i in ids)


def test_best_weights_a_checkpoint_names_survive_pruning(tmp_path):
    root = tmp_path / "checkpoints"
    for name in ("best-000001", "best-000002", "best-000005", "step-000004"):
        (root / name).mkdir(parents=True)
    state = {"step": 4, STATE_KEY: {"best": 1.0, "best_step": 2, "bad": 1, "stopped": False}}
    (root / "step-000004" / "state.json").write_text(json.dumps(state))
    named = referenced_steps(tmp_path, sft_validation.best_step_of)
    assert named == {2}
    prune_best(tmp_path, named | {5})  # 5: the newest best, no checkpoint names it yet
    assert sorted(p.name for p in root.iterdir()) == ["best-000002", "best-000005", "step-000004"]


# ---------------------------------------------------------------------------- whole runs
VALIDATED = (
    "{steps: 100, sft_epochs: 3, prompts_per_step: 2, micro_batch_size: 2, learning_rate: 0.01, "
    "save_every: 2, sft_loss: sequence_mean, sft_validation: 0.34, sft_patience: null, "
    "lora: {r: 8, alpha: 16}}"
)


def trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_weights(model, file):
    saved = load_file(str(file))
    now = trainable(model)
    assert set(saved) == set(now) and all(torch.equal(saved[n], now[n]) for n in now)


def test_validation_loss_each_epoch_and_the_run_ends_with_the_lowest(
    tmp_path, tiny_policy, toy_data, captured
):
    run(sft_pipeline(tmp_path, tiny_policy, toy_data, VALIDATED), tmp_path / "run")
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    steps = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in steps] == list(range(1, 7))  # 6 prompts: 2 held out, 4 train
    vals = {m["step"]: m["val/loss"] for m in steps if "val/loss" in m}
    assert sorted(vals) == [2, 4, 6] and all(math.isfinite(v) and v > 0 for v in vals.values())
    best = min(vals, key=vals.get)
    assert steps[-1]["val/best_step"] == best
    ckpt = latest_checkpoint(tmp_path / "run")
    assert ckpt.step == 6 and ckpt.state[STATE_KEY]["best_step"] == best
    assert ckpt.state[STATE_KEY]["best"] == pytest.approx(vals[best])
    model = captured[0].model
    assert_weights(
        model, tmp_path / "run" / "checkpoints" / f"best-{best:06d}" / "trainable.safetensors"
    )
    assert [m["step"] for m in metrics if "eval/single/score" in m] == [6]


LOSSES = {1: 5.0, 2: 4.5, 3: 4.0, 4: 4.2, 5: 4.1, 6: 4.3, 7: 1.0, 8: 1.0}
STOPPING = VALIDATED.replace("sft_epochs: 3", "sft_epochs: 6").replace(
    "sft_validation: 0.34, sft_patience: null",
    "sft_validation: 0.34, sft_patience: 3, sft_validate_every: 1",
)


def scripted(run_, pairs, kind):
    """A validation loss by step (the scheduler counts the optimizer steps taken)."""
    return LOSSES[run_.updater.scheduler.last_epoch]


def test_early_stopping_stops_at_patience_and_a_resume_decides_the_same(
    tmp_path, tiny_policy, toy_data, captured, monkeypatch
):
    monkeypatch.setattr(sft_validation, "validation_loss", scripted)
    pipeline = sft_pipeline(tmp_path, tiny_policy, toy_data, STOPPING)
    run(pipeline, tmp_path / "straight")
    metrics = read_jsonl(tmp_path / "straight" / "metrics.jsonl")
    steps = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in steps] == list(range(1, 7))  # of 12: stopped after step 6
    assert [m["val/loss"] for m in steps] == [LOSSES[s] for s in range(1, 7)]
    assert [m["val/best_step"] for m in steps] == [1, 2, 3, 3, 3, 3]
    assert [m["step"] for m in metrics if "eval/single/score" in m] == [6]
    ckpt = latest_checkpoint(tmp_path / "straight")
    assert ckpt.step == 6
    assert ckpt.state[STATE_KEY] == {"best": 4.0, "best_step": 3, "bad": 3, "stopped": True}
    root = tmp_path / "straight" / "checkpoints"
    assert sorted(p.name for p in root.glob("best-*")) == ["best-000003"]  # the rest pruned
    straight = trainable(captured[0].model)
    assert_weights(captured[0].model, root / "best-000003" / "trainable.safetensors")
    last = load_file(str(root / "step-000006" / "trainable.safetensors"))
    assert any(not torch.equal(last[n], straight[n]) for n in straight)  # the best, not the last

    # killed after step 3 (its best written, its checkpoint not): resumed from step 2
    with pytest.raises(KeyboardInterrupt):
        run(pipeline, tmp_path / "cut", ("stop", StopAt(3)))
    assert latest_checkpoint(tmp_path / "cut").step == 2
    run(pipeline, tmp_path / "cut", resume=True)
    resumed = [m for m in read_jsonl(tmp_path / "cut" / "metrics.jsonl") if "loss" in m]
    assert comparable(resumed) == comparable(steps)
    again = trainable(captured[2].model)
    assert all(torch.equal(straight[n], again[n]) for n in straight)
    assert latest_checkpoint(tmp_path / "cut").state[STATE_KEY] == ckpt.state[STATE_KEY]

    # resumed once more after it stopped: no further training, the same final weights
    run(pipeline, tmp_path / "cut", resume=True)
    rows = [m for m in read_jsonl(tmp_path / "cut" / "metrics.jsonl") if "loss" in m]
    assert [m["step"] for m in rows] == list(range(1, 7))
    assert all(torch.equal(straight[n], p) for n, p in trainable(captured[3].model).items())
