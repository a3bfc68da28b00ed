"""Shipped pipelines by name: `cat-framework pipelines`, `pipelines show`, and `run`/`validate`
resolving a name when no such file exists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cat_framework.pipeline import PipelineValidationError
from cat_framework.pipeline.shipped import (
    canonical_name,
    find_shipped,
    resolve_pipeline,
    shipped_pipelines,
)

REPO = Path(__file__).resolve().parent.parent
FILES = sorted((REPO / "pipelines").glob("*.yaml"))


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CAT_DEBUG"}
    return subprocess.run(
        [sys.executable, "-m", "cat_framework", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("given", "name"),
    [
        ("math500_test_time", "math500-test-time"),
        ("math500-test-time", "math500-test-time"),
        ("Math500_Test_Time.yaml", "math500-test-time"),
        ("quickstart.yml", "quickstart"),
    ],
)
def test_canonical_name(given, name):
    assert canonical_name(given) == name


def test_every_file_in_pipelines_is_shipped_under_its_name_with_the_same_text():
    shipped = shipped_pipelines()
    assert set(shipped) == {p.stem.replace("_", "-") for p in FILES}
    for path in FILES:
        pipe = shipped[path.stem.replace("_", "-")]
        assert pipe.text() == path.read_text(), f"{pipe.path} is not {path}"


@pytest.mark.parametrize(
    "spelling", ["math500_test_time", "math500-test-time", "math500-test-time.yaml"]
)
def test_both_spellings_find_the_same_pipeline(spelling):
    found = find_shipped(spelling)
    assert found is not None and found.path.name == "math500_test_time.yaml"


def test_a_path_is_never_taken_for_a_name():
    assert find_shipped("pipelines/quickstart.yaml") is None
    assert find_shipped("../quickstart") is None


def test_an_existing_file_wins_over_the_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quickstart").write_text("name: mine\n")
    assert resolve_pipeline("quickstart") == "quickstart"
    (tmp_path / "quickstart").unlink()
    assert Path(resolve_pipeline("quickstart")).name == "quickstart.yaml"


def test_unknown_name_lists_the_names_with_a_did_you_mean(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineValidationError) as err:
        resolve_pipeline("quikstart")
    text = str(err.value)
    assert "Did you mean 'quickstart'?" in text
    assert "math500-test-time" in text and "healthbench-rubric-rl" in text
    assert len(err.value.issues) == 1


def test_missing_file_with_a_shipped_stem_points_at_the_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineValidationError) as err:
        resolve_pipeline("pipelines/quickstart.yaml")
    (issue,) = err.value.issues
    assert issue.message.startswith("file not found")
    assert "`cat-framework run quickstart`" in issue.message


def test_header_gives_a_description_and_hardware_for_every_pipeline():
    for name, pipe in shipped_pipelines().items():
        assert pipe.description() and not pipe.description().startswith("#"), name
        hardware = pipe.hardware()
        assert hardware and len(hardware) < 80, f"{name}: {hardware!r}"
    assert shipped_pipelines()["quickstart"].hardware() == "a 2-core CPU with ~6 GB of free RAM"


# -- the commands, run as a user runs them: from a folder with no pipelines/ in it ---------------


def test_pipelines_lists_name_mode_description_hardware(tmp_path):
    res = cli("pipelines", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in map(json.loads, res.stdout.splitlines())}
    assert set(rows) == set(shipped_pipelines())
    assert rows["quickstart"]["mode"] == "train"
    assert rows["math500-test-time"]["mode"] == "evaluate"
    # the mode of a pipeline that only includes another is read through the include
    assert rows["healthbench-judge-ablation"]["mode"] == "train"
    assert rows["cat-sft"]["hardware"] == "one 24 GB+ GPU with LoRA"
    table = cli("pipelines", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    for name in rows:
        assert name in table.stdout


def test_validate_and_show_by_name_from_any_folder(tmp_path):
    res = cli("validate", "quickstart", "math500-test-time", "math500_cat_rl", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "quickstart: valid" in res.stdout and "math500_cat_rl: valid" in res.stdout
    shown = cli("pipelines", "show", "quickstart", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == (REPO / "pipelines" / "quickstart.yaml").read_text()


def test_a_shown_pipeline_that_includes_another_validates_where_it_is_saved(tmp_path):
    shown = cli("pipelines", "show", "healthbench-judge-ablation", cwd=tmp_path)
    assert "include: healthbench-rubric-rl" in shown.stdout
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "my.yaml").write_text(shown.stdout + "rollouts: {n: 4}\n")
    res = cli("validate", "sub/my.yaml", cwd=tmp_path)
    assert res.returncode == 0, res.stderr


def test_unknown_names_exit_2_with_a_did_you_mean(tmp_path):
    res = cli("validate", "quikstart", "quickstart", cwd=tmp_path)
    assert res.returncode == 2
    assert "Did you mean 'quickstart'?" in res.stderr and "Traceback" not in res.stderr
    assert "quickstart: valid" in res.stdout  # the other argument is still checked
    run = cli("run", "math500-tset-time", cwd=tmp_path)
    assert run.returncode == 2 and "Did you mean 'math500-test-time'?" in run.stderr
    show = cli("pipelines", "show", "g-scalng", cwd=tmp_path)
    assert show.returncode == 2 and "Did you mean 'g-scaling'?" in show.stderr
    assert show.stdout == ""
