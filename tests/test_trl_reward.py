"""The teacher reward inside real TRL ``GRPOTrainer`` steps (the installed TRL, CPU, the tiny
random Llama): its rewards are our trainer's teacher's on the same rollouts, an answerless
reference gives ``None``, the anchor is question-blind and frozen, the diagnostics reach TRL's
logs, a split group is refused (also where TRL itself splits one: between two processes), and
the docs' script runs.

One module-scoped TRL run (two steps, two teacher rewards: synthesis by the frozen anchor, and
majority vote) feeds most tests; the fast checks without TRL are in ``test_trl_groups.py``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("trl", reason="TRL is an optional extra: pip install 'cat-framework[trl]'")

import torch
from datasets import Dataset
from safetensors.torch import load_file
from trl import GRPOConfig, GRPOTrainer

from cat_framework.engine.teacher import Teacher
from cat_framework.integrations.trl import SplitGroupError, teacher_reward
from cat_framework.pipeline import load_pipeline
from cat_framework.pipeline.build import BackendPool, build_component, build_roles
from cat_framework.records import read_records
from cat_framework.report.load import load_run
from cat_framework.types import Completion, Prompt, RolloutGroup
from tests.helpers.trl_pipeline import MAJORITY, SYNTHESIS, write_pipeline

REPO = Path(__file__).resolve().parents[1]
#: the subprocesses import this checkout (and what the environment already puts on the path)
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
}
TWO_CPUS = REPO / "pipelines" / "accelerate" / "cpu_2proc.yaml"
QUESTIONS = [f"What is {i} + {i}?" for i in range(4)]
G = 3


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def dataset() -> Dataset:
    rows = [
        {"prompt": [{"role": "user", "content": q}], "prompt_id": f"q{i}", "answer": str(2 * i)}
        for i, q in enumerate(QUESTIONS)
    ]
    return Dataset.from_list(rows)


def grpo_config(out: Path, steps: int = 2) -> GRPOConfig:
    """2 prompts x G=3 per step, generated once for 2 accumulation steps of 3 completions."""
    return GRPOConfig(
        output_dir=str(out), use_cpu=True, bf16=False, num_generations=G,
        per_device_train_batch_size=3, gradient_accumulation_steps=2,
        max_completion_length=24, max_steps=steps, learning_rate=1e-3, logging_steps=1,
        report_to="none", save_strategy="no", shuffle_dataset=False, seed=0,
        dataloader_num_workers=0, model_init_kwargs={"dtype": torch.float32},
    )  # fmt: skip


def spy(reward: Any, calls: list[dict[str, Any]]) -> Any:
    """``reward`` as TRL sees it (same name), keeping what TRL passed and what it got back."""

    def call(prompts: list, completions: list, completion_ids: list, **kwargs: Any) -> list:
        out = reward(prompts, completions, completion_ids, **kwargs)
        columns = {k: v for k, v in kwargs.items() if k in ("prompt_id", "answer")}
        calls.append(dict(prompts=prompts, completions=completions, ids=completion_ids,
                          columns=columns, rewards=out))  # fmt: skip
        return out

    call.__name__ = reward.__name__
    return call


@pytest.fixture(scope="module")
def trl_run(tmp_path_factory: pytest.TempPathFactory, tiny_policy: Path) -> SimpleNamespace:
    tmp = tmp_path_factory.mktemp("trl")
    for sub in ("s", "m"):
        (tmp / sub).mkdir()
    synthesis = write_pipeline(tmp / "s", tiny_policy, SYNTHESIS)
    majority = write_pipeline(tmp / "m", tiny_policy, MAJORITY)
    config = grpo_config(tmp / "out")
    calls: dict[str, list[dict[str, Any]]] = {"synthesis": [], "majority": []}
    anchor_requests: list[Any] = []
    with (
        teacher_reward(synthesis, args=config, run_dir=tmp / "run", gold_column="answer") as syn,
        teacher_reward(majority, args=config, name="maj") as maj,
    ):
        anchor = syn.roles.anchor
        generate = anchor.generate
        anchor.generate = lambda requests: anchor_requests.extend(requests) or generate(requests)
        trainer = GRPOTrainer(
            model=str(tiny_policy),
            reward_funcs=[spy(syn, calls["synthesis"]), spy(maj, calls["majority"])],
            args=config,
            train_dataset=dataset(),
        )
        trainer.train()
        anchor_model = anchor.backend.model
    return SimpleNamespace(
        trainer=trainer, calls=calls, anchor_requests=anchor_requests, anchor_model=anchor_model,
        pipelines={"synthesis": synthesis, "majority": majority}, run_dir=tmp / "run",
    )  # fmt: skip


def our_teacher(pipeline_path: Path) -> Teacher:
    """The teacher as ``cat-framework run`` builds it; pi_0 (the anchor) loaded afresh from the
    initial weights."""
    pipeline = load_pipeline(pipeline_path)
    roles = build_roles(pipeline, BackendPool())
    return Teacher(
        build_component(pipeline, "aggregator", roles=roles),  # type: ignore[arg-type]
        build_component(pipeline, "reward", roles=roles),  # type: ignore[arg-type]
    )


def groups_of(call: dict[str, Any]) -> list[RolloutGroup]:
    """What TRL passed, grouped by hand (G consecutive completions per prompt)."""
    out = []
    for start in range(0, len(call["prompts"]), G):
        prompt = Prompt(
            call["columns"]["prompt_id"][start], call["prompts"][start], meta={"task": "math"}
        )
        rollouts = [
            Completion(call["completions"][i][-1]["content"], call["ids"][i])
            for i in range(start, start + G)
        ]
        out.append(RolloutGroup(prompt, rollouts))
    return out


@pytest.mark.parametrize("kind", ["synthesis", "majority"])
def test_rewards_equal_our_trainers_teacher_on_the_same_rollouts(trl_run, kind):
    calls = trl_run.calls[kind]
    assert len(calls) == 2 and all(len(c["prompts"]) == 2 * G for c in calls)  # 2 steps
    teacher = our_teacher(trl_run.pipelines[kind])
    for call in calls:
        ours = teacher.teach(groups_of(call))
        assert call["rewards"] == [v for r in ours.rewards for v in r.values]
    if kind == "majority":  # a real signal: some completions match the vote, some not
        values = {v for c in calls for v in c["rewards"]}
        assert {0.0, 1.0} <= values


def test_a_reference_that_commits_to_nothing_gives_none(trl_run):
    teacher = our_teacher(trl_run.pipelines["synthesis"])
    answerless = 0
    for call in trl_run.calls["synthesis"]:
        references = teacher.references(groups_of(call))
        for i, ref in enumerate(references):
            if ref.answer is None:
                answerless += 1
                assert call["rewards"][i * G : (i + 1) * G] == [None] * G
    assert answerless  # the tiny model's references commit to no answer
    first = trl_run.trainer.state.log_history[0]
    assert first["reward/unscorable"] > 0 and first["reference/no_answer"] > 0


def test_the_anchor_is_question_blind_and_frozen(trl_run, tiny_policy):
    requests = trl_run.anchor_requests
    assert len(requests) == 4  # one synthesis per group: 2 steps x 2 prompts
    for request in requests:
        text = "\n".join(m["content"] for m in request.messages)
        assert "<response" in text and not any(q in text for q in QUESTIONS)
    trained = trl_run.trainer.model
    assert trl_run.anchor_model is not trained
    initial = load_file(str(tiny_policy / "model.safetensors"))
    anchor = trl_run.anchor_model.state_dict()
    assert all(torch.equal(anchor[k], v) for k, v in initial.items())
    moved = trained.state_dict()
    assert any(not torch.equal(moved[k].cpu(), v) for k, v in initial.items())  # TRL trained


def test_the_teacher_diagnostics_reach_trls_logs(trl_run):
    logs = [row for row in trl_run.trainer.state.log_history if "loss" in row]
    assert len(logs) == 2
    for row in logs:
        assert {"reference/no_answer", "reward/unscorable", "time/aggregate"} <= set(row)
        assert {"maj/reference/no_answer", "maj/reward/unscorable"} <= set(row)


def test_the_records_are_run_records_the_report_reads(trl_run):
    records = read_records(trl_run.run_dir / "records.jsonl")
    assert [(r.step, r.prompt_id) for r in records] == [(1, "q0"), (1, "q1"), (2, "q2"), (2, "q3")]
    returned = [v for c in trl_run.calls["synthesis"] for v in c["rewards"]]
    assert [o.reward for r in records for o in r.rollouts] == returned
    assert all(r.gold_answer is not None and r.reference.method == "synthesis" for r in records)
    # the frozen anchor wrote what a fresh copy of the initial weights writes, after TRL's update
    teacher = our_teacher(trl_run.pipelines["synthesis"])
    ours = [ref for c in trl_run.calls["synthesis"] for ref in teacher.references(groups_of(c))]
    assert [r.reference.text for r in records] == [ref.text for ref in ours]
    run = load_run(trl_run.run_dir)
    assert run.problems == [] and run.mode == "train" and run.log.status == "completed"
    assert [m["step"] for m in run.metrics] == [1, 2]


def test_a_split_group_is_refused_inside_trl(tmp_path, tiny_policy):
    """What process 1 of 2 would be given if each process's batch were not whole groups (here
    one process, so the batch is cut by hand): the reward refuses it and training stops."""
    config = grpo_config(tmp_path / "out", steps=1)
    reward = teacher_reward(write_pipeline(tmp_path, tiny_policy, MAJORITY), args=config)

    def cut(prompts: list, completions: list, completion_ids: list, **kwargs: Any) -> list:
        kwargs = {k: v[1:] if isinstance(v, list) else v for k, v in kwargs.items()}
        return reward(prompts[1:], completions[1:], completion_ids[1:], **kwargs)

    trainer = GRPOTrainer(
        model=str(tiny_policy), reward_funcs=cut, args=config, train_dataset=dataset()
    )
    with pytest.raises(
        SplitGroupError, match=r"of which 2 \(positions 0-1\) answer the prompt 'What is 0 \+ 0\?'"
    ):
        trainer.train()


def launch_two(layout: str, tmp: Path, tiny_policy: Path) -> subprocess.CompletedProcess:
    """``tests/helpers/trl_two_processes.py`` under ``accelerate launch``, 2 CPU processes."""
    pipeline = write_pipeline(tmp, tiny_policy, MAJORITY)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(TWO_CPUS)]
    cmd += [str(REPO / "tests" / "helpers" / "trl_two_processes.py"), layout]
    cmd += [str(pipeline), str(tiny_policy), str(tmp / "out")]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300, cwd=tmp)


def test_two_processes_that_split_a_group_are_refused(tmp_path, tiny_policy):
    """3 completions per process, G=2: TRL itself accepts it and gives each process half of
    the middle prompt's group; the reward refuses on both."""
    res = launch_two("split", tmp_path, tiny_policy)
    assert res.returncode != 0
    for rank, where in (("rank0", "position 2"), ("rank1", "position 0")):
        assert f"[{rank}]: cat_framework.integrations.trl.groups.SplitGroupError" in res.stderr
        assert f"of which 1 ({where}) answer the prompt 'What is 1 + 1?'" in res.stderr


