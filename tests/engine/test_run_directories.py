"""Run directories a user can trust (issue 9): resume checks, secrets, failures recorded, and
evaluation that resumes exactly and equals the trainer's step-0 evaluation."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from cat_framework import Aggregator, Reference, RolloutGroup, hookimpl, load_plugins
from cat_framework.errors import CatError
from cat_framework.pipeline import load_pipeline
from cat_framework.runner import run_pipeline
from tests.helpers.echo_backend import EchoBackend


class Boom(Aggregator):
    name = "boom"

    def aggregate(self, groups: Sequence[RolloutGroup]) -> list[Reference]:
        raise ValueError("the vote exploded")


class TestPlugin:
    @hookimpl
    def register_backends(self, register):
        register(EchoBackend)

    @hookimpl
    def register_aggregators(self, register):
        register(Boom)


@pytest.fixture
def plugins():
    return load_plugins(entry_points=False, extra=[("testplugin", TestPlugin())])


def evaluate_yaml(data: Path, extra: str = "", aggregators: str = "[single, majority]") -> str:
    return (
        textwrap.dedent(f"""\
        name: rundirs
        mode: evaluate
        seed: 1
        models:
          policy: {{backend: echo, replies: ["\\\\boxed{{4}}", "\\\\boxed{{5}}"]}}
        data:
          eval: {{dataset: jsonl, path: "{data}", answer_field: answer, id_field: id}}
        rollouts: {{n: 2, max_new_tokens: 8}}
        eval: {{aggregators: {aggregators}, batch_size: 2, bootstrap: 10}}
        """)
        + extra
    )


def start(tmp: Path, text: str, plugins, overrides=(), **kw):
    path = tmp / "p.yaml"
    path.write_text(text)
    pipe = load_pipeline(path, overrides, plugins=plugins)
    return run_pipeline(pipe, plugins=plugins, **kw)


def test_resume_refuses_a_directory_that_is_not_a_run(tmp_path, plugins, toy_data):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(CatError, match="not a run directory"):
        start(tmp_path, evaluate_yaml(toy_data), plugins, resume=str(tmp_path / "photos"))
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == ["cat.jpg"]


def test_fresh_run_refuses_a_non_empty_folder_that_is_not_a_run(tmp_path, plugins, toy_data):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "final").mkdir()  # a name a run would write: still not ours to delete
    with pytest.raises(CatError, match="holds no run"):
        start(tmp_path, evaluate_yaml(toy_data), plugins, overwrite=True, run_dir=str(target))
    assert (target / "final").is_dir() and not (target / "config.yaml").exists()


def test_resume_refuses_a_changed_pipeline_and_accepts_safe_changes(tmp_path, plugins, toy_data):
    run_dir = tmp_path / "run"
    text = evaluate_yaml(toy_data)
    start(tmp_path, text, plugins, run_dir=str(run_dir))
    before = (run_dir / "config.yaml").read_text()
    with pytest.raises(CatError) as err:
        start(
            tmp_path, text, plugins,
            overrides=("seed=99", "rollouts.temperature=0.5"), resume=str(run_dir),
        )  # fmt: skip
    message = str(err.value)
    assert "seed: 1 -> 99" in message and "rollouts.temperature: 1.0 -> 0.5" in message
    assert (run_dir / "config.yaml").read_text() == before  # nothing rewritten
    # more prompts (seeds depend on prompt ids only) and more bootstrap resamples are safe
    start(tmp_path, text, plugins, overrides=("eval.bootstrap=20",), resume=str(run_dir))
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["eval"]["bootstrap"] == 20
    log = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    changed = [e for e in log if e["event"] == "resume with changed settings"]
    assert changed and changed[-1]["changes"] == {"eval.bootstrap": [10, 20]}


def test_a_run_written_before_a_key_existed_resumes_at_its_default(tmp_path, plugins, toy_data):
    """An upgrade adds keys (``trainer.async_rollouts``, ``threads``): an older run's config.yaml
    lacks them, which is their default, not a change; a non-default value still is one."""
    run_dir = tmp_path / "run"
    text = evaluate_yaml(toy_data)
    start(tmp_path, text, plugins, run_dir=str(run_dir))
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    del config["rollouts"]["top_k"], config["trainer"]["async_rollouts"]
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(CatError, match=r"rollouts\.top_k: None -> 5"):
        start(tmp_path, text, plugins, overrides=("rollouts.top_k=5",), resume=str(run_dir))
    start(tmp_path, text, plugins, resume=str(run_dir))  # the defaults: accepted


def test_secrets_never_reach_run_files(tmp_path, plugins, toy_data):
    secret = "sk-THIS-IS-SECRET-42"
    judge = textwrap.dedent(f"""\
        models:
          policy: {{backend: echo, replies: ["\\\\boxed{{4}}"]}}
          judge: {{backend: openai, model: m, base_url: "http://127.0.0.1:9/v1", api_key: {secret}}}
        """)
    text = evaluate_yaml(toy_data).replace(
        'models:\n  policy: {backend: echo, replies: ["\\\\boxed{4}", "\\\\boxed{5}"]}\n', judge
    )
    assert secret in text
    run_dir = tmp_path / "run"
    start(tmp_path, text, plugins, run_dir=str(run_dir))
    written = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.name == "report.html" for p in written)
    assert any("tfevents" in p.name for p in written)  # the TensorBoard observer ran
    for p in written:
        assert secret.encode() not in p.read_bytes(), p
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["models"]["judge"]["api_key"]


def test_a_failed_run_records_why(tmp_path, plugins, toy_data):
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError, match="exploded"):
        start(
            tmp_path, evaluate_yaml(toy_data, aggregators="[boom]"), plugins, run_dir=str(run_dir)
        )
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed"
    assert status["error"] == "ValueError: the vote exploded"
    end = json.loads((run_dir / "log.jsonl").read_text().splitlines()[-1])
    assert end["event"] == "run end" and end["error"] == "ValueError: the vote exploded"
    assert "the vote exploded" in (run_dir / "report.html").read_text()


def tiny_eval_yaml(model: Path, data: Path, mode: str = "evaluate", trainer: str = "") -> str:
    train = f'  train: {{dataset: jsonl, path: "{data}", answer_field: answer, id_field: id}}\n'
    return textwrap.dedent(f"""\
        name: tiny-eval
        mode: {mode}
        seed: 11
        models:
          policy: {{backend: transformers, model: "{model}", device: cpu}}
        data:
          eval: {{dataset: jsonl, path: "{data}", answer_field: answer, id_field: id}}
        {train if mode == "train" else ""}
        rollouts: {{n: 3, temperature: 1.0, max_new_tokens: 6}}
        aggregator: {{name: majority, fallback: number}}
        reward: {{name: programmatic, fallback: number}}
        eval:
          aggregators: [single, {{name: synthesis, max_new_tokens: 6}}]
          batch_size: 2
          bootstrap: 10
        {trainer}
        """)


def sampled(path: Path) -> dict[str, list[str]]:
    """Per prompt: the rollout texts and every reference text (what sampling decided)."""
    out = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        refs = [rec["references"][k]["text"] for k in sorted(rec["references"])]
        out[rec["prompt_id"]] = [ro["text"] for ro in rec["rollouts"]] + refs
    return out


def test_evaluate_resume_equals_an_uninterrupted_run(tmp_path, tiny_policy, toy_data):
    plugins = load_plugins(entry_points=False)
    text = tiny_eval_yaml(tiny_policy, toy_data)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    start(tmp_path, text, plugins, run_dir=str(whole))
    start(tmp_path, text, plugins, run_dir=str(cut))
    records = cut / "records.jsonl"
    lines = records.read_text().splitlines()
    assert len(lines) == 6
    # what kill -9 after the first batch leaves: two whole records and a line cut mid-write
    records.write_text("\n".join(lines[:2]) + "\n" + lines[2][:40])
    start(tmp_path, text, plugins, resume=str(cut))
    assert sampled(records) == sampled(whole / "records.jsonl")
    assert len(set(map(tuple, sampled(records).values()))) > 1  # real, varied samples


def test_step_zero_evaluation_reproduces_mode_evaluate(tmp_path, tiny_policy, toy_data):
    plugins = load_plugins(entry_points=False)
    start(tmp_path, tiny_eval_yaml(tiny_policy, toy_data), plugins, run_dir=str(tmp_path / "ev"))
    trainer = "trainer: {steps: 1, prompts_per_step: 2, learning_rate: 0.01, eval_before: true}"
    text = tiny_eval_yaml(tiny_policy, toy_data, mode="train", trainer=trainer)
    start(tmp_path, text, plugins, run_dir=str(tmp_path / "tr"))
    step0 = sampled(tmp_path / "tr" / "eval" / "step-000000.jsonl")
    assert step0 == sampled(tmp_path / "ev" / "records.jsonl")
    ev = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    tr = json.loads((tmp_path / "tr" / "eval" / "step-000000.json").read_text())
    assert tr["aggregators"] == ev["aggregators"]
