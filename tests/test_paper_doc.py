"""docs/paper.md, the paper-vs-framework table, stays true: every row cites the paper, and every
framework value it quotes is checked here against the code and the shipped pipelines."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from cat_framework import load_plugins
from cat_framework.pipeline import load_pipeline
from cat_framework.pipeline.schema import Trainer
from cat_plugins.aggregators import AGGREGATORS
from cat_plugins.aggregators.synthesis import SynthesisAggregator
from cat_plugins.datasets.healthbench import HealthBenchParams
from cat_plugins.rewards.judging import ScorableParams
from cat_plugins.rewards.programmatic import ProgrammaticParams
from cat_plugins.rewards.rubric import RubricParams

REPO = Path(__file__).resolve().parent.parent
PAGE = REPO / "docs" / "paper.md"
#: the topics the issue asks the table to cover (a row's first cell starts with one)
TOPICS = ["anchor", "prompts", "verifiable reward", "rubric reward", "judge", "length penalty"]
TOPICS += ["KL", "advantage std", "SFT", "sampling", "optimisation", "data"]
#: a citation of the paper: its version and a section, equation, table, appendix, result...
CITATION = re.compile(r"\bv[13]\b[^|]*?(§|Eq|Table|App\.|Result|Fig\.|abstract)")
RL = ("math500_cat_rl", "healthbench_rubric_rl")


@cache
def plugins():
    return load_plugins(entry_points=False)


@cache
def resolved(stem: str) -> dict[str, Any]:
    return load_pipeline(REPO / "pipelines" / f"{stem}.yaml", plugins=plugins()).resolved()


def page() -> str:
    return PAGE.read_text()


def section(title: str) -> str:
    return page().split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def rows(text: str) -> list[list[str]]:
    """The body rows of the markdown tables in ``text``, as cells: a header row follows no table
    line, and the separator row is only pipes and dashes."""
    out: list[list[str]] = []
    previous = ""
    for line in text.splitlines():
        separator = set(line) <= set("|-: ")
        if line.startswith("|") and previous.startswith("|") and not separator:
            out.append([c.strip() for c in line.strip().strip("|").split("|")])
        previous = line
    return out


def test_page_is_in_the_site_navigation():
    nav = (REPO / "mkdocs.yml").read_text().split("\nnav:", 1)[1]
    assert re.search(r"^ +- [^:\n]+: paper\.md$", nav, re.M), "docs/paper.md is not in the nav"


def test_every_topic_has_a_row_that_cites_the_paper():
    method = rows(section("The method"))
    firsts = [r[0] for r in method]
    for topic in TOPICS:
        assert topic in firsts, f"no row for {topic!r}"
    for row in method + rows(section("Baselines")):
        assert CITATION.search(row[1]), f"row {row[0]!r} cites no section of the paper"


def test_every_paper_estimator_and_every_builtin_aggregator_is_a_baseline_row():
    table = section("Baselines")
    builtin = set(AGGREGATORS)
    assert builtin <= set(plugins().registry("aggregator").names())
    for name in builtin:
        assert f"`{name}`" in table, f"aggregator {name} is missing from the baselines"
    paper = ["single", "majority", "best_of_n", "minppl", "mutual_predictability", "synthesis"]
    assert set(paper) <= builtin


def _get(stem: str, *path: str) -> Any:
    node: Any = resolved(stem)
    for part in path:
        node = node[part]
    return node


def _default(model: Any, field: str) -> Any:
    return model.model_fields[field].default


#: (text quoted on the page, what makes it true)
FACTS: list[tuple[str, Callable[[], bool]]] = [
    (
        "`anchor: initial-policy`",
        lambda: all(
            _get(p.stem, "models", "anchor") == "initial-policy"
            for p in (REPO / "pipelines").glob("*.yaml")
            if _get(p.stem, "mode") in ("train", "sft")
        ),
    ),
    (
        "`question_aware: false`",
        lambda: (
            _default(SynthesisAggregator.Params, "question_aware") is False
            and not any(_get(s, "aggregator", "question_aware") for s in RL)
        ),
    ),
    ("`mode: string`", lambda: _get("math500_cat_rl", "reward", "mode") == "string"),
    ("`mode: math_verify`", lambda: _default(ProgrammaticParams, "mode") == "math_verify"),
    (
        "`min_criteria: 5`",
        lambda: (
            _default(RubricParams, "min_criteria") == 5
            and _get("healthbench_rubric_rl", "reward", "min_criteria") == 5
        ),
    ),
    ("`max_retries: 1`", lambda: _default(RubricParams, "max_retries") == 1),
    ("`fallback: partial`", lambda: _default(RubricParams, "fallback") == "partial"),
    (
        "`fallback: unscorable`",
        lambda: _get("healthbench_rubric_rl", "reward", "fallback") == "unscorable",
    ),
    (
        "`judge: {backend: openai, model: gpt-4o}`",
        lambda: (
            _get("healthbench_rubric_rl", "models", "judge", "backend") == "openai"
            and _get("healthbench_rubric_rl", "models", "judge", "model") == "gpt-4o"
        ),
    ),
    ("`judge_temperature: 0`", lambda: _default(ScorableParams, "judge_temperature") == 0),
    (
        "`judge_sees_question: false`",
        lambda: (
            _default(RubricParams, "judge_sees_question") is False
            and _get("healthbench_rubric_rl", "reward", "judge_sees_question") is False
        ),
    ),
    (
        "`length_penalty: {max_tokens: 750, penalty: -1.0, mode: add}`",
        lambda: all(
            _get(s, "reward", "length_penalty")
            == {"max_tokens": 750, "penalty": -1.0, "mode": "add"}
            for s in ("healthbench_rubric_rl", "healthbench_physician_rubric")
        ),
    ),
    ("`beta: 0.001`", lambda: all(_get(s, "trainer", "beta") == 0.001 for s in RL)),
    (
        "`kl_in: reward`",
        lambda: (
            all(_get(s, "trainer", "kl_in") == "reward" for s in RL)
            and _default(Trainer, "kl_in") == "loss"
        ),
    ),
    (
        "`scale_rewards: group`",
        lambda: all(_get(s, "trainer", "scale_rewards") == "group" for s in RL),
    ),
    (
        "`learning_rate: 5.0e-7`",
        lambda: all(_get(s, "trainer", "learning_rate") == 5e-7 for s in RL),
    ),
    (
        "`lr_scheduler: constant`",
        lambda: all(_get(s, "trainer", "lr_scheduler") == "constant" for s in RL),
    ),
    (
        "`prompts_per_step: 32`",
        lambda: all(
            _get(s, "trainer", "prompts_per_step") == 32 and _get(s, "rollouts", "n") == 8
            for s in RL
        ),
    ),
    ("`steps: 1000`", lambda: all(_get(s, "trainer", "steps") == 1000 for s in RL)),
    (
        "`backend: vllm`",
        lambda: all(
            _get(s, "models", "policy", "backend") == "vllm"
            and _get(s, "models", "policy", "enable_sleep_mode") is True
            for s in RL
        ),
    ),
    ("`test_fraction: 0.2`", lambda: _default(HealthBenchParams, "test_fraction") == 0.2),
    (
        "`r: 32`",
        lambda: (
            _get("cat_sft", "mode") == "sft"
            and _get("cat_sft", "trainer", "lora", "r") == 32
            and _get("cat_sft", "trainer", "learning_rate") == 5e-5
            and _get("cat_sft", "trainer", "lr_scheduler") == "cosine"
        ),
    ),
    ("`reward: judge`", lambda: _get("healthbench_judge_ablation", "reward", "name") == "judge"),
    (
        "`reward: human_rubric`",
        lambda: _get("healthbench_physician_rubric", "reward", "name") == "human_rubric",
    ),
    (
        "`aggregator: majority`",
        lambda: (
            _get("math500_ttrl_majority", "aggregator", "name") == "majority"
            and _get("math500_ttrl_majority", "aggregator", "mode") == "math_verify"
            and _get("math500_ttrl_majority", "reward", "mode") == "math_verify"
            and _get("math500_ttrl_majority", "rollouts", "n") == 8
            and _get("math500_ttrl_majority", "rollouts", "max_new_tokens") == 1536
            and _get("math500_ttrl_majority", "trainer", "kl_in") == "reward"
        ),
    ),
]


@pytest.mark.parametrize(("text", "holds"), FACTS, ids=[t for t, _ in FACTS])
def test_quoted_framework_value_is_true(text, holds):
    assert text in page(), f"docs/paper.md no longer quotes {text}: update this test with it"
    assert holds(), f"docs/paper.md says {text}, which the code or the pipelines contradict"
