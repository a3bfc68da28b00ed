"""Test-time evaluation end to end with a scripted backend (no model): records, metrics, resume."""

from __future__ import annotations

import json
import textwrap

import pytest

from cat_framework import hookimpl, load_plugins
from cat_framework.engine.evaluate import labels_for, summarize
from cat_framework.pipeline import load_pipeline
from cat_framework.records import RunRecord
from cat_framework.runner import run_pipeline
from tests.helpers.echo_backend import EchoBackend


class EchoPlugin:
    @hookimpl
    def register_backends(self, register):
        register(EchoBackend)


@pytest.fixture
def plugins():
    return load_plugins(entry_points=False, extra=[("echo", EchoPlugin())])


def write_data(tmp_path):
    rows = [
        {"id": "a", "question": "What is 2+2?", "answer": "4"},
        {"id": "b", "question": "What is 2+3?", "answer": "5"},
        {"id": "c", "question": "What is 10/4?", "answer": "\\frac{5}{2}"},
    ]
    path = tmp_path / "toy.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def pipeline_text(data, replies):
    return textwrap.dedent(f"""\
        name: toy-eval
        mode: evaluate
        models:
          policy: {{backend: echo, replies: {json.dumps(replies)}}}
        data:
          eval: {{dataset: jsonl, path: "{data}", answer_field: answer, id_field: id}}
        rollouts: {{n: 3, max_new_tokens: 8}}
        eval:
          aggregators: [single, majority, minppl, synthesis]
          batch_size: 2
          bootstrap: 200
    """)


def test_evaluate_writes_records_metrics_and_diagnostics(tmp_path, plugins):
    data = write_data(tmp_path)
    # rollouts: "4", "4", "2.5"; synthesis (the anchor = same echo backend) answers "4"
    path = tmp_path / "p.yaml"
    path.write_text(pipeline_text(data, ["\\boxed{4}", "\\boxed{4}", "so \\boxed{2.5}"]))
    pipe = load_pipeline(path, plugins=plugins)
    run_dir = tmp_path / "run"
    run_pipeline(pipe, plugins=plugins, run_dir=str(run_dir))
    records = [json.loads(x) for x in (run_dir / "records.jsonl").read_text().splitlines()]
    assert [r["prompt_id"] for r in records] == ["a", "b", "c"]
    assert len(records[0]["rollouts"]) == 3
    assert records[0]["references"]["majority"]["answer"] == "4"
    assert records[0]["references"]["majority"]["score"] == 1.0
    assert records[2]["references"]["majority"]["score"] == 0.0
    assert any(ro["correct"] for ro in records[2]["rollouts"])  # 2.5 == 5/2
    for rec in records:  # one typed schema, read back losslessly
        assert RunRecord.from_dict(rec).to_dict() == rec and rec["mode"] == "evaluate"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["aggregators"]["majority"]["score"] == pytest.approx(1 / 3)
    assert metrics["rollouts"]["pass_at_g"] == pytest.approx(2 / 3)
    assert metrics["rollouts"]["accuracy"] == pytest.approx((2 / 3 + 0 + 1 / 3) / 3)
    lo, hi = (
        metrics["aggregators"]["majority"]["ci_low"],
        metrics["aggregators"]["majority"]["ci_high"],
    )
    assert 0.0 <= lo <= 1 / 3 <= hi <= 1.0
    diag = metrics["diagnostics"]["synthesis"]
    assert diag["reference/disagree_majority/count"] == 0
    assert diag["reference/disagree_majority/total"] == 3
    assert diag["reference/no_answer"] == 0.0
    assert (run_dir / "config.yaml").exists() and (run_dir / "log.jsonl").exists()


def test_evaluate_batches_policy_calls(tmp_path, plugins):
    data = write_data(tmp_path)
    path = tmp_path / "p.yaml"
    path.write_text(pipeline_text(data, ["\\boxed{4}"]))
    pipe = load_pipeline(path, plugins=plugins)
    from cat_framework.engine import evaluate as ev

    calls = []
    original = EchoBackend.generate

    def spy(self, requests):
        calls.append(len(requests))
        return original(self, requests)

    EchoBackend.generate = spy
    try:
        run_pipeline(pipe, plugins=plugins, run_dir=str(tmp_path / "run"))
    finally:
        EchoBackend.generate = original
    # batch_size 2 over 3 prompts: two rollout calls and two synthesis calls, never one per prompt
    assert calls == [2, 2, 1, 1]
    assert ev.labels_for(["a", "b", "a"]) == ["a[0]", "b", "a[2]"]


