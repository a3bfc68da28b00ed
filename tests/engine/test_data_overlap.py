"""Duplicates within a split and train/eval overlap, for any dataset (issue 21): the pure
report, what a run records in data.json, and the refusal of ``data.disjoint: true``."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from cat_framework import hookimpl, load_plugins
from cat_framework.engine.data_check import check_run_data
from cat_framework.engine.data_overlap import (
    data_report,
    find_duplicates,
    find_overlap,
    question_key,
)
from cat_framework.errors import CatError
from cat_framework.pipeline import load_pipeline
from cat_framework.runner import run_pipeline
from cat_framework.types import Prompt
from tests.helpers.echo_backend import EchoBackend


def ask(pid: str, text: str, system: str | None = None) -> Prompt:
    messages = [{"role": "system", "content": system}] if system else []
    return Prompt(pid, [*messages, {"role": "user", "content": text}])


def write_jsonl(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"id": i, "question": q}) + "\n" for i, q in rows))
    return path


# --- the same question -------------------------------------------------------------------------


def test_case_spacing_and_unicode_width_do_not_make_another_question():
    a = ask("a", "What is  2 + 2?\n")
    b = ask("b", "  what IS 2 +\t2?")
    c = ask("c", "What is \uff12 \uff0b \uff12?")  # fullwidth digits and plus: NFKC -> ASCII
    assert question_key(a) == question_key(b) == question_key(c)


def test_another_system_message_or_wording_is_another_question():
    base = ask("a", "What is 2 + 2?")
    assert question_key(base) != question_key(ask("b", "What is 2 + 2?", system="Be brief."))
    assert question_key(base) != question_key(ask("c", "What is 2 + 3?"))


def test_gold_answers_ids_and_meta_are_ignored():
    a = Prompt("a", [{"role": "user", "content": "Q"}], gold_answer="1", meta={"x": 1})
    b = Prompt("b", [{"role": "user", "content": "q"}], gold_answer="2")
    assert find_duplicates([a, b]).duplicates == 1


# --- duplicates and overlap --------------------------------------------------------------------


def test_duplicates_count_repeats_beyond_the_first_with_example_ids():
    prompts = [
        ask("a", "x"),
        ask("b", "y"),
        ask("c", "X"),
        ask("d", "x "),
        ask("e", "Y"),
        ask("f", "z"),
    ]
    dup = find_duplicates(prompts)
    assert (dup.prompts, dup.distinct, dup.duplicates, dup.repeated) == (6, 3, 3, 2)
    assert dup.examples == (("a", "c", "d"), ("b", "e"))


def test_no_duplicates_in_distinct_questions():
    dup = find_duplicates([ask(str(i), f"q{i}") for i in range(10)])
    assert (dup.duplicates, dup.repeated, dup.examples) == (0, 0, ())


def test_overlap_counts_eval_prompts_found_in_train_with_pairs():
    train = [ask("t1", "a"), ask("t2", "b"), ask("t3", "B")]
    eval_ = [ask("e1", "b"), ask("e2", "c"), ask("e3", "A"), ask("e4", "d")]
    ov = find_overlap(train, eval_)
    assert (ov.eval_prompts, ov.in_train, ov.share) == (4, 2, 0.5)
    assert ov.examples == (("e1", "t2"), ("e3", "t1"))  # the first train id of the question


def test_overlap_of_disjoint_and_empty_splits_is_zero():
    assert find_overlap([ask("t", "a")], [ask("e", "b")]).in_train == 0
    assert find_overlap([ask("t", "a")], []).share == 0.0


def test_the_built_in_generator_against_itself_overlaps_entirely():
    cls = load_plugins(entry_points=False).get("dataset", "arithmetic")
    prompts = cls(cls.Params(split="train", count=12)).load()
    report = data_report(prompts, prompts)
    assert report.overlap is not None
    assert report.overlap.in_train == report.overlap.eval_prompts == len(prompts) == 12
    assert report.to_dict()["overlap"]["share"] == 1.0


def test_report_of_one_split_has_no_overlap():
    report = data_report(None, [ask("e", "a"), ask("f", "a")]).to_dict()
    assert report["overlap"] is None
    assert list(report["splits"]) == ["eval"]
    assert report["splits"]["eval"]["examples"] == [["e", "f"]]


# --- at the run's start ------------------------------------------------------------------------


class TestPlugin:
    @hookimpl
    def register_backends(self, register):
        register(EchoBackend)


@pytest.fixture
def plugins():
    return load_plugins(entry_points=False, extra=[("testplugin", TestPlugin())])


@pytest.fixture
def splits(tmp_path: Path) -> tuple[Path, Path]:
    train = write_jsonl(
        tmp_path / "train.jsonl", [("t1", "1+1?"), ("t2", "2+2?"), ("t3", "2+2?  ")]
    )
    eval_ = write_jsonl(tmp_path / "eval.jsonl", [("e1", "3+3?"), ("e2", "1+1?"), ("e3", "4+4?")])
    return train, eval_


def pipeline_yaml(mode: str, train: Path | None, eval_: Path, disjoint: bool = False) -> str:
    train_line = f'  train: {{dataset: jsonl, path: "{train}", id_field: id}}\n' if train else ""
    reward = "reward: programmatic\n" if mode == "train" else ""
    return (
        textwrap.dedent(f"""\
        name: overlap
        mode: {mode}
        models:
          policy: {{backend: echo, replies: ["\\\\boxed{{2}}"]}}
        data:
          eval: {{dataset: jsonl, path: "{eval_}", id_field: id}}
          disjoint: {str(disjoint).lower()}
        rollouts: {{n: 2, max_new_tokens: 8}}
        aggregator: majority
        eval: {{batch_size: 3, bootstrap: 10}}
        """)
        + reward
    ).replace("data:\n", "data:\n" + train_line)


def load(tmp: Path, text: str, plugins):
    path = tmp / "p.yaml"
    path.write_text(text)
    return load_pipeline(path, plugins=plugins)


@pytest.mark.parametrize("mode", ["train", "sft"])
def test_a_training_run_start_reports_duplicates_and_overlap(tmp_path, plugins, splits, mode):
    pipe = load(tmp_path, pipeline_yaml(mode, *splits), plugins)
    report = check_run_data(pipe, tmp_path)
    assert report.splits["train"].duplicates == 1  # "2+2?" and "2+2?  "
    assert report.overlap is not None and report.overlap.in_train == 1
    written = json.loads((tmp_path / "data.json").read_text())
    assert written["overlap"]["examples"] == [["e2", "t1"]]
    assert written["splits"]["train"]["examples"] == [["t2", "t3"]]
    assert written["splits"]["eval"]["duplicates"] == 0


def test_eval_limit_is_respected(tmp_path, plugins, splits):
    text = pipeline_yaml("train", *splits).replace("batch_size: 3", "batch_size: 3, limit: 1")
    report = check_run_data(load(tmp_path, text, plugins), None)
    assert report.overlap is not None
    assert (report.overlap.eval_prompts, report.overlap.in_train) == (1, 0)  # e2 is cut


def test_disjoint_refuses_overlap_before_any_model_loads(tmp_path, plugins, splits):
    pipe = load(tmp_path, pipeline_yaml("train", *splits, disjoint=True), plugins)
    with pytest.raises(CatError) as err:
        check_run_data(pipe, None)  # loads datasets only: no backend is built
    message = str(err.value)
    assert "1 of the 3 data.eval questions (33.3%) also occur in data.train" in message
    assert "eval 'e2' = train 't1'" in message
    assert "data.disjoint: false" in message


def test_disjoint_accepts_disjoint_splits(tmp_path, plugins):
    train = write_jsonl(tmp_path / "a.jsonl", [("t1", "a"), ("t2", "a")])
    eval_ = write_jsonl(tmp_path / "b.jsonl", [("e1", "b")])
    pipe = load(tmp_path, pipeline_yaml("sft", train, eval_, disjoint=True), plugins)
    report = check_run_data(pipe, None)  # duplicates are reported, never refused
    assert report.splits["train"].duplicates == 1


def test_a_refused_run_fails_with_the_message_and_keeps_the_report(tmp_path, plugins, splits):
    pipe = load(tmp_path, pipeline_yaml("train", *splits, disjoint=True), plugins)
    run_dir = tmp_path / "run"
    with pytest.raises(CatError, match=r"also occur in data\.train"):
        run_pipeline(pipe, plugins=plugins, run_dir=str(run_dir))
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and "data.disjoint is true" in status["error"]
    assert json.loads((run_dir / "data.json").read_text())["overlap"]["in_train"] == 1
    assert not (run_dir / "records.jsonl").exists()  # nothing sampled


def test_an_evaluate_run_records_its_duplicates(tmp_path, plugins, splits):
    _, eval_ = splits
    write_jsonl(eval_, [("e1", "3+3?"), ("e2", "\t3+3? "), ("e3", "4+4?")])
    text = pipeline_yaml("evaluate", None, eval_).replace("aggregator: majority\n", "")
    run_dir = tmp_path / "run"
    run_pipeline(load(tmp_path, text, plugins), plugins=plugins, run_dir=str(run_dir))
    written = json.loads((run_dir / "data.json").read_text())
    assert written["splits"] == {
        "eval": {"prompts": 3, "distinct": 2, "duplicates": 1, "repeated": 1,
                 "examples": [["e1", "e2"]]}
    }  # fmt: skip
    assert written["overlap"] is None
    logged = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    warning = next(r for r in logged if r["event"] == "duplicate questions")
    assert warning["split"] == "data.eval" and warning["duplicates"] == 1


# --- cat-framework validate --data -------------------------------------------------------------


def validate(tmp: Path, splits: tuple[Path, Path], *args: str) -> Any:
    from click.testing import CliRunner

    from cat_framework.cli import cli

    text = pipeline_yaml("evaluate", *splits).replace("backend: echo", "model: org/tiny")
    (tmp / "v.yaml").write_text(text.replace('replies: ["\\\\boxed{2}"]', ""))
    return CliRunner().invoke(cli, ["validate", str(tmp / "v.yaml"), *args])


def test_validate_loads_no_dataset_without_data(tmp_path, splits):
    result = validate(tmp_path, splits, "--set", "data.disjoint=true")
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("v.yaml: valid")


def test_validate_data_reports_duplicates_and_overlap(tmp_path, splits):
    result = validate(tmp_path, splits, "--data")
    assert result.exit_code == 0, result.output
    assert "valid (data.train: 3 prompts, 1 duplicates; data.eval: 3 prompts, 0 duplicates; " in (
        result.output
    )
    assert "1 eval questions in train)" in result.output


def test_validate_data_refuses_overlap_under_disjoint(tmp_path, splits):
    result = validate(tmp_path, splits, "--data", "--set", "data.disjoint=true")
    assert result.exit_code == 2
    assert "1 of the 3 data.eval questions (33.3%) also occur in data.train" in result.output


def test_resume_may_change_disjoint():
    from cat_framework.rundir import unsafe_changes

    assert unsafe_changes({"data.disjoint": (False, True)}, "train") == []
