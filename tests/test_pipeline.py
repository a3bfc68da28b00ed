"""Pipeline validation: schema, components, every error at once with file:line and key path."""

from __future__ import annotations

import textwrap

import pytest

from cat_framework import Aggregator, Dataset, Prompt, RewardDeriver, Rewards, hookimpl
from cat_framework.components import ComponentParams
from cat_framework.errors import ConfigError
from cat_framework.pipeline import (
    PipelineValidationError,
    apply_overrides,
    load_pipeline,
    load_source,
    parse_override,
)
from tests.helpers.echo_backend import EchoBackend


class ProseOnly(Aggregator):
    name = "vote_math"
    tasks = frozenset({"math"})

    def aggregate(self, groups):
        return []


class ToyData(Dataset):
    name = "toy"

    class Params(ComponentParams):
        limit: int | None = None

    def load(self):
        return [Prompt(id="0", messages=[{"role": "user", "content": "1+1?"}], gold_answer="2")]


class ToyReward(RewardDeriver):
    name = "toy_reward"

    def derive(self, groups, references):
        return [Rewards(values=[0.0] * len(g)) for g in groups]


class TestPlugin:
    @hookimpl
    def register_aggregators(self, register):
        register(ProseOnly)

    @hookimpl
    def register_datasets(self, register):
        register(ToyData)

    @hookimpl
    def register_reward_derivers(self, register):
        register(ToyReward)

    @hookimpl
    def register_backends(self, register):
        register(EchoBackend)


@pytest.fixture
def plugins(make_plugins):
    return make_plugins(("test-plugin", TestPlugin()))


VALID = """\
name: demo
mode: evaluate
models:
  policy: {backend: echo, replies: ["7"]}
data:
  eval: {dataset: toy, limit: 3}
rollouts: {n: 4, max_new_tokens: 16}
eval:
  aggregators: [single, {name: synthesis, question_aware: true}]
"""


