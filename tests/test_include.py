"""`include:` composition: deep merge, errors at the right file:line, cycles, missing includes."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from cat_framework import load_plugins
from cat_framework.pipeline import PipelineValidationError, include, load_pipeline, load_source
from cat_framework.pipeline.include import MAX_INCLUDE_DEPTH, MAX_INCLUDES, merge

BASE = """\
name: base
mode: evaluate
seed: 0
models:
  policy: {backend: transformers, model: embedded:smollm2-135m-instruct, dtype: float32}
data:
  eval: {dataset: gsm8k, split: test, limit: 4}
rollouts: {n: 4, temperature: 0.7, max_new_tokens: 64}
eval:
  aggregators: [single, majority, {name: synthesis, max_new_tokens: 80}]
  batch_size: 4
"""


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(entry_points=False)


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def issues_of(exc: pytest.ExceptionInfo[PipelineValidationError]) -> list[tuple[str, int, str]]:
    return [(Path(i.file).name, i.line, i.path) for i in exc.value.issues]


def test_override_merges_mappings_and_replaces_the_rest(tmp_path, plugins):
    write(tmp_path, "base.yaml", BASE)
    top = write(
        tmp_path,
        "top.yaml",
        """\
        include: base.yaml
        name: top
        rollouts: {n: 2}
        eval:
          aggregators: [single]
        """,
    )
    pipe = load_pipeline(top, plugins=plugins)
    cfg = pipe.config
    assert cfg.name == "top"
    assert cfg.rollouts.n == 2 and cfg.rollouts.max_new_tokens == 64  # merged mapping
    assert [a.name for a in cfg.eval.aggregators] == ["single"]  # a list replaces
    assert cfg.eval.batch_size == 4
    assert "include" not in pipe.source.data


def test_a_different_component_replaces_the_included_mapping():
    base = {"reward": {"name": "rubric", "min_criteria": 5, "length_penalty": {"max_tokens": 9}}}
    same = merge(base, {"reward": {"name": "rubric", "min_criteria": 7}})
    assert same["reward"] == {
        "name": "rubric",
        "min_criteria": 7,
        "length_penalty": {"max_tokens": 9},
    }
    other = merge(base, {"reward": {"name": "human_rubric"}})
    assert other["reward"] == {"name": "human_rubric"}
    model = merge({"m": {"backend": "transformers", "dtype": "bf16"}}, {"m": {"backend": "openai"}})
    assert model["m"] == {"backend": "openai"}
    assert merge({"name": "a", "x": 1}, {"name": "b"}) == {"name": "b", "x": 1}  # the top level


def test_an_error_in_an_included_key_names_the_included_file_and_line(tmp_path, plugins):
    write(tmp_path, "sub/base.yaml", BASE.replace("n: 4,", "n: -4,"))
    top = write(
        tmp_path,
        "top.yaml",
        """\
        include: sub/base.yaml
        name: top
        trainer_typo: 1
        """,
    )
    with pytest.raises(PipelineValidationError) as exc:
        load_pipeline(top, plugins=plugins)
    assert ("base.yaml", 8, "rollouts.n") in issues_of(exc)  # from the included file
    assert ("top.yaml", 3, "trainer_typo") in issues_of(exc)  # set by the including file
    by_path = {i.path: i for i in exc.value.issues}
    assert by_path["rollouts.n"].file == str(tmp_path / "sub" / "base.yaml")


def test_an_override_error_names_the_including_file(tmp_path, plugins):
    write(tmp_path, "base.yaml", BASE)
    top = write(
        tmp_path,
        "top.yaml",
        """\
        include: base.yaml

        eval:
          aggregators: [single, synthsis]
        """,
    )
    with pytest.raises(PipelineValidationError) as exc:
        load_pipeline(top, plugins=plugins)
    (issue,) = exc.value.issues
    assert (Path(issue.file).name, issue.line, issue.path) == (
        "top.yaml",
        4,
        "eval.aggregators[1].name",
    )
    assert "Did you mean 'synthesis'?" in issue.message


def test_set_overrides_apply_after_includes(tmp_path, plugins):
    write(tmp_path, "base.yaml", BASE)
    top = write(tmp_path, "top.yaml", "include: base.yaml\nname: top\n")
    with pytest.raises(PipelineValidationError) as exc:
        load_pipeline(top, ["rollouts.n=0"], plugins=plugins)
    assert exc.value.issues[0].file == "--set rollouts.n=0"


def test_a_syntax_error_in_an_included_file_names_it(tmp_path):
    write(tmp_path, "base.yaml", "name: base\nmodels: [unclosed\n")
    top = write(tmp_path, "top.yaml", "include: base.yaml\n")
    with pytest.raises(PipelineValidationError) as exc:
        load_source(top)
    assert Path(exc.value.issues[0].file).name == "base.yaml"
    assert "YAML syntax error" in exc.value.issues[0].message


def test_includes_in_a_list_apply_in_order_and_nest(tmp_path, plugins):
    write(tmp_path, "base.yaml", BASE)
    write(tmp_path, "mid.yaml", "include: base.yaml\nrollouts: {n: 3}\n")
    write(tmp_path, "long.yaml", "rollouts: {max_new_tokens: 99, n: 5}\n")
    top = write(tmp_path, "top.yaml", "include: [mid.yaml, long.yaml]\nname: top\n")
    cfg = load_pipeline(top, plugins=plugins).config
    assert (cfg.rollouts.n, cfg.rollouts.max_new_tokens, cfg.rollouts.temperature) == (5, 99, 0.7)
    src = load_source(top)
    assert src.where(("rollouts", "n"))[:2] == (str(tmp_path / "long.yaml"), 1)
    assert src.where(("seed",))[:2] == (str(tmp_path / "base.yaml"), 3)


def test_a_cycle_is_refused_with_the_chain(tmp_path):
    write(tmp_path, "a.yaml", "include: b.yaml\nname: a\n")
    write(tmp_path, "b.yaml", "name: b\ninclude: a.yaml\n")
    with pytest.raises(PipelineValidationError) as exc:
        load_source(tmp_path / "a.yaml")
    (issue,) = exc.value.issues
    assert exc.value.file == str(tmp_path / "a.yaml")  # the header names the file given
    assert (Path(issue.file).name, issue.line, issue.path) == ("b.yaml", 2, "include")
    assert "include cycle:" in issue.message
    assert "a.yaml -> " in issue.message and "b.yaml -> " in issue.message
    write(tmp_path, "self.yaml", "include: self.yaml\n")
    with pytest.raises(PipelineValidationError, match="include cycle"):
        load_source(tmp_path / "self.yaml")


def test_a_missing_include_is_one_error_at_its_line(tmp_path):
    top = write(tmp_path, "top.yaml", "name: top\ninclude: nothere.yaml\n")
    with pytest.raises(PipelineValidationError) as exc:
        load_source(top)
    (issue,) = exc.value.issues
    assert (issue.line, issue.path) == (2, "include")
    assert "no such file" in issue.message and str(tmp_path / "nothere.yaml") in issue.message
    top.write_text("include: healthbench-rubric-rll\n")
    with pytest.raises(PipelineValidationError) as exc:
        load_source(top)
    assert "Did you mean 'healthbench-rubric-rl'?" in exc.value.issues[0].message


@pytest.mark.parametrize("value", ["3", "[]", "[a.yaml, 7]", "''", "{a: b}"])
def test_a_malformed_include_is_one_error(tmp_path, value):
    top = write(tmp_path, "top.yaml", f"name: top\ninclude: {value}\n")
    with pytest.raises(PipelineValidationError) as exc:
        load_source(top)
    (issue,) = exc.value.issues
    assert issue.line == 2 and "include takes a pipeline file" in issue.message


def test_a_shipped_name_is_included_from_anywhere(tmp_path, plugins):
    top = write(tmp_path, "mine.yaml", "include: quickstart\nname: mine\nrollouts: {n: 2}\n")
    pipe = load_pipeline(top, plugins=plugins)
    assert pipe.config.name == "mine" and pipe.config.mode == "train"
    assert pipe.config.rollouts.n == 2 and pipe.config.trainer.steps == 2
    assert pipe.source.where(("trainer", "steps"))[0].endswith("quickstart.yaml")


def test_include_depth_is_bounded(tmp_path):
    n = MAX_INCLUDE_DEPTH + 1
    for i in range(n):
        write(tmp_path, f"p{i}.yaml", f"include: p{i + 1}.yaml\n" if i < n - 1 else BASE)
    with pytest.raises(PipelineValidationError, match="deeper than"):
        load_source(tmp_path / "p0.yaml")


@pytest.mark.timeout(60)  # unbounded, this fan-out reads 10^8 files
def test_include_fan_out_is_bounded_in_total(tmp_path):
    for i in range(8):
        write(tmp_path, f"f{i}.yaml", "include: [" + ", ".join([f"f{i + 1}.yaml"] * 10) + "]\n")
    write(tmp_path, "f8.yaml", BASE)
    with pytest.raises(PipelineValidationError) as exc:
        load_source(tmp_path / "f0.yaml")
    (issue,) = exc.value.issues
    assert f"more than {MAX_INCLUDES} included files in all" in issue.message
    assert issue.file.endswith(".yaml") and issue.line == 1


def test_include_bytes_are_bounded_in_total(tmp_path, monkeypatch):
    monkeypatch.setattr(include, "MAX_TOTAL_BYTES", 2000)
    padding = "# " + "x" * 700 + "\n"
    write(tmp_path, "a.yaml", padding + BASE)
    write(tmp_path, "b.yaml", padding + "name: b\n")
    top = write(tmp_path, "top.yaml", "include: [a.yaml, b.yaml]\n" + padding)
    with pytest.raises(PipelineValidationError) as exc:
        load_source(top)
    (issue,) = exc.value.issues
    assert issue.file == str(top) and issue.path == "include[1]"
    assert "hold more than 2,000 bytes in all" in issue.message
