"""CaT-SFT on a tiny random Llama: references from the frozen anchor, then LoRA cross-entropy on
(question -> reference); resume reuses the references instead of synthesizing them again."""

from __future__ import annotations

import pytest

from cat_framework.engine.checkpoint import latest_checkpoint
from cat_framework.records import RunRecord
from tests.engine.test_trainer import StopAt, read_jsonl, run, write_pipeline

SFT = (
    "{steps: 100, sft_epochs: 6, prompts_per_step: 3, micro_batch_size: 2, learning_rate: 0.01, "
    "save_every: 2, lora: {r: 8, alpha: 16}}"
)


def sft_pipeline(tmp, model, data, trainer=SFT):
    path = write_pipeline(tmp, model, data, trainer)
    text = (
        path.read_text()
        .replace("mode: train", "mode: sft")
        .replace(
            "aggregator: {name: majority, fallback: number}",
            "aggregator: {name: synthesis, max_new_tokens: 12}",
        )
    )
    eval_data = f'  eval: {{dataset: jsonl, path: "{data}", answer_field: answer, id_field: id}}'
    text = text.replace("data:\n", f"data:\n{eval_data}\n").replace(
        "reward: {name: programmatic, fallback: number}\n", ""
    )
    # freeform: a tiny random model's math references commit to no answer, which is no reference
    text = text.replace("  train: {dataset: jsonl,", "  train: {dataset: jsonl, task: freeform,")
    path.write_text(text + "eval: {aggregators: [single], limit: 2, bootstrap: 10}\n")
    return path


def test_sft_trains_on_synthesized_references(tmp_path, tiny_policy, toy_data, captured):
    run(sft_pipeline(tmp_path, tiny_policy, toy_data), tmp_path / "run")
    records = read_jsonl(tmp_path / "run" / "records.jsonl")
    assert len(records) == 6 and all(r["primary"] == "synthesis" for r in records)
    assert all(RunRecord.from_dict(r).to_dict() == r and r["mode"] == "sft" for r in records)
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    evals = [m for m in metrics if "eval/single/score" in m]
    assert [m["step"] for m in evals] == [12]  # the fine-tuned policy, evaluated at the end
    metrics = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in metrics] == list(range(1, 13))  # 6 epochs x 2 steps of 3 prompts
    first = (metrics[0]["loss"] + metrics[1]["loss"]) / 2  # epoch 1
    last = (metrics[10]["loss"] + metrics[11]["loss"]) / 2  # epoch 6, same prompts
    assert last < 0.85 * first  # it learns the 6 references
    policy = captured[0]
    tok = policy.tokenizer
    # the training target is exactly the reference text (+ EOS)
    from cat_framework.engine.sft import sft_pairs

    refs = {r["prompt_id"]: r for r in records}
    prompts = [p for p in _prompts(toy_data)]
    pairs = sft_pairs(policy, prompts, refs)
    assert tok.decode(pairs[0][1][:-1]) == refs[prompts[0].id]["references"]["synthesis"]["text"]
    assert pairs[0][1][-1] == tok.eos_token_id
    assert (tmp_path / "run" / "final" / "adapter_model.safetensors").exists()


def _prompts(data):
    from cat_plugins.datasets.jsonl import JsonlDataset

    params = {"path": str(data), "answer_field": "answer", "id_field": "id", "task": "freeform"}
    return JsonlDataset(params).load()


def test_sft_resume_reuses_references(tmp_path, tiny_policy, toy_data):
    pipeline = sft_pipeline(tmp_path, tiny_policy, toy_data)
    with pytest.raises(KeyboardInterrupt):
        run(pipeline, tmp_path / "run", ("stop", StopAt(3)))
    assert latest_checkpoint(tmp_path / "run").step == 2
    before = (tmp_path / "run" / "records.jsonl").read_text()
    run(pipeline, tmp_path / "run", resume=True)
    assert (tmp_path / "run" / "records.jsonl").read_text() == before
    log = read_jsonl(tmp_path / "run" / "log.jsonl")
    starts = [i for i, e in enumerate(log) if e["event"] == "run start"]
    assert not [e for e in log[starts[-1] :] if e["event"] == "references"]
    steps = [m["step"] for m in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "loss" in m]
    assert steps == list(range(1, 13))
