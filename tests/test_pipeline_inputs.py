"""Pipeline validation against hostile or mistaken input (issue 9): unreadable files, alias
bombs, unbounded sizes, run names that escape output.dir, default components, the check_files
context of component validators. The CLI-level corpus is tests/reliability/."""

from __future__ import annotations

import pytest

from cat_framework import Dataset, hookimpl
from cat_framework.components import ComponentParams
from cat_framework.pipeline import PipelineValidationError, load_pipeline
from tests.helpers.echo_backend import EchoBackend
from tests.test_pipeline import VALID, errors_of, plugins, write

__all__ = ["plugins"]  # the fixture, shared with test_pipeline.py


def test_default_eval_aggregators_are_resolved_components(tmp_path, plugins):
    """Omitting eval.aggregators means [single], resolved like a written one: evaluate zips
    the config's aggregators with the resolved components and crashed when they differed."""
    text = VALID.replace(
        "eval:\n  aggregators: [single, {name: synthesis, question_aware: true}]\n", ""
    )
    assert "aggregators" not in text
    pipe = load_pipeline(write(tmp_path, text), plugins=plugins)
    assert len(pipe.config.eval.aggregators) == 1
    single = pipe.component("eval", "aggregators", 0)
    assert single is not None and single.name == "single" and single.kind == "aggregator"
    (written,) = pipe.resolved()["eval"]["aggregators"]
    assert written["name"] == "single" and written.keys() > {"name"}  # params filled in


def test_default_eval_aggregators_run_an_evaluation(tmp_path, plugins):
    from cat_framework.runner import run_pipeline

    text = VALID.replace(
        "eval:\n  aggregators: [single, {name: synthesis, question_aware: true}]\n", ""
    )
    pipe = load_pipeline(write(tmp_path, text), plugins=plugins)
    summary = run_pipeline(pipe, plugins=plugins, run_dir=str(tmp_path / "run"))
    metrics = (tmp_path / "run" / "metrics.json").read_text()
    assert summary["metrics"] and '"single"' in metrics


@pytest.mark.parametrize("name", ["../victim", "a/b", "a\\b", "..", ".", "", "C:x", "/abs"])
def test_run_name_must_stay_inside_output_dir(tmp_path, plugins, name):
    text = VALID + f"output: {{dir: runs, run_name: {name!r}}}\n"
    (issue,) = errors_of(tmp_path, text, plugins).issues
    assert issue.path == "output.run_name" and issue.line == 10
    assert "plain folder name" in issue.message


def test_plain_run_names_are_kept(tmp_path, plugins):
    for name in ("quickstart", "my run 2", "a.b-c_d"):
        text = VALID + f"output: {{dir: ../elsewhere, run_name: {name!r}}}\n"
        assert load_pipeline(write(tmp_path, text), plugins=plugins).config.output.run_name == name


@pytest.mark.parametrize(
    ("key", "value", "bound"),
    [
        ("rollouts.n", "1000000000", "1024"),
        ("rollouts.n", "1.0e+29", "1024"),
        ("rollouts.max_new_tokens", "1.0e+23", "262144"),
        ("seed", "1.0e+40", "4294967295"),
        ("trainer.steps", "100000000000", "10000000"),
    ],
)
def test_sizes_have_upper_bounds(tmp_path, plugins, key, value, bound):
    (issue,) = errors_of(tmp_path, VALID, plugins, [f"{key}={value}"]).issues
    assert issue.path == key and bound in issue.message


def test_alias_bomb_is_refused_quickly(tmp_path, plugins):
    import time

    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    start = time.perf_counter()
    (issue,) = errors_of(tmp_path, "\n".join(lines) + "\n", plugins).issues
    assert time.perf_counter() - start < 5
    assert "alias bomb" in issue.message and issue.line is not None


def test_aliases_within_bounds_still_work(tmp_path, plugins):
    text = VALID.replace(
        "aggregators: [single, {name: synthesis, question_aware: true}]",
        "aggregators: [single, &agg {name: synthesis, max_new_tokens: 7}]",
    )
    pipe = load_pipeline(write(tmp_path, text + "aggregator: *agg\n"), plugins=plugins)
    assert pipe.component("aggregator").params.max_new_tokens == 7


@pytest.mark.parametrize(
    ("content", "message", "line"),
    [
        (b"name: caf\xe9\n", "not UTF-8", 1),
        (b"name: x\n\x00\x01", "binary data", 2),
        ("name: x\n".encode("utf-16"), "UTF-16", 1),
        (b"a: " + b"[" * 3000 + b"]" * 3000, "nested deeper", None),
        (b"a: &a [*a]\n", "cycle", 1),
        (b"# only a comment\n", "empty", None),
    ],
)
def test_unreadable_files_give_one_issue(tmp_path, plugins, content, message, line):
    path = tmp_path / "p.yaml"
    path.write_bytes(content)
    with pytest.raises(PipelineValidationError) as err:
        load_pipeline(path, plugins=plugins)
    (issue,) = err.value.issues
    assert message in issue.message and issue.line == line


def test_a_utf8_bom_is_accepted(tmp_path, plugins):
    path = tmp_path / "p.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + VALID.encode())
    assert load_pipeline(path, plugins=plugins).config.name == "demo"


def test_component_validators_get_the_check_files_context(tmp_path, make_plugins):
    """validate asks Params validators to check the disk; direct construction does not."""
    from pydantic import ValidationInfo, field_validator

    seen = []

    class Disk(Dataset):
        name = "disk"

        class Params(ComponentParams):
            path: str

            @field_validator("path")
            @classmethod
            def _check(cls, v, info: ValidationInfo):
                seen.append(info.context)
                return v

        def load(self):
            return []

    class P:
        @hookimpl
        def register_datasets(self, register):
            register(Disk)

        @hookimpl
        def register_backends(self, register):
            register(EchoBackend)

    text = VALID.replace("{dataset: toy, limit: 3}", "{dataset: disk, path: x}")
    load_pipeline(write(tmp_path, text), plugins=make_plugins(("p", P())))
    Disk({"path": "x"})
    assert seen == [{"check_files": True}, None]


def test_a_crashing_params_validator_is_an_issue_not_a_crash(tmp_path, make_plugins):
    from pydantic import field_validator

    class Fragile(Dataset):
        name = "fragile"

        class Params(ComponentParams):
            path: str = "x"

            @field_validator("path")
            @classmethod
            def _check(cls, v):
                raise RuntimeError("boom")

        def load(self):
            return []

    class P:
        @hookimpl
        def register_datasets(self, register):
            register(Fragile)

        @hookimpl
        def register_backends(self, register):
            register(EchoBackend)

    text = VALID.replace("{dataset: toy, limit: 3}", "{dataset: fragile, path: y}")
    (issue,) = errors_of(tmp_path, text, make_plugins(("p", P()))).issues
    assert issue.path == "data.eval" and "RuntimeError: boom" in issue.message