def test_resume_skips_finished_prompts(tmp_path, plugins):
    data = write_data(tmp_path)
    path = tmp_path / "p.yaml"
    path.write_text(pipeline_text(data, ["\\boxed{5}"]))
    pipe = load_pipeline(path, plugins=plugins)
    run_dir = tmp_path / "run"
    run_pipeline(pipe, plugins=plugins, run_dir=str(run_dir))
    records = run_dir / "records.jsonl"
    first = records.read_text().splitlines()[0]
    records.write_text(first + '\n{"truncated')  # what a kill -9 mid-append leaves
    run_pipeline(pipe, plugins=plugins, resume=str(run_dir))
    ids = [json.loads(x)["prompt_id"] for x in records.read_text().splitlines()]
    assert ids == ["a", "b", "c"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["prompts"] == 3
    assert metrics["aggregators"]["single"]["score"] == pytest.approx(1 / 3)  # only "b" is 5


def test_summarize_freeform_clips_mean():
    recs = [
        {
            "schema": 1,
            "mode": "evaluate",
            "step": 0,
            "prompt_id": str(s),
            "rollouts": [],
            "references": {"x": {"text": "", "method": "x", "score": s}},
        }
        for s in (1.5, 1.2)
    ]
    out = summarize(recs, ["x"], "freeform", 0, 0.95)
    assert out["aggregators"]["x"]["score"] == 1.0
    assert labels_for(["x"]) == ["x"]


def test_reference_n_feeds_every_aggregator_more_rollouts_than_g(tmp_path, plugins):
    data = write_data(tmp_path)
    path = tmp_path / "p.yaml"
    replies = ["\\boxed{4}", "\\boxed{5}", "\\boxed{4}", "\\boxed{4}"]
    text = pipeline_text(data, replies).replace("{n: 3,", "{n: 2, reference_n: 4,")
    path.write_text(text)
    run_dir = tmp_path / "run"
    run_pipeline(load_pipeline(path, plugins=plugins), plugins=plugins, run_dir=str(run_dir))
    records = [json.loads(x) for x in (run_dir / "records.jsonl").read_text().splitlines()]
    for rec in records:
        assert [ro["trained"] for ro in rec["rollouts"]] == [True, True, False, False]
        votes = rec["references"]["majority"]["details"]["votes"]
        assert votes[0]["count"] == 3  # all four samples voted, not only the first two
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # rollout accuracy is the policy's over its G = n samples ("4", "5"): a and b half right;
    # over all four samples it would be (3/4 + 1/4 + 0) / 3
    assert metrics["rollouts"]["accuracy"] == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)


def test_initial_policy_judge_is_the_policy_at_test_time(tmp_path, plugins):
    """``initial-policy`` means pi_0 in every mode: at test time that is the policy, even when
    the anchor is another model (it used to bind to the anchor)."""
    from cat_framework.pipeline.build import BackendPool, build_roles

    data = write_data(tmp_path)
    path = tmp_path / "p.yaml"
    text = pipeline_text(data, ["\\boxed{4}"]).replace(
        "models:\n",
        "models:\n  anchor: {backend: echo, replies: [other]}\n  judge: initial-policy\n",
    )
    path.write_text(text)
    pool = BackendPool()
    roles = build_roles(load_pipeline(path, plugins=plugins), pool)
    assert roles.judge is roles.policy and roles.anchor is not roles.policy
    pool.close()


def test_minppl_ranks_by_the_policy_by_default(tmp_path, plugins):
    from cat_framework.pipeline.build import BackendPool, build_roles
    from cat_plugins.aggregators.minppl import MinPPLAggregator

    data = write_data(tmp_path)
    path = tmp_path / "p.yaml"
    text = pipeline_text(data, ["\\boxed{4}"]).replace(
        "models:\n", "models:\n  anchor: {backend: echo, replies: [other]}\n"
    )
    path.write_text(text)
    pool = BackendPool()
    roles = build_roles(load_pipeline(path, plugins=plugins), pool)
    from cat_framework import Completion, Prompt, RolloutGroup

    group = RolloutGroup(
        Prompt("q", [{"role": "user", "content": "?"}]), [Completion("a b"), Completion("a")]
    )
    MinPPLAggregator({}, roles=roles).aggregate([group])
    assert roles.policy.score_calls and not roles.anchor.score_calls  # the paper's minPPL
    MinPPLAggregator({"scorer": "anchor"}, roles=roles).aggregate([group])
    assert roles.anchor.score_calls
    pool.close()


def test_a_plugin_dataset_with_duplicate_ids_is_refused():
    from cat_framework import Dataset, Prompt
    from cat_framework.engine.split_prompts import load_prompts
    from cat_framework.errors import CatError

    class Twice(Dataset):
        name = "twice"

        def load(self):
            q = [{"role": "user", "content": "?"}]
            return [Prompt("x", q), Prompt("y", q), Prompt("x", q)]

    with pytest.raises(CatError, match="two prompts with id 'x'"):
        load_prompts(Twice(), None)


def test_initial_policy_judge_is_pi0_in_training(tmp_path, plugins):
    """The same word in training: ``initial-policy`` is pi_0 (the frozen anchor weights), while
    ``policy`` is the sampler of the current weights."""
    from types import SimpleNamespace

    from cat_framework.engine.placement import training_roles as build_training_roles
    from cat_framework.pipeline.build import BackendPool

    data = write_data(tmp_path)
    path = tmp_path / "p.yaml"
    text = pipeline_text(data, ["\\boxed{4}"]).replace(
        "models:\n", "models:\n  anchor: policy\n  judge: initial-policy\n"
    )
    path.write_text(text)
    trained = SimpleNamespace(sampler=object(), anchor=object())
    roles = build_training_roles(load_pipeline(path, plugins=plugins), BackendPool(), trained)
    assert roles.judge is trained.anchor and roles.anchor is trained.sampler


