"""Placements at their edges, on 2 processes (FSDP2 on CPU, gloo):

- lock-step generation on the shards (``trainer.fsdp_gather_for_generation: false``) under
  uneven work: prompts of very different lengths, a small ``max_batch_tokens`` (different numbers
  of micro-batches per process), stop strings (rows finish at different lengths), a sharded pi_0
  that synthesizes references, and an evaluation the main process runs alone: it finishes (no
  hang) with the same rollouts, references and evaluation as the gathered copy;
- ``mode: sft`` with a process that has no prompt in the last synthesis chunk: it still takes
  part in every agreement;
- a push that skips a tensor on its way to a vLLM engine fails the run at its first push.

Tolerances: placement_runs.py."""

from __future__ import annotations

import json
import textwrap

import pytest
from safetensors.torch import load_file

from tests.engine.placement_runs import (
    assert_same_training,
    launch,
    vllm_pipeline,
)
from tests.engine.test_trainer import read_jsonl, write_pipeline

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def lockstep_summaries(run_dir) -> list[dict]:
    return [e for e in read_jsonl(run_dir / "log.jsonl") if e["event"] == "lockstep generation"]


UNEVEN_DATA = [
    {"id": "short", "question": "1 + 1?", "answer": "2"},
    {"id": "long", "question": "Add these: " + " + ".join(["1"] * 30) + ".", "answer": "30"},
    {"id": "mid", "question": "What is 7 + 8, and why?", "answer": "15"},
    {"id": "longer", "question": "Sum " + ", ".join(str(i) for i in range(25)), "answer": "300"},
]


