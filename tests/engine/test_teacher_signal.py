"""The teacher's signal through a real GRPO step (tiny random Llama): a reference without a final
answer gives its group no learning signal and is counted; diagnostics exist for a third-party
aggregator; ``reference_n`` builds the reference from more rollouts than GRPO trains on; an
explicit ``reference_fallback`` replaces an answerless reference."""

from __future__ import annotations

import json
import math
import textwrap
import zlib
from collections.abc import Sequence
from pathlib import Path

from cat_framework import (
    Aggregator,
    Completion,
    Reference,
    RolloutGroup,
    hookimpl,
    load_plugins,
)
from cat_framework.pipeline import load_pipeline
from cat_framework.records import read_records
from cat_framework.runner import run_pipeline
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
    m = metrics_of(run_dir)  # the aggregator's own failures stay visible behind the fallback
    assert m["reference/no_answer"] == 0.5 and m["reference/fallback"] == 0.5


class ScriptedJudge(EchoBackend):
    """Anchor and judge in one: proposes a 5-criterion rubric; as a judge, answers yes or no by
    a hash of the response, and garbage for criterion C3 on half of the responses."""

    name = "scripted_judge"

    def generate(self, requests):
        out = []
        for req in requests:
            prompt = req.messages[-1]["content"]
            if "satisfy the criterion" in prompt:
                response = prompt.split("<response>")[1].split("</response>")[0]
                criterion = prompt.split("<criterion>")[1].split("</criterion>")[0].strip()
                h = zlib.crc32(response.encode())
                if criterion == "C3" and h % 2 == 0:
                    text = "hmm, hard to say"
                else:
                    text = "<answer>yes</answer>" if (h >> 1) % 2 else "<answer>no</answer>"
            else:  # the synthesis, then the rubric proposal from it
                crits = "".join(f"<criterion>C{i}</criterion>" for i in range(1, 6))
                text = f"<rubric>{crits}</rubric>"
            out.append([Completion(text=text, token_ids=[1]) for _ in range(req.n)])
        return out


class JudgePlugin:
    @hookimpl
    def register_backends(self, register):
        register(ScriptedJudge)


def test_garbage_verdicts_exclude_rollouts_instead_of_inflating_them(
    tmp_path, tiny_policy, toy_data
):
    text = textwrap.dedent(f"""\
        name: judged
        mode: train
        seed: 2
        models:
          policy: {{backend: transformers, model: "{tiny_policy}", device: cpu}}
          anchor: {{backend: scripted_judge}}
        data:
          train: {{dataset: jsonl, task: freeform, path: "{toy_data}", id_field: id}}
        rollouts: {{n: 4, temperature: 1.0, max_new_tokens: 6}}
        aggregator: synthesis
        reward: {{name: rubric, max_judge_retries: 0}}
        trainer: {{steps: 1, prompts_per_step: 6, learning_rate: 0.01, beta: 0.0}}
        """)
    path = tmp_path / "p.yaml"
    path.write_text(text)
    plugins = load_plugins(entry_points=False, extra=[("judge", JudgePlugin())])
    run_dir = tmp_path / "run"
    run_pipeline(load_pipeline(path, plugins=plugins), plugins=plugins, run_dir=str(run_dir))
    rollouts = [ro for rec in read_records(run_dir / "records.jsonl") for ro in rec.rollouts]
    garbage = [ro for ro in rollouts if ro.details["n_unparsed"]]
    clean = [ro for ro in rollouts if not ro.details["n_unparsed"]]
    assert garbage and clean
    for ro in garbage:  # 4 parsed verdicts + 1 garbage: no reward (not 4/4 or 0/4 re-normalised)
        assert ro.reward is None and ro.advantage == 0.0
    for ro in clean:
        met = sum(v["met"] for v in ro.details["verdicts"])
        assert ro.reward == met / 5
    m = metrics_of(run_dir)
    assert m["judge/unparsed/count"] == len(garbage)
    assert m["judge/unparsed/total"] == 5 * len(rollouts)
    assert m["reward/unscorable"] == len(garbage) / len(rollouts)
