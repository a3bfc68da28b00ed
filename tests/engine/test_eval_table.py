"""The test-time table: plain text (the same piped or on a terminal), printed by a training run
at step 0 and at its final evaluation as by ``mode: evaluate``, its estimators at one answer
level in the quickstart."""

from __future__ import annotations

import re
from pathlib import Path

from cat_framework.engine.eval_table import format_table
from cat_framework.pipeline import load_pipeline
from tests.engine.test_trainer import run, write_pipeline

ROOT = Path(__file__).resolve().parents[2]
SUMMARY = {
    "task": "math",
    "prompts": 12,
    "aggregators": {
        "single": {"score": 1 / 6, "ci_low": 0.0, "ci_high": 1 / 3},
        "synthesis": {"score": 0.5, "ci_low": 0.25, "ci_high": 0.75},
    },
    "rollouts": {"accuracy": 0.3125, "pass_at_g": 5 / 6},
}


def test_the_table_is_plain_aligned_text_with_each_answer_level():
    text = format_table(SUMMARY, 0.95, {"single": "number", "synthesis": "phrase"}, step=2)
    assert text.splitlines() == [
        "test-time CaT at step 2: 12 prompts (math)",
        "aggregator  answers  score  95% CI",
        "single      number   0.167  [0.000, 0.333]",
        "synthesis   phrase   0.500  [0.250, 0.750]",
        "rollout accuracy 0.312, pass@G 0.833 (each rollout's answer read at number)",
    ]
    free = {**SUMMARY, "task": "freeform"}
    assert "answers" not in format_table(free, 0.95, {"single": None})
    assert format_table(SUMMARY, 0.95, {}).splitlines()[2].split()[1] == "-"  # no level known


def tables(text: str) -> dict[str, list[list[str]]]:
    """Each printed table (by title) as its rows of cells."""
    out: dict[str, list[list[str]]] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("test-time CaT"):
            rows = []
            for row in lines[i + 2 :]:
                if row.startswith("rollout accuracy"):
                    break
                rows.append(row.split(maxsplit=2))
            out[line] = rows
    return out


def test_a_training_run_prints_the_step_0_and_final_tables(tmp_path, tiny_policy, toy_data, capsys):
    trainer = (
        "{steps: 2, prompts_per_step: 2, learning_rate: 0.01, eval_before: true, eval_every: 2}"
    )
    evals = (
        "eval:\n  aggregators: [{name: single, fallback: phrase}, "
        "{name: majority, fallback: phrase}, {name: synthesis, max_new_tokens: 4}]\n"
        "  bootstrap: 10\n  limit: 2\n"
    )
    path = write_pipeline(tmp_path, tiny_policy, toy_data, trainer, evals)
    eval_data = (
        f'  eval: {{dataset: jsonl, path: "{toy_data}", answer_field: answer, id_field: id}}'
    )
    path.write_text(path.read_text().replace("data:\n", f"data:\n{eval_data}\n"))
    run(path, tmp_path / "run")
    printed = tables(capsys.readouterr().err)
    assert list(printed) == [
        "test-time CaT at step 0: 2 prompts (math)",
        "test-time CaT at step 2: 2 prompts (math)",
    ]
    for rows in printed.values():
        assert [r[0] for r in rows] == ["single", "majority", "synthesis"]
        assert {r[1] for r in rows} == {"phrase"}  # one answer level: like with like


def test_the_quickstart_table_grades_every_estimator_at_one_answer_level():
    pipe = load_pipeline(ROOT / "pipelines" / "quickstart.yaml")
    levels = [
        getattr(comp.params, "fallback", None)
        for key, comp in pipe.components.items()
        if key[:2] == ("eval", "aggregators")
    ]
    assert len(levels) == 4 and set(levels) == {"phrase"}, levels


def test_the_readme_shows_both_tables_as_a_run_prints_them():
    """The README's excerpt is the printer's format (a rich table, boxed and wrapped to the
    terminal, once stood there while a train run printed no table at all)."""
    readme = (ROOT / "README.md").read_text()
    printed = tables(readme)
    steps = [int(re.match(r"test-time CaT at step (\d+):", t)[1]) for t in printed]  # type: ignore[index]
    assert steps == [0, 2]
    lines = readme.splitlines()
    for step, (title, rows) in zip(steps, printed.items(), strict=True):
        scores = {r[0]: _scores(r[2]) for r in rows}
        summary = {"task": "math", "prompts": 12, "aggregators": scores}
        table = format_table(summary, 0.95, {r[0]: r[1] for r in rows}, step=step)
        at = lines.index(title)
        assert lines[at : at + 2 + len(rows)] == table.splitlines()
        assert {r[1] for r in rows} == {"phrase"}


def _scores(cells: str) -> dict[str, float]:
    """``0.167  [0.000, 0.417]`` -> score, ci_low, ci_high."""
    values = [float(x) for x in re.findall(r"\d+\.\d+", cells)]
    return dict(zip(("score", "ci_low", "ci_high"), values, strict=True))
