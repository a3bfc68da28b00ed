"""Every pipeline shipped in pipelines/ validates, and says what it reproduces and needs."""

from __future__ import annotations

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