def test_resume_keeps_fields_it_does_not_know(tmp_path, plugins):
    """A field this release does not know (a plugin's, a later release's of the same schema)
    survives the resume's rewrite of ``records.jsonl``."""
    data = write_data(tmp_path)
    path = tmp_path / "p.yaml"
    path.write_text(pipeline_text(data, ["\\boxed{5}"]))
    pipe = load_pipeline(path, plugins=plugins)
    run_dir = tmp_path / "run"
    run_pipeline(pipe, plugins=plugins, run_dir=str(run_dir))
    records = run_dir / "records.jsonl"
    first = {**json.loads(records.read_text().splitlines()[0]), "annotator": {"grade": "A"}}
    records.write_text(json.dumps(first) + "\n")
    run_pipeline(pipe, plugins=plugins, resume=str(run_dir))
    rows = [json.loads(x) for x in records.read_text().splitlines()]
    assert [r["prompt_id"] for r in rows] == ["a", "b", "c"]
    assert rows[0] == first


def test_a_majority_estimator_never_disagrees_with_the_majority_it_is(tmp_path, plugins):
    """``reference/disagree_majority`` votes as the run's majority aggregator reads answers: with
    ``fallback: number`` over rollouts that show their work and box nothing ("7 - 3 = 4"), the
    vote is 4, not the one boxed 5 (the diagnostics used to vote at ``phrase`` whatever the run
    configured, and the majority estimator disagreed with "the majority" on every prompt)."""
    data = write_data(tmp_path)
    path = tmp_path / "p.yaml"
    text = pipeline_text(data, ["7 - 3 = 4", "7 - 3 = 4", "\\boxed{5}"]).replace(
        "[single, majority, minppl, synthesis]",
        "[{name: majority, fallback: number}, {name: majority, mode: string, fallback: number}]",
    )
    path.write_text(text)
    run_dir = tmp_path / "run"
    run_pipeline(load_pipeline(path, plugins=plugins), plugins=plugins, run_dir=str(run_dir))
    records = [json.loads(x) for x in (run_dir / "records.jsonl").read_text().splitlines()]
    for rec in records:
        assert rec["references"]["majority[0]"]["answer"] == "4"
        assert rec["diagnostics"]["majority_answer"] == "4"
        assert rec["diagnostics"]["majority_reading"] == {
            "fallback": "number",
            "mode": "math_verify",
        }
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for label in ("majority[0]", "majority[1]"):
        diag = metrics["diagnostics"][label]
        assert diag["reference/disagree_majority/count"] == 0
        assert diag["reference/disagree_majority/total"] == 3


def test_the_diagnostics_majority_is_the_one_the_run_configures(tmp_path, plugins):
    from cat_framework.engine.diagnostics import MajorityReading, majority_reading

    data = write_data(tmp_path)
    path = tmp_path / "p.yaml"
    base = pipeline_text(data, ["\\boxed{4}"])
    cases = {  # eval.aggregators -> the vote
        "[single, majority]": MajorityReading("phrase"),
        "[{name: majority, fallback: none, mode: string}]": MajorityReading("none", "string"),
        "[single, synthesis]": MajorityReading("phrase"),  # nothing configured: the default
    }
    for aggregators, expected in cases.items():
        path.write_text(base.replace("[single, majority, minppl, synthesis]", aggregators))
        pipe = load_pipeline(path, plugins=plugins)
        assert majority_reading(pipe, evaluation=True) == expected
    # a training run: its steps vote as its teacher's majority (the reference fallback), its
    # evaluations as the eval list's majority
    path.write_text(
        base.replace("mode: evaluate", "mode: train")
        .replace("data:\n", f'data:\n  train: {{dataset: jsonl, path: "{data}"}}\n')
        .replace("[single, majority, minppl, synthesis]", "[{name: majority, fallback: none}]")
        + "aggregator: synthesis\nreward: programmatic\n"
        + "trainer: {reference_fallback: {name: majority, fallback: number}}\n"
    )
    pipe = load_pipeline(path, plugins=plugins)
    assert majority_reading(pipe, evaluation=False) == MajorityReading("number")
    assert majority_reading(pipe, evaluation=True) == MajorityReading("none")
    # no majority anywhere: rollouts as the reward reads them
    text = path.read_text().replace("[{name: majority, fallback: none}]", "[single]")
    text = text.replace("trainer: {reference_fallback: {name: majority, fallback: number}}\n", "")
    path.write_text(
        text.replace("reward: programmatic", "reward: {name: programmatic, fallback: number}")
    )
    pipe = load_pipeline(path, plugins=plugins)
    assert majority_reading(pipe, evaluation=False) == MajorityReading("number")
