"""The report's evaluation matrix (estimator x score, CI, diagnostics) and the small multiples of
the held-out evaluation and teacher diagnostics, in the report and on the compare page.

The matrix is checked against a real ``mode: evaluate`` run: its cells must be what the engine's
own diagnostics compute from that run's records. The plots are checked as figures: one metric per
axes, at most one line per compared thing, one shared legend.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cat_framework.engine.diagnostics import reference_diagnostics
from cat_framework.records import read_records
from cat_framework.report import compare as compare_mod
from cat_framework.report import figure as figure_mod
from cat_framework.report import plots as plots_mod
from cat_framework.report import render_report
from cat_framework.report.compare import compare_plots, load_runs
from cat_framework.report.eval_metrics import RATES, eval_matrix, summary_row
from cat_framework.report.eval_plots import held_out_plot, teacher_plot
from cat_framework.report.load import load_metrics
from cat_framework.report.plots import training_plots
from cat_framework.report.samples import fmt
from tests.report.fixture_runs import make_eval_run, make_train_run


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory) -> Path:
    return make_eval_run(tmp_path_factory.mktemp("eval"))


def matrix_cells(page: str) -> tuple[list[str], dict[str, list[str]]]:
    """The matrix as text: its header, and each estimator's cells (tags stripped)."""
    table = page[page.index('<table class="scores matrix">') :]
    table = table[: table.index("</table>")]

    def text(cell: str) -> str:
        return " ".join(re.sub(r"<[^>]+>", " ", cell).split())

    head = [text(c) for c in re.findall(r"<th[^>]*>(.*?)</th>", table)]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table[table.index("<tbody>") :], re.S)
    cells = [[text(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", r)] for r in rows]
    return head, {c[0]: c for c in cells}


def expected_rate(diag: dict[str, float], name: str) -> str:
    count, total = diag[f"{name}/count"], diag[f"{name}/total"]
    rate = f"{diag[name]:.3f}" if name in diag else "—"
    return f"{rate} {int(count)}/{int(total)}"


def test_matrix_cells_are_the_diagnostics_of_the_runs_records(eval_run):
    records = read_records(eval_run / "records.jsonl")
    head, rows = matrix_cells(render_report(eval_run))
    assert head[:5] == ["estimator", "score", "95% CI", "interval", "n"]
    assert head[5:] == [h for _, h, _ in RATES]  # math: every diagnostic is measured
    assert list(rows) == ["single", "majority", "minppl", "synthesis"]  # one row per estimator
    for label, cells in rows.items():
        scores = [r.references[label].score for r in records]
        assert cells[1] == fmt(sum(scores) / len(scores))
        assert cells[4] == str(len(scores))
        diag = reference_diagnostics(records, label, task="math")
        assert cells[5:] == [expected_rate(diag, name) for name, _, _ in RATES], label
    # the rollouts' line and the raw numbers, collapsed
    page = render_report(eval_run)
    assert "Rollouts: accuracy <b>0.333</b> · pass@G 0.667 · every rollout wrong on 1" in page
    assert '<details class="raw"><summary>All ' in page
    assert "eval/synthesis/reference/no_answer/count" in page


def test_a_training_run_shows_its_last_evaluation_and_the_change_since_the_first():
    def row(step: float, score: float, **rates: tuple[int, int]) -> dict[str, float]:
        out = {"step": step, "eval/synthesis/score": score, "eval/rollouts/accuracy": score / 2}
        for name, (count, total) in rates.items():
            key = f"eval/synthesis/reference/{name}"
            out.update({f"{key}/count": count, f"{key}/total": total})
            if total:
                out[key] = count / total
        return out

    rows = [
        {"step": 1.0, "reward/mean": 0.1},
        row(0.0, 0.25, no_answer=(3, 8)),
        row(6.0, 0.5, no_answer=(1, 8), correct_when_all_wrong=(0, 0)),
    ]
    matrix = eval_matrix(rows)
    assert matrix is not None and matrix.step == 6.0 and matrix.first_step == 0.0
    assert [r.label for r in matrix.rows] == ["synthesis"]  # rollouts are not an estimator
    assert [name for name, _, _ in matrix.rates] == [
        "reference/no_answer",
        "reference/correct_when_all_wrong",
    ]  # only the diagnostics measured get a column
    assert matrix.rows[0].first == 0.25 and matrix.rollouts == {"accuracy": 0.25}
    assert eval_matrix([{"step": 1.0, "kl": 0.1}]) is None


def test_evaluate_summary_reads_as_the_training_runs_flat_row():
    summary = {
        "aggregators": {"majority": {"score": 0.5, "ci_low": 0.25, "ci_high": 0.75, "n": 4}},
        "rollouts": {"accuracy": 0.4, "pass_at_g": 0.75, "all_wrong": 1},
        "diagnostics": {"majority": {"reference/no_answer": 0.0, "reference/no_answer/count": 0}},
    }
    assert summary_row(summary) == {
        "step": 0.0,
        "eval/majority/score": 0.5,
        "eval/majority/ci_low": 0.25,
        "eval/majority/ci_high": 0.75,
        "eval/majority/n": 4.0,
        "eval/rollouts/accuracy": 0.4,
        "eval/rollouts/pass_at_g": 0.75,
        "eval/rollouts/all_wrong": 1.0,
        "eval/majority/reference/no_answer": 0.0,
        "eval/majority/reference/no_answer/count": 0.0,
    }


# ------------------------------------------------------------------------------ small multiples


@pytest.fixture
def captured(monkeypatch) -> list:
    """Every figure drawn, in order, instead of its PNG."""
    figs: list = []

    def capture(fig):
        figs.append(fig)
        return "data:image/png;base64,"

    for module in (figure_mod, plots_mod, compare_mod):
        monkeypatch.setattr(module, "to_uri", capture)
    return figs


def panels(fig) -> list:
    return [ax for ax in fig.axes if ax.get_visible()]


def legend_names(fig) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def test_report_draws_one_metric_per_panel(tmp_path, captured):
    rows = load_metrics(make_train_run(tmp_path / "run") / "metrics.jsonl", [])
    held_out = held_out_plot(rows)
    teacher = teacher_plot(rows, list(rows[-1]))
    assert held_out is not None and teacher is not None
    held, diag = captured
    assert [ax.get_title() for ax in panels(held)] == [
        "score",
        "no answer",
        "disagrees with the vote",
        "right when disagreeing",
    ]  # "right when all rollouts were wrong" counted nothing: no panel
    assert legend_names(held) == ["synthesis", "rollout accuracy"]
    assert [ax.get_title() for ax in panels(diag)] == [
        "no answer",
        "disagrees with the vote",
        "right when disagreeing",
        "unscorable rollouts",
        "reference right (gold audit)",
        "reward-length correlation",
    ]
    assert all(len(ax.get_lines()) == 1 for ax in panels(diag)) and not diag.legends
    captured.clear()
    titles = [p.title for p in training_plots(rows)]
    assert "Held-out evaluation" in titles and "Teacher diagnostics" in titles
    other = panels(captured[titles.index("Other metrics")])
    assert not any("eval/" in ax.get_title() or "reference/" in ax.get_title() for ax in other)


def test_compare_draws_four_runs_by_six_diagnostics_as_small_multiples(tmp_path, captured):
    dirs = [make_train_run(tmp_path / f"arm{i}", steps=4, eval_every=2) for i in range(4)]
    plots = compare_plots(load_runs(dirs))
    figs = dict(zip([p.title for p in plots], captured, strict=True))
    runs = [f"arm{i}" for i in range(4)]
    diag = figs["Teacher diagnostics"]
    assert len(panels(diag)) == 6  # one diagnostic per panel
    assert all(len(ax.get_lines()) == 4 for ax in panels(diag))  # one line per run
    assert legend_names(diag) == runs  # one shared legend: the runs
    held = figs["Held-out evaluation"]
    assert [ax.get_title() for ax in panels(held)] == ["synthesis", "rollout accuracy"]
    assert all(len(ax.get_lines()) == 4 for ax in panels(held)) and legend_names(held) == runs


def test_a_run_of_one_step_gets_its_panels_and_a_whole_step_tick(captured):
    """One point per panel (a one-step run, an evaluate run): a marker on a tick of its own."""
    row = {"step": 1.0, "reward/mean": 0.5, "reference/no_answer": 0.5, "reward/unscorable": 0.0}
    row.update(
        {"eval/majority/score": 0.5, "eval/majority/ci_low": 0.2, "eval/majority/ci_high": 0.8}
    )
    titles = [p.title for p in training_plots([row])]
    assert "Teacher diagnostics" in titles and "Held-out evaluation" in titles
    for name in ("Teacher diagnostics", "Held-out evaluation"):
        fig = captured[titles.index(name)]
        assert all(list(ax.get_xticks()) == [1.0] for ax in panels(fig)), name