def test_two_processes_with_whole_groups_record_both(tmp_path, tiny_policy):
    res = launch_two("whole", tmp_path, tiny_policy)
    assert res.returncode == 0, res.stderr[-3000:]
    records = read_records(tmp_path / "out" / "teacher" / "records.jsonl")
    # one group per process per step, gathered and written once by the main process
    assert [(r.step, r.prompt_id) for r in records] == [(1, "q0"), (1, "q1"), (2, "q2"), (2, "q3")]
    assert [m["step"] for m in load_run(tmp_path / "out" / "teacher").metrics] == [1, 2]


def test_the_docs_script_runs(tmp_path, tiny_policy):
    script = REPO / "docs" / "examples" / "trl_teacher.py"
    assert f'--8<-- "{script.relative_to(REPO)}"' in (REPO / "docs" / "trl.md").read_text()
    args = ["--model", str(tiny_policy), "--steps", "1", "--max-new-tokens", "8"]
    args += ["--set", "aggregator.max_new_tokens=8", "--run-dir", str(tmp_path / "teacher")]
    args += ["--output-dir", str(tmp_path / "trl")]
    res = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=ENV,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    records = read_records(tmp_path / "teacher" / "records.jsonl")
    assert len(records) == 2 and all(len(r.rollouts) == 4 for r in records)
