"""The TRL teacher reward without TRL (fast): regrouping TRL's batch, refusing split groups and
configs that would split them, the roles TRL leaves the teacher, and the run directory.

The real ``GRPOTrainer`` runs are in ``tests/test_trl_reward.py``."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from cat_framework.errors import CatError
from cat_framework.integrations.trl import SplitGroupError, TeacherReward, teacher_reward
from cat_framework.integrations.trl.groups import check_layout, to_groups
from cat_framework.integrations.trl.roles import LazyBackend, TrainedPolicy
from cat_framework.records import read_records
from cat_framework.report.load import load_run
from cat_framework.types import GenerationRequest
from tests.helpers.trl_pipeline import MAJORITY, write_pipeline


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def said(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


# -- regrouping --------------------------------------------------------------------------------


def test_whole_groups_keep_ids_gold_and_tokens():
    prompts = [chat("1+1?")] * 2 + [chat("2+2?")] * 2
    columns = {"prompt_id": ["a", "a", "b", "b"], "answer": ["2", "2", "4", "4"]}
    groups = to_groups(
        prompts, [said(t) for t in "2345"], [[1], [2, 3], [4], [5, 6, 7]], 2, columns,
        task="math", gold_column="answer", max_tokens=3,
    )  # fmt: skip
    assert [g.prompt.id for g in groups] == ["a", "b"]
    assert [g.prompt.gold_answer for g in groups] == ["2", "4"]
    assert [[c.text for c in g.rollouts] for g in groups] == [["2", "3"], ["4", "5"]]
    assert groups[1].rollouts[1].token_ids == (5, 6, 7)
    assert [c.finish_reason for c in groups[1].rollouts] == ["stop", "length"]  # hit max_tokens
    assert groups[0].prompt.meta == {"task": "math"}


def test_text_prompts_become_a_user_message_and_get_a_stable_id():
    groups = to_groups(["Q?", "Q?", "Q?"], ["a", "b", "c"], None, 3, {}, task="freeform")
    again = to_groups(["Q?", "Q?", "Q?"], ["x", "y", "z"], None, 3, {}, task="freeform")
    assert groups[0].prompt.messages == ({"role": "user", "content": "Q?"},)
    assert groups[0].prompt.id == again[0].prompt.id and groups[0].prompt.id.startswith("trl-")
    assert groups[0].prompt.meta["task"] == "freeform"


def test_a_prompt_twice_in_a_row_is_two_groups():
    groups = to_groups([chat("Q")] * 4, [said(str(i)) for i in range(4)], None, 2, {}, task="math")
    assert [len(g) for g in groups] == [2, 2]


def test_a_split_group_is_refused_with_the_prompt_counts_and_fix():
    # what process 1 of 2 sees with per_device_train_batch_size=3 and G=2: [b, c, c]
    prompts = [chat("What is b?"), chat("What is c?"), chat("What is c?")]
    with pytest.raises(SplitGroupError) as err:
        to_groups(prompts, [said("1")] * 3, None, 2, {}, task="math")
    text = str(err.value)
    assert "of which 1 (position 0) answer the prompt 'What is b?'" in text
    assert "not a multiple of num_generations=2" in text
    assert "multiple of num_generations" in text


@pytest.mark.parametrize(
    ("prompts", "completions", "columns", "match"),
    [
        ([chat("Q")] * 2, [said("a")], {}, "2 prompts but 1 completions"),
        ([[{"role": "user", "content": [{"type": "image"}]}]] * 2, [said("a")] * 2, {}, "text"),
        ([chat("Q")] * 2, [[{"role": "assistant"}]] * 2, {}, "ending in a text message"),
        ([chat("Q")] * 2, [said("a")] * 2, {"x": [1, 1]}, "gold_column='answer': the dataset"),
    ],
)
def test_bad_batches_get_one_clear_error(prompts, completions, columns, match):
    gold = "answer" if columns else None
    with pytest.raises(CatError, match=match):
        to_groups(prompts, completions, None, 2, columns, task="math", gold_column=gold)


# -- the config check before training ------------------------------------------------------------


def grpo_args(**kw: Any) -> SimpleNamespace:
    base = {
        "num_generations": 2,
        "per_device_train_batch_size": 2,
        "steps_per_generation": 1,
        "world_size": 1,
        "num_generations_eval": None,
        "eval_strategy": "no",
        "max_completion_length": 8,
    }
    return SimpleNamespace(**{**base, **kw})


def test_a_config_that_would_split_groups_between_processes_is_refused():
    check_layout(grpo_args(), 2)
    check_layout(grpo_args(per_device_train_batch_size=3, steps_per_generation=2), 2)
    with pytest.raises(SplitGroupError, match="each of the 2 processes gets 3 completions"):
        check_layout(grpo_args(per_device_train_batch_size=3, world_size=2), 2)
    with pytest.raises(CatError, match="num_generations_eval=4"):
        check_layout(grpo_args(num_generations_eval=4), 2)
    with pytest.raises(SplitGroupError, match="per_device_eval_batch_size=3"):
        check_layout(grpo_args(eval_strategy="steps", per_device_eval_batch_size=3), 2)


def test_the_factory_refuses_before_loading_anything(tmp_path, tiny_policy):
    pipeline = write_pipeline(tmp_path, tiny_policy, MAJORITY)
    with pytest.raises(SplitGroupError):
        teacher_reward(pipeline, args=grpo_args(per_device_train_batch_size=3, world_size=2))
    with pytest.raises(CatError, match="num_generations=3 but the GRPOConfig"):
        teacher_reward(pipeline, args=grpo_args(), num_generations=3)


# -- roles ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["anchor", "judge"])
def test_the_model_being_trained_cannot_be_a_teacher_role(tmp_path, tiny_policy, role):
    pipeline = write_pipeline(tmp_path, tiny_policy, MAJORITY, roles=f"  {role}: policy\n")
    with pytest.raises(CatError, match=rf"models\.{role}: 'policy' is the model being trained"):
        teacher_reward(pipeline, num_generations=2)


def test_the_policy_role_refuses_to_be_called():
    with pytest.raises(CatError, match="under TRL that model is TRL's"):
        TrainedPolicy().generate([GenerationRequest(text="x")])


def test_a_component_told_to_use_the_policy_is_refused_at_its_first_call(tmp_path, tiny_policy):
    teacher = "aggregator: {name: synthesis, role: policy}\nreward: programmatic\n"
    with teacher_reward(write_pipeline(tmp_path, tiny_policy, teacher), num_generations=2) as r:
        with pytest.raises(CatError, match="synthesis role: anchor"):
            r([chat("1+1?")] * 2, [said("2"), said("3")])
        assert not r.roles.anchor.loaded


def test_a_teacher_that_calls_no_model_loads_none(tmp_path, tiny_policy):
    with teacher_reward(write_pipeline(tmp_path, tiny_policy, MAJORITY), num_generations=2) as r:
        assert isinstance(r.roles.anchor, LazyBackend)
        r([chat("1+1?")] * 2, [said("2"), said("3")])
        assert not r.roles.anchor.loaded and r.roles.anchor is r.roles.judge


# -- one call, its logs and records ---------------------------------------------------------------


def call(reward: TeacherReward, step: int, logged: dict[str, float]) -> list[float | None]:
    return reward(
        [chat("1+1?")] * 2 + [chat("2+2?")] * 2,
        [said(t) for t in ("2", "2", "no idea", "none")],
        [[1], [2], [3, 4], [5]],
        prompt_id=["a", "a", "b", "b"],
        answer=["2", "2", "4", "4"],
        trainer_state=SimpleNamespace(global_step=step - 1),
        log_metric=logged.__setitem__,
        log_extra=lambda column, values: logged.__setitem__(column, values),
    )


def test_a_call_scores_logs_and_records(tmp_path, tiny_policy):
    pipeline = write_pipeline(tmp_path, tiny_policy, MAJORITY)
    logged: dict[str, Any] = {}
    with teacher_reward(pipeline, num_generations=2, run_dir=tmp_path / "run", gold_column="answer") as r:  # fmt: skip
        assert call(r, 1, logged) == [1.0, 1.0, None, None]  # group b: no answer to match
    assert logged["reference/no_answer"] == 0.5 and logged["reward/unscorable"] == 0.5
    # audit only: a reference without an answer is a wrong one
    assert logged["reference/accuracy"] == 0.5 and "reference/no_answer/count" not in logged
    assert logged["cat_teacher/reference"] == ["2", "2", "", ""]
    records = read_records(tmp_path / "run" / "records.jsonl")
    assert [(r.step, r.prompt_id, [o.reward for o in r.rollouts]) for r in records] == [
        (1, "a", [1.0, 1.0]),
        (1, "b", [None, None]),
    ]
    run = load_run(tmp_path / "run")
    assert run.problems == [] and run.mode == "train" and run.log.status == "completed"
    assert run.metrics[0]["reference/no_answer/count"] == 1.0


def test_an_evaluation_call_is_scored_but_not_recorded_as_a_step(tmp_path, tiny_policy):
    """TRL calls reward functions during evaluation too (its model in eval mode): the scores
    go to TRL's eval metrics, and no training step is written."""

    class Trainer:  # what the adapter reads of TRL's trainer: its model's mode
        model = SimpleNamespace(training=False)
        logged: dict[str, float] = {}

        def _log_metric(self, key: str, value: float) -> None:
            self.logged[key] = value

    pipeline = write_pipeline(tmp_path, tiny_policy, MAJORITY)
    trainer = Trainer()
    with teacher_reward(pipeline, num_generations=2, run_dir=tmp_path / "run") as r:
        scores = r(
            [chat("1+1?")] * 2, [said("2"), said("2")], [[1], [2]], prompt_id=["a", "a"],
            trainer_state=SimpleNamespace(global_step=0), log_metric=trainer._log_metric,
        )  # fmt: skip
    assert scores == [1.0, 1.0] and "reference/no_answer" in trainer.logged
    assert read_records(tmp_path / "run" / "records.jsonl") == []