def write(tmp_path, text, name="p.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def errors_of(tmp_path, text, plugins, overrides=()):
    with pytest.raises(PipelineValidationError) as err:
        load_pipeline(write(tmp_path, text), overrides, plugins=plugins)
    return err.value


def test_three_mistakes_three_errors_with_lines(tmp_path, plugins):
    text = """\
    name: broken
    mode: train
    models:
      policy: {backend: echo}
    data:
      train: {dataset: toy}
    rollouts:
      n: -1
    aggregator:
      name: synthsis
    reward: {name: toy_reward}
    trainer:
      learning_rate: 1.0e-6
      colour: blue
    """
    err = errors_of(tmp_path, text, plugins)
    by_path = {i.path: i for i in err.issues}
    assert set(by_path) == {"rollouts.n", "aggregator.name", "trainer.colour"}
    assert by_path["rollouts.n"].line == 8
    assert by_path["aggregator.name"].line == 10
    assert by_path["trainer.colour"].line == 14
    assert "Did you mean 'synthesis'?" in by_path["aggregator.name"].message
    assert "unknown key 'colour'" in by_path["trainer.colour"].message
    assert "greater than or equal to 1" in by_path["rollouts.n"].message
    report = str(err)
    assert report.splitlines()[0].endswith("p.yaml: 3 errors")
    assert f"{tmp_path / 'p.yaml'}:10:3: aggregator.name: unknown aggregator 'synthsis'" in report
    assert err.exit_code == 2


def test_valid_pipeline_resolves_components(tmp_path, plugins):
    pipe = load_pipeline(write(tmp_path, VALID), plugins=plugins)
    assert pipe.config.rollouts.n == 4
    policy = pipe.component("models", "policy")
    assert policy.cls is EchoBackend and policy.params.replies == ["7"]
    agg = pipe.component("eval", "aggregators", 1)
    assert agg.name == "synthesis" and agg.params.question_aware is True
    resolved = pipe.resolved()
    assert resolved["eval"]["aggregators"][1]["question_aware"] is True
    assert resolved["eval"]["aggregators"][1]["template"] == "auto"  # defaults filled in
    assert resolved["models"]["policy"] == {"backend": "echo", "replies": ["7"]}
    assert resolved["trainer"]["learning_rate"] == 5e-7  # defaults filled in


def test_component_params_are_validated_with_their_schema(tmp_path, plugins):
    text = VALID.replace("question_aware: true", "question_awar: true").replace(
        'replies: ["7"]', "replies: 3"
    )
    err = errors_of(tmp_path, text, plugins)
    by_path = {i.path: i for i in err.issues}
    assert "eval.aggregators[1].question_awar" in by_path
    assert "Did you mean 'question_aware'?" in by_path["eval.aggregators[1].question_awar"].message
    assert by_path["eval.aggregators[1].question_awar"].line == 9
    assert by_path["models.policy.replies"].line == 4


def test_malformed_yaml_gives_line_and_column(tmp_path, plugins):
    text = "name: x\nmode: train\nmodels:\n  policy: default\n   extra: 1\n"
    err = errors_of(tmp_path, text, plugins)
    (issue,) = err.issues
    assert (issue.line, issue.column) == (5, 9)
    assert "YAML syntax error" in issue.message


def test_bad_indentation_of_a_block(tmp_path, plugins):
    text = "name: x\nmodels:\n  policy:\n    backend: echo\n  model: 1\n    x: 2\n"
    (issue,) = errors_of(tmp_path, text, plugins).issues
    assert issue.line == 6 and issue.column is not None


def test_duplicate_keys_are_errors(tmp_path, plugins):
    (issue,) = errors_of(tmp_path, VALID + "mode: train\n", plugins).issues
    assert issue.line == 10 and "duplicate key 'mode'" in issue.message


def test_python_tags_are_refused(tmp_path, plugins):
    text = VALID + "extra: !!python/object/apply:os.system ['echo hi']\n"
    (issue,) = errors_of(tmp_path, text, plugins).issues
    assert "YAML syntax error" in issue.message and issue.line == 10


def test_missing_required_and_mode_requirements(tmp_path, plugins):
    err = errors_of(tmp_path, "name: x\nmode: train\n", plugins)
    paths = {i.path for i in err.issues}
    assert {"models", "data.train", "aggregator", "reward"} <= paths


def test_unknown_mode_and_bad_role_reference(tmp_path, plugins):
    text = VALID.replace("mode: evaluate", "mode: trian") + "  anchor: polcy\n"
    text = text.replace("models:\n", "models:\n  judge: somebody\n")
    by_path = {i.path: i for i in errors_of(tmp_path, text, plugins).issues}
    assert "'evaluate', 'train' or 'sft'" in by_path["mode"].message
    assert "'somebody' is not a role" in by_path["models.judge"].message


def test_task_mismatch_is_reported(tmp_path, plugins):
    class Prose:
        @hookimpl
        def register_datasets(self, register):
            from cat_framework import Dataset

            class Chat(Dataset):
                name = "chat"
                task = "freeform"

                def load(self):
                    return []

            register(Chat)

    from cat_framework import load_plugins

    p = load_plugins(entry_points=False, extra=[("t", TestPlugin()), ("prose", Prose())])
    text = (
        VALID.replace("dataset: toy, limit: 3", "dataset: chat").replace("single, ", "vote_math, ")
        + "  scorer: toy_reward\n"
    )
    (issue,) = errors_of(tmp_path, text, p).issues
    assert issue.path == "eval.aggregators[0].name"
    assert "works on math tasks only, but dataset 'chat' is freeform" in issue.message


def test_freeform_evaluation_needs_a_scorer(tmp_path, make_plugins):
    from cat_framework import load_plugins

    p = load_plugins(entry_points=False, extra=[("t", TestPlugin())])
    text = VALID.replace("dataset: toy, limit: 3", "dataset: healthbench").replace("single, ", "")
    (issue,) = errors_of(tmp_path, text, p).issues
    assert issue.path == "eval.scorer" and "human_rubric" in issue.message


def test_overrides_apply_and_are_located(tmp_path, plugins):
    pipe = load_pipeline(
        write(tmp_path, VALID),
        ["rollouts.n=2", "eval.aggregators.0=synthesis", "trainer.lora.r=4"],
        plugins=plugins,
    )
    assert pipe.config.rollouts.n == 2
    assert pipe.component("eval", "aggregators", 0).name == "synthesis"
    assert pipe.config.trainer.lora.r == 4
    err = errors_of(tmp_path, VALID, plugins, ["rollouts.n=0"])
    (issue,) = err.issues
    assert issue.file == "--set rollouts.n=0" and issue.line is None
    assert str(issue).startswith("--set rollouts.n=0: rollouts.n:")


def test_parse_override_values_are_yaml():
    assert parse_override("a.b=4") == (("a", "b"), 4)
    assert parse_override("a.0.c=[x, y]") == (("a", 0, "c"), ["x", "y"])
    assert parse_override("x=null") == (("x",), None)
    assert parse_override("x=1.0e-3") == (("x",), 1e-3)
    with pytest.raises(ConfigError, match=r"KEY\.PATH=VALUE"):
        parse_override("novalue")
    with pytest.raises(ConfigError, match=r"KEY\.PATH=VALUE"):
        parse_override("a..b=1")


def test_override_into_a_scalar_is_a_clear_error(tmp_path):
    source = load_source(write(tmp_path, VALID))
    with pytest.raises(ConfigError, match="cannot set a key inside a str"):
        apply_overrides(source, ["name.x=1"])


def test_missing_file(tmp_path, plugins):
    with pytest.raises(PipelineValidationError, match="file not found"):
        load_pipeline(tmp_path / "nope.yaml", plugins=plugins)


def test_non_mapping_file(tmp_path, plugins):
    (issue,) = errors_of(tmp_path, "- a\n- b\n", plugins).issues
    assert "must be a mapping" in issue.message
