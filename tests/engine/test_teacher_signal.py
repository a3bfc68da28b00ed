"""The teacher's signal through a real GRPO step (tiny random Llama): a reference without a final
answer gives its group no learning signal and is counted; diagnostics exist for a third-party
aggregator; ``reference_n`` builds the reference from more rollouts than GRPO trains on; an
explicit ``reference_fallback`` replaces an answerless reference."""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

from cat_framework import Aggregator, Reference, RolloutGroup, hookimpl, load_plugins
from cat_framework.engine.runner import run_pipeline
from cat_framework.pipeline import load_pipeline
from cat_framework.records import read_records
from tests.helpers.echo_backend import EchoBackend


class HalfAnswer(Aggregator):
    """A third-party aggregator: even prompts get a committed answer, odd ones a reference cut
    off before its final answer (what ``max_new_tokens`` does to a synthesis)."""

    name = "half_answer"

    def aggregate(self, groups: Sequence[RolloutGroup]) -> list[Reference]:
        out = []
        for g in groups:
            even = int(g.prompt.id[1:]) % 2 == 0
            text = "so the answer is \\boxed{7}" if even else "...first take 3"
            answer = "7" if even else None  # as extract_answer(text, fallback="phrase") says
            out.append(Reference(text, self.name, answer, {"read": len(g.rollouts)}))
        return out


class ThirdParty:
    @hookimpl
    def register_aggregators(self, register):
        register(HalfAnswer)

    @hookimpl
    def register_backends(self, register):
        register(EchoBackend)


def train(tmp: Path, model: Path, data: Path, extra: str = "", rollouts: str = "n: 4") -> Path:
    text = textwrap.dedent(f"""\
        name: signal
        mode: train
        seed: 5
        models:
          policy: {{backend: transformers, model: "{model}", device: cpu}}
        data:
          train: {{dataset: jsonl, path: "{data}", answer_field: answer, id_field: id}}
        rollouts: {{{rollouts}, temperature: 1.0, max_new_tokens: 6}}
        aggregator: half_answer
        reward: programmatic
        trainer: {{steps: 1, prompts_per_step: 4, learning_rate: 0.01, beta: 0.0{extra}}}
        """)
    path = tmp / "p.yaml"
    path.write_text(text)
    plugins = load_plugins(entry_points=False, extra=[("thirdparty", ThirdParty())])
    run_dir = tmp / "run"
    run_pipeline(load_pipeline(path, plugins=plugins), plugins=plugins, run_dir=str(run_dir))
    return run_dir


def metrics_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])


def test_answerless_reference_gives_its_group_no_signal_and_is_counted(
    tmp_path, tiny_policy, toy_data
):
    run_dir = train(tmp_path, tiny_policy, toy_data)
    records = read_records(run_dir / "records.jsonl")
    assert len(records) == 4
    for rec in records:
        rewards = [ro.reward for ro in rec.rollouts]
        advantages = [ro.advantage for ro in rec.rollouts]
        if rec.reference.answer is None:  # "...first take 3" never becomes the answer 3
            assert rewards == [None] * 4
            assert advantages == [0.0] * 4
            assert all(ro.details["reference_has_answer"] is False for ro in rec.rollouts)
        else:
            assert all(r in (0.0, 1.0) for r in rewards)
    m = metrics_of(run_dir)
    n_missing = sum(r.reference.answer is None for r in records)
    assert n_missing == 2
    # rates with counts, for an aggregator the framework has never heard of
    assert m["reference/no_answer"] == 0.5
    assert (m["reference/no_answer/count"], m["reference/no_answer/total"]) == (2, 4)
    assert m["reward/unscorable"] == 0.5
    assert (m["reward/unscorable/count"], m["reward/unscorable/total"]) == (8, 16)
    assert m["frac_reward_zero_std"] >= 0.5  # the answerless groups carry no signal
    assert "reference/disagree_majority/total" in m
    assert "reference/correct_when_all_wrong/total" in m  # toy data has gold: audited
    assert math.isfinite(m["loss"])
    page = (run_dir / "report.html").read_text()
    assert "Teacher diagnostics" in page and "reference/no_answer" in page


def test_reference_n_builds_the_reference_from_more_rollouts_than_trained(
    tmp_path, tiny_policy, toy_data
):
    run_dir = train(tmp_path, tiny_policy, toy_data, rollouts="n: 2, reference_n: 5")
    for rec in read_records(run_dir / "records.jsonl"):
        assert rec.reference.details["read"] == 5  # the aggregator saw every sample
        assert [ro.trained for ro in rec.rollouts] == [True, True, False, False, False]
        assert all(ro.reward is None and ro.advantage is None for ro in rec.rollouts[2:])
        assert all(ro.advantage is not None for ro in rec.rollouts[:2])
    m = metrics_of(run_dir)
    assert m["reward/unscorable/total"] == 8  # 4 prompts x the 2 trained rollouts


def test_reference_fallback_replaces_an_answerless_reference(tmp_path, tiny_policy, toy_data):
    extra = ", reference_fallback: {name: majority, fallback: number}"
    run_dir = train(tmp_path, tiny_policy, toy_data, extra=extra)
    records = read_records(run_dir / "records.jsonl")
    replaced = [r for r in records if r.reference.method == "majority"]
    assert len(replaced) == 2
    for rec in replaced:
        assert rec.reference.details["fallback_from"]["text"] == "...first take 3"
    kept = [r for r in records if r.reference.method == "half_answer"]
    assert [r.reference.answer for r in kept] == ["7", "7"]