def uneven_pipeline(tmp_path, tiny_policy, gather: bool):
    data = tmp_path / "uneven.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in UNEVEN_DATA))
    jsonl = f'{{dataset: jsonl, path: "{data}", answer_field: answer, id_field: id}}'
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        name: uneven
        mode: train
        seed: 3
        models:
          policy: {{backend: transformers, model: "{tiny_policy}", device: cpu,
                    max_batch_tokens: 96}}
        data:
          train: {jsonl}
          eval: {jsonl}
        rollouts: {{n: 4, temperature: 1.0, max_new_tokens: 16, stop: [q, x, z, j, k, Q, X]}}
        aggregator: {{name: synthesis, max_new_tokens: 12}}
        reward: {{name: programmatic, fallback: number}}
        eval: {{limit: 3}}
        trainer: {{steps: 2, prompts_per_step: 2, micro_batch_size: 4, learning_rate: 0.01,
                   beta: 0.01, eval_before: true, fsdp_gather_for_generation: {str(gather).lower()},
                   reference_fallback: {{name: majority, fallback: number}}}}
        """)
    )
    return path


def test_lockstep_survives_uneven_work_and_matches_the_gathered_copy(tmp_path, tiny_policy):
    runs = {}
    for name, gather in (("lockstep", False), ("gathered", True)):
        work = tmp_path / name
        work.mkdir()
        pipeline = uneven_pipeline(work, tiny_policy, gather)
        proc = launch("run", str(pipeline), "--run-dir", str(work / "run"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = work / "run"
    summaries = lockstep_summaries(runs["lockstep"])
    assert len(summaries) == 2 and not lockstep_summaries(runs["gathered"])
    assert max(s["idle_forwards"] for s in summaries) > 0  # one process waited on the other
    lengths = {
        r["tokens"]
        for rec in read_jsonl(runs["lockstep"] / "records.jsonl")
        for r in rec["rollouts"]
    }
    assert len(lengths) > 2  # rows really finished at different lengths
    key = lambda r: (r["step"], r["prompt_id"])  # noqa: E731
    records = {n: sorted(read_jsonl(d / "records.jsonl"), key=key) for n, d in runs.items()}
    assert records["lockstep"] == records["gathered"]  # rollouts and pi_0's references
    evals = {n: read_jsonl(d / "eval" / "step-000000.jsonl") for n, d in runs.items()}
    assert evals["lockstep"] == evals["gathered"]
    metrics = {n: read_jsonl(d / "metrics.jsonl") for n, d in runs.items()}
    assert [m["step"] for m in metrics["lockstep"]] == [0, 1, 2]
    for a, b in zip(metrics["lockstep"][1:], metrics["gathered"][1:], strict=True):
        assert set(a) == set(b) - {"time/training/push_weights"}  # no copy, no push
        for key_ in ("reward/mean", "loss", "kl", "grad_norm", "entropy"):
            if b.get(key_) is None:  # e.g. reward/mean of a step whose rewards were unscorable
                assert a.get(key_) is None, key_
            else:
                assert a.get(key_) == pytest.approx(b[key_], rel=1e-5, abs=1e-7), key_
    one = load_file(str(runs["lockstep"] / "final" / "model.safetensors"))
    two = load_file(str(runs["gathered"] / "final" / "model.safetensors"))
    assert_same_training(one, two, load_file(str(tiny_policy / "model.safetensors")))


def test_lockstep_sft_with_a_process_that_has_no_prompt(tmp_path, tiny_policy):
    """``mode: sft``: 5 prompts in chunks of 4 leave one process without a prompt in the last
    synthesis chunk; it must still take part in every agreement (pi_0 synthesizes before the
    policy is sharded, so the forwards are whole-weight: this checks the drain)."""
    data = tmp_path / "five.jsonl"
    rows = [
        {"id": f"q{i}", "question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(5)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs = {}
    for name, gather in (("lockstep", "false"), ("gathered", "true")):
        trainer = (
            "{steps: 2, prompts_per_step: 4, micro_batch_size: 2, learning_rate: 0.01, "
            f"fsdp_gather_for_generation: {gather}}}"
        )
        work = tmp_path / name
        work.mkdir()
        path = write_pipeline(work, tiny_policy, data, trainer)
        text = path.read_text().replace("mode: train", "mode: sft")
        text = text.replace("reward: {name: programmatic, fallback: number}\n", "").replace(
            "{name: majority, fallback: number}", "{name: synthesis, max_new_tokens: 12}"
        )
        path.write_text(text.replace("{dataset: jsonl,", "{dataset: jsonl, task: freeform,"))
        proc = launch("run", str(path), "--run-dir", str(work / "run"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = work / "run"
    assert len(lockstep_summaries(runs["lockstep"])) == 2
    key = lambda r: r["prompt_id"]  # noqa: E731
    records = {n: sorted(read_jsonl(d / "records.jsonl"), key=key) for n, d in runs.items()}
    assert len(records["lockstep"]) == 5 and records["lockstep"] == records["gathered"]
    metrics = {n: read_jsonl(d / "metrics.jsonl") for n, d in runs.items()}
    for a, b in zip(metrics["lockstep"], metrics["gathered"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), a["step"]
    one = load_file(str(runs["lockstep"] / "final" / "model.safetensors"))
    two = load_file(str(runs["gathered"] / "final" / "model.safetensors"))
    assert_same_training(one, two, load_file(str(tiny_policy / "model.safetensors")))


#: a transport that drops one tensor on its way to the engine: the engine keeps the old one
SKIP_A_TENSOR = textwrap.dedent("""\
    import sys
    from cat_framework import load_plugins
    from cat_framework.runner import run_pipeline
    from cat_framework.pipeline import load_pipeline
    from cat_plugins.backends.vllm_backend import VLLMBackend

    update = VLLMBackend.update_weights
    skip = "model.layers.1.mlp.down_proj.weight"
    VLLMBackend.update_weights = lambda self, tensors: update(
        self, ((n, t) for n, t in tensors if n != skip)
    )
    plugins = load_plugins(entry_points=False)
    pipeline = load_pipeline(sys.argv[1], plugins=plugins)
    run_pipeline(pipeline, plugins=plugins, run_dir=sys.argv[2])
""")


@pytest.mark.vllm
def test_a_push_that_skips_a_tensor_fails_the_run(tmp_path, vllm_policy, toy_data):
    pipeline = vllm_pipeline(tmp_path, vllm_policy, toy_data)
    script = tmp_path / "skip.py"
    script.write_text(SKIP_A_TENSOR)
    proc = launch(str(pipeline), str(tmp_path / "run"), script=script)
    assert proc.returncode != 0
    assert "weight parity check failed" in proc.stderr, proc.stderr[-3000:]
    assert "model.layers.1.mlp.down_proj.weight" in proc.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # step 1 failed at its push