def test_the_run_dir_is_new_or_resumed(tmp_path, tiny_policy):
    pipeline = write_pipeline(tmp_path, tiny_policy, MAJORITY)
    run_dir = tmp_path / "run"
    with teacher_reward(pipeline, num_generations=2, run_dir=run_dir) as r:
        for step in (1, 2, 3):
            call(r, step, {})
    with pytest.raises(CatError, match=r"is not empty .*resume=True"):
        teacher_reward(pipeline, num_generations=2, run_dir=run_dir)
    with pytest.raises(CatError, match="holds none"):
        teacher_reward(pipeline, num_generations=2, run_dir=tmp_path / "new", resume=True)
    # TRL resumed from its step-1 checkpoint: steps 2 and 3 are redone, and recorded once
    with teacher_reward(pipeline, num_generations=2, run_dir=run_dir, resume=True) as r:
        for step in (2, 3):
            call(r, step, {})
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert [r.step for r in read_records(run_dir / "records.jsonl")] == [1, 1, 2, 2, 3, 3]


def test_a_failure_is_recorded_in_the_run_dir(tmp_path, tiny_policy):
    pipeline = write_pipeline(tmp_path, tiny_policy, MAJORITY)
    with (
        pytest.raises(SplitGroupError),
        teacher_reward(pipeline, num_generations=2, run_dir=tmp_path / "run") as r,
    ):
        r([chat("Q")], [said("1")])
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "failed" and "SplitGroupError" in status["error"]
