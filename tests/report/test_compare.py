"""``cat-framework compare``: runs of different modes (and a failed one) on one page; step axes
have integer ticks in both the report and the compare page."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from cat_framework.cli import cli
from cat_framework.report import compare as compare_mod
from cat_framework.report import figure as figure_mod
from cat_framework.report import plots as plots_mod
from cat_framework.report.compare import load_runs
from cat_framework.report.compare_page import render_compare, write_compare
from tests.report.fixture_runs import make_eval_run, make_train_run
from tests.report.test_report import CHROMIUM, _chromium, _Dom


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory) -> Path:
    return make_eval_run(tmp_path_factory.mktemp("eval"))


def failed_run(root: Path) -> Path:
    """A training run that died at step 3 (status.json says why)."""
    run = make_train_run(root, steps=3, eval_every=2)
    (run / "status.json").write_text(
        json.dumps({"status": "failed", "error": "CUDA out of memory <at step 3>"})
    )
    return run


def _cells(page: str) -> list[list[str]]:
    """The final-evaluation table as text rows (tags stripped)."""
    table = page[page.index('<table class="compare">') :]
    table = table[: table.index("</table>")]
    rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)
    return [
        [re.sub(r"<[^>]+>", " ", c) for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", r)]
        for r in rows
    ]


def test_runs_of_different_modes_and_a_failed_one_side_by_side(eval_run, tmp_path):
    train = make_train_run(tmp_path / "train")
    failed = failed_run(tmp_path / "died")
    page = render_compare(load_runs([eval_run, train, failed]))
    head, *rows = _cells(page)
    # names repeat (both training runs are "toy-cat-rl"): their folders label them
    assert [h.strip() for h in head] == ["aggregator", "toy-eval", "train", "died"]
    by_label = {r[0].strip(): r[1:] for r in rows}
    # evaluate: every aggregator with its CI; train: last eval (step 12) and where it started
    assert set(by_label) >= {"single", "majority", "minppl", "synthesis", "rollout accuracy"}
    assert "[" in by_label["majority"][0] and "—" in by_label["majority"][1]
    synthesis_train = by_label["synthesis"][1]
    assert "0.640" in synthesis_train and "step 12" in synthesis_train
    assert "from 0.480 at step 4" in synthesis_train and "+0.160" in synthesis_train
    # the failed run: flagged with its (escaped) error, its step-2 evaluation still shown
    assert page.count('<div class="failure">') == 1 and "<b>Run died failed</b>" in page
    assert "CUDA out of memory &lt;at step 3&gt;" in page
    assert "step 2" in by_label["synthesis"][2]
    # overlaid curves, all embedded; nothing fetched, no script
    assert page.count('src="data:image/png;base64,') >= 4
    assert "<script" not in page.lower() and "http://" not in page and "https://" not in page


def test_repeated_run_names_get_distinct_labels(tmp_path):
    a = make_train_run(tmp_path / "a", steps=2, eval_every=1)
    b = make_train_run(tmp_path / "b", steps=2, eval_every=1)
    assert [r.label for r in load_runs([a, b])] == ["a", "b"]
    assert [r.label for r in load_runs([a, a])] == ["a", "a (2)"]


def _captured_figures(monkeypatch) -> list:
    figs: list = []

    def capture(fig):
        figs.append(fig)
        return "data:image/png;base64,"

    for module in (figure_mod, plots_mod, compare_mod):  # small multiples draw via figure
        monkeypatch.setattr(module, "to_uri", capture)
    return figs


def _step_ticks(figs) -> list[float]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    ticks = []
    for fig in figs:
        FigureCanvasAgg(fig).draw()
        for ax in fig.axes:
            if ax.get_visible() and ax.get_xlabel() in ("step", ""):
                lo, hi = ax.get_xlim()
                ticks += [t for t in ax.get_xticks() if lo <= t <= hi]
    return ticks


def test_step_axes_have_integer_ticks_in_report_and_compare(monkeypatch, tmp_path):
    figs = _captured_figures(monkeypatch)
    rows = [
        {
            "step": float(s),
            "reward/mean": 0.1 * s,
            "kl": 0.01 * s,
            "entropy": 1.0 / s,
            "eval/single/score": 0.2 * s,
        }
        for s in (1, 2)
    ]
    plots_mod.training_plots(rows)
    assert len(figs) >= 4
    ticks = _step_ticks(figs)
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    figs.clear()
    run = make_train_run(tmp_path / "short", steps=2, eval_every=1)
    compare_mod.compare_plots(load_runs([run]))
    ticks = _step_ticks(figs)
    assert len(figs) >= 4 and ticks and all(float(t).is_integer() for t in ticks), ticks


def test_cli_writes_the_page_and_refuses_what_is_not_a_run(eval_run, tmp_path, capsys):
    train = make_train_run(tmp_path / "train")
    out = CliRunner().invoke(cli, ["compare", str(eval_run), str(train), "-o", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "compare.html").is_file()
    assert out.output.strip() == str(tmp_path / "compare.html")
    empty = tmp_path / "empty"
    empty.mkdir()
    from cat_framework.cli import main

    for args, message in [
        ([str(empty)], "is not a run directory"),
        ([str(tmp_path / "nope")], "no such run directory"),
        ([str(train), str(train)], "the same run directory is given twice"),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(["compare", *args, "-o", str(tmp_path / "x.html")])
        assert exc.value.code != 0
        assert message in capsys.readouterr().err


def test_unwritable_output_is_one_message(eval_run, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    from cat_framework.errors import OutputError

    with pytest.raises(OutputError, match="is a file, not a folder"):
        write_compare([eval_run], blocker / "sub" / "c.html")


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless browser test needs Debian chromium: apt-get install -y chromium",
)
def test_compare_page_renders_in_headless_chromium(eval_run, tmp_path):
    page = write_compare(
        [eval_run, make_train_run(tmp_path / "train"), failed_run(tmp_path / "died")],
        tmp_path / "compare.html",
    )
    dom = _Dom()
    dom.feed(_chromium(page, tmp_path, "--dump-dom").stdout)
    assert dom.scripts == 0
    assert dom.images >= 4
    assert dom.classes.get("compare") == 1 and dom.classes.get("failure") == 1
    shot = tmp_path / "compare.png"
    _chromium(
        page, tmp_path, f"--screenshot={shot}", "--window-size=1280,2400", "--hide-scrollbars"
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
