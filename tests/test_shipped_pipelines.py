"""Every pipeline shipped in pipelines/ validates, and says what it reproduces and needs."""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

import pytest

from cat_framework import load_plugins
from cat_framework.pipeline import load_pipeline

PIPELINES = sorted((Path(__file__).resolve().parent.parent / "pipelines").glob("*.yaml"))


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(entry_points=False)


def test_there_are_pipelines():
    names = {p.stem for p in PIPELINES}
    assert {"quickstart", "math500_test_time", "math500_cat_rl", "healthbench_rubric_rl"} <= names


@pytest.mark.parametrize("path", PIPELINES, ids=[p.stem for p in PIPELINES])
def test_pipeline_validates(path, plugins):
    pipe = load_pipeline(path, plugins=plugins)
    assert pipe.config.name


@pytest.mark.parametrize("path", PIPELINES, ids=[p.stem for p in PIPELINES])
def test_pipeline_header_names_paper_setting_and_hardware(path):
    header = path.read_text().split("\nname:")[0]
    assert "Paper setting" in header, f"{path.name}: header must name the paper setting"
    assert "Hardware" in header, f"{path.name}: header must name the hardware it needs"


@pytest.mark.parametrize("path", PIPELINES, ids=[p.stem for p in PIPELINES])
def test_pipeline_switches_to_embedded_model_with_one_override(path, plugins):
    pipe = load_pipeline(
        path, ["models.policy.model=embedded:smollm2-135m-instruct"], plugins=plugins
    )
    assert pipe.component("models", "policy").params.model == "embedded:smollm2-135m-instruct"


def test_every_file_in_pipelines_is_package_data():
    """The wheel ships pipelines/ as the package cat_pipelines (setup.py maps it); a file no
    package-data glob matches would be missing from a plain install."""
    repo = Path(__file__).resolve().parent.parent
    setup = (repo / "setup.py").read_text()
    assert '"cat_pipelines": "pipelines"' in setup
    line = re.search(r"^cat_pipelines = (\[.*\])$", (repo / "pyproject.toml").read_text(), re.M)
    assert line, "pyproject.toml: no package-data for cat_pipelines"
    globs = json.loads(line.group(1))
    files = [p.relative_to(repo / "pipelines").as_posix() for p in (repo / "pipelines").rglob("*")]
    files = [f for f in files if (repo / "pipelines" / f).is_file() and "__pycache__" not in f]
    assert files
    for f in files:
        assert any(fnmatch.fnmatch(f, g) for g in globs), f"pipelines/{f} is not package data"
