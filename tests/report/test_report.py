"""The HTML run report: content, escaping, disagreement marks, robustness, and headless Chromium.

Evaluate reports come from a real ``run_pipeline`` run with the scripted echo backend; training
reports from :func:`make_train_run`, a synthetic run directory in the layout of issue 5 (so these
tests do not wait for the trainer). Set ``CAT_REPORT_ARTIFACTS=<dir>`` to keep the rendered pages
and Chromium screenshots for a look.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from cat_framework import hookimpl, load_plugins
from cat_framework.engine.runner import run_pipeline
from cat_framework.pipeline import load_pipeline
from cat_framework.report import render_report, write_report
from cat_framework.report.load import load_run
from cat_framework.report.views import prompt_view
from tests.helpers.echo_backend import EchoBackend

INJECTED = "<script>alert('pwned')</script>"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class EchoPlugin:
    @hookimpl
    def register_backends(self, register):
        register(EchoBackend)


# ------------------------------------------------------------------------------ fixture runs


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory) -> Path:
    """A real ``mode: evaluate`` run: rollouts "4" (with an injected script), "4", "2.5"."""
    tmp = tmp_path_factory.mktemp("eval")
    rows = [
        {"id": "a", "question": "What is 2+2? <b>bold?</b>", "answer": "4"},
        {"id": "b", "question": "What is 2+3?", "answer": "5"},
        {"id": "c", "question": "What is 10/4?", "answer": "\\frac{5}{2}"},
    ]
    data = tmp / "toy.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    replies = [f"{INJECTED} so \\boxed{{4}}", "\\boxed{4}", "so \\boxed{2.5}"]
    (tmp / "p.yaml").write_text(
        textwrap.dedent(f"""\
        name: toy-eval
        mode: evaluate
        models:
          policy: {{backend: echo, replies: {json.dumps(replies)}}}
        data:
          eval: {{dataset: jsonl, path: "{data}", answer_field: answer, id_field: id}}
        rollouts: {{n: 3, max_new_tokens: 8}}
        eval:
          aggregators: [single, majority, minppl, synthesis]
          bootstrap: 200
        """)
    )
    plugins = load_plugins(entry_points=False, extra=[("echo", EchoPlugin())])
    pipe = load_pipeline(tmp / "p.yaml", plugins=plugins)
    run_dir = tmp / "run"
    run_pipeline(pipe, plugins=plugins, run_dir=str(run_dir))
    return run_dir


RUBRIC = [
    "Recommends seeing a doctor if symptoms persist",
    "Mentions hydration",
    "Does not prescribe antibiotics",
    "Explains when to seek urgent care",
    "Uses plain language",
]


def _verdicts(pattern: list[bool | None]) -> list[dict]:
    return [
        {
            "criterion": {"text": c, "points": 1.0},
            "met": m,
            "raw": {True: "yes", False: "no"}.get(m, "??"),
        }
        for c, m in zip(RUBRIC, pattern, strict=True)
    ]


def make_train_run(
    root: Path, steps: int = 12, eval_every: int = 4, prompts: int = 2, g: int = 4
) -> Path:
    """A training run directory as issue 5 describes it: config, log, metrics, records, ckpts."""
    root.mkdir(parents=True, exist_ok=True)
    config = {
        "name": "toy-cat-rl",
        "mode": "train",
        "models": {
            "policy": {"backend": "transformers", "model": "tiny-llama"},
            "anchor": "initial-policy",
        },
        "rollouts": {"n": g, "max_new_tokens": 64},
        "reward": {"name": "rubric"},
        "trainer": {"steps": steps, "learning_rate": 5e-7, "beta": 0.001},
        "eval": {"confidence": 0.95},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    log = [
        {
            "event": "run start",
            "level": "info",
            "timestamp": "2025-01-01T10:00:00",
            "mode": "train",
        },
        {
            "event": "rubric fallback",
            "level": "warning",
            "timestamp": "2025-01-01T10:01:00",
            "groups": 1,
        },
        {
            "event": "run end",
            "level": "info",
            "timestamp": "2025-01-01T10:09:00",
            "status": "completed",
        },
    ]
    (root / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log))
    with (root / "metrics.jsonl").open("w") as f:
        for s in range(1, steps + 1):
            row = {
                "step": s,
                "reward/mean": 0.3 + 0.04 * s,
                "reward/std": 0.2 - 0.01 * s,
                "frac_reward_zero_std": 0.1,
                "kl": 1e-4 * s,
                "clip_fraction": 0.02,
                "entropy": 1.5 - 0.05 * s,
                "completions/mean_length": 40 + s,
                "completions/max_length": 64,
                "tokens_per_s": 120.0,
                "time/step": 3.0 + 0.1 * s,
                "time/teacher": 1.2,
                "time/training": 1.5,
                "mystery": {"nested": [1, 2], "flag": True},
            }
            if s % eval_every == 0:
                score = 0.4 + 0.02 * s
                row.update(
                    {
                        "eval/synthesis/score": score,
                        "eval/synthesis/ci_low": score - 0.1,
                        "eval/synthesis/ci_high": score + 0.1,
                        "eval/synthesis/n": 50,
                        "eval/rollouts/accuracy": score - 0.05,
                    }
                )
            f.write(json.dumps(row) + "\n")
        f.write('{"step": 99, "cut by a cra')  # a crash mid-line
    patterns = [
        [True] * 5,
        [True, False, True, None, True],
        [False] * 5,
        [True, True, True, True, False],
    ]
    with (root / "records.jsonl").open("w") as f:
        for s in range(1, steps + 1):
            for p in range(prompts):
                rewards = [
                    sum(v is True for v in pat) / sum(v is not None for v in pat)
                    for pat in patterns[:g]
                ]
                mu = sum(rewards) / len(rewards)
                sd = math.sqrt(sum((r - mu) ** 2 for r in rewards) / len(rewards)) or 1.0
                rec = {
                    "step": s,
                    "prompt": {
                        "id": f"hb-{p}",
                        "messages": [
                            {
                                "role": "user",
                                "content": f"I have a cold (step {s}). What should I do?",
                            }
                        ],
                    },
                    "rollouts": [
                        {
                            "text": (INJECTED if i == 1 else "")
                            + f"Rest and drink fluids. Variant {i}.",
                            "finish_reason": "length" if i == 2 else "stop",
                            "tokens": 30 + i,
                        }
                        for i in range(g)
                    ],
                    "reference": {
                        "text": "Rest, hydrate, see a doctor if it lasts > 10 days.",
                        "method": "synthesis",
                        "answer": None,
                        "details": {"order": [0, 1, 2, 3]},
                    },
                    "rewards": rewards,
                    "reward_details": [
                        {
                            "score": r,
                            "verdicts": _verdicts(pat),
                            "rubric": RUBRIC,
                            "rubric_status": "ok",
                        }
                        for r, pat in zip(rewards, patterns[:g], strict=True)
                    ],
                    "advantages": [(r - mu) / sd for r in rewards],
                    "unknown_future_key": {"anything": [1, "two"]},
                }
                f.write(json.dumps(rec) + "\n")
    ckpt = root / "checkpoints" / "step-000008"
    ckpt.mkdir(parents=True)
    (ckpt / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    return root


@pytest.fixture
def train_run(tmp_path) -> Path:
    return make_train_run(tmp_path / "train-run")


def _keep(path: Path, name: str) -> None:
    out = os.environ.get("CAT_REPORT_ARTIFACTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(out) / name)


# ------------------------------------------------------------------------------ content


def test_evaluate_report_has_sections_table_plots_and_prompts(eval_run):
    path = write_report(eval_run)
    assert path == eval_run / "report.html"
    _keep(path, "evaluate-report.html")
    page = path.read_text()
    for sid in ("evaluation", "plots", "samples", "log", "config", "files"):
        assert f'<section id="{sid}">' in page
    assert '<table class="scores">' in page
    for label in ("single", "majority", "minppl", "synthesis"):
        assert f"<td>{label}</td>" in page
    assert "95% CI" in page  # the pipeline's default confidence
    assert page.count('src="data:image/png;base64,') >= 3  # scores, correct/prompt, lengths
    assert page.count('<details class="prompt"') == 3
    assert "status" in page and "completed" in page
    assert "name: toy-eval" in page  # the config, verbatim


def test_model_text_is_escaped_and_page_is_self_contained(eval_run, train_run):
    for run in (eval_run, train_run):
        page = render_report(run)
        assert "<script" not in page
        assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in page
        assert "<link" not in page and 'src="http' not in page and "url(" not in page
    assert "&lt;b&gt;bold?&lt;/b&gt;" in render_report(eval_run)  # prompt text too


def test_disagreeing_rollouts_are_highlighted(eval_run):
    records = [json.loads(x) for x in (eval_run / "records.jsonl").read_text().splitlines()]
    view = prompt_view(records[2])  # gold 5/2; rollouts 4, 4, 2.5; synthesis answers 4
    assert [r.disagrees for r in view.rollouts] == [False, False, True]
    assert [r.correct for r in view.rollouts] == [False, False, True]
    assert view.references[0].label == "single"
    page = render_report(eval_run)
    assert page.count('class="rollout disagree') == 3  # the "2.5" rollout of every prompt
    assert page.count('class="rollout wrong"') == 4  # "4" is wrong for b and c, agreeing with s
    assert "answer differs from reference" in page


def test_train_report_plots_rubric_verdicts_and_eval_table(train_run):
    page = render_report(train_run)
    for title in (
        "Reward",
        "KL to the reference",
        "Completion lengths",
        "Accuracy and evaluation scores",
        "Step time",
        "Other metrics",
    ):
        assert f"<b>{title}</b>" in page
    assert page.count('src="data:image/png;base64,') == 6
    assert "Latest evaluation, at step 12" in page and "<td>synthesis</td>" in page
    assert '<table class="rubric">' in page
    for cls in ("met-yes", "met-no", "met-none"):
        assert f'class="{cls}"' in page
    assert "advantage +" in page and "advantage -" in page
    assert "reward below group best" in page
    assert "1 checkpoint(s): step-000008" in page
    assert "metrics.jsonl: 1 line(s) skipped" in page  # the cut line is reported, not fatal
    assert "rubric fallback" in page  # a warning from the log


def test_train_records_are_sampled_across_steps(train_run):
    run = load_run(train_run, max_prompts=6, max_steps=3)
    assert run.n_records == 24 and run.record_steps == list(range(1, 13))
    steps = [r["step"] for r in run.records]
    assert len(run.records) == 6 and steps[0] == 1 and steps[-1] == 12 and len(set(steps)) == 3


def test_view_rubric_verdicts_and_advantages(train_run):
    rec = json.loads((train_run / "records.jsonl").read_text().splitlines()[0])
    view = prompt_view(rec)
    assert [c for c, _ in view.rubric] == RUBRIC
    assert [v.met for v in view.rollouts[1].verdicts] == [True, False, True, None, True]
    assert view.rollouts[0].reward == 1.0 and view.rollouts[2].reward == 0.0
    assert view.rollouts[0].advantage > 0 > view.rollouts[2].advantage
    assert [r.disagrees for r in view.rollouts] == [False, True, True, True]


def test_view_tolerates_other_layouts():
    view = prompt_view(
        {
            "prompt": "Just a string prompt",
            "rollouts": ["plain text", {"completion": "dict text", "token_ids": [1, 2, 3]}],
            "rewards": {"values": [1.0, 0.0], "details": [{"match": True}, {"match": False}]},
            "references": [{"text": "ref", "method": "majority", "answer": "7"}],
            "step": "3",
            "extra": object(),
        }
    )
    assert view.messages == [("user", "Just a string prompt")] and view.step == 3
    assert [r.text for r in view.rollouts] == ["plain text", "dict text"]
    assert view.rollouts[1].tokens == 3
    assert [r.disagrees for r in view.rollouts] == [False, True]
    assert view.references[0].label == "majority"
    empty = prompt_view({})
    assert empty.rollouts == [] and empty.references == [] and empty.prompt_id == "?"


def test_missing_files_are_reported_not_fatal(tmp_path):
    page = write_report(tmp_path).read_text()
    for text in (
        "No config.yaml in this run directory.",
        "No records.jsonl in this run directory",
        "No metrics.jsonl in this run directory.",
        "No log.jsonl in this run directory.",
        "Nothing to plot",
        "No evaluation results",
    ):
        assert text in page
    (tmp_path / "metrics.json").write_text("[1, 2")
    (tmp_path / "records.jsonl").write_text('{"rollouts": 5}\n[1]\n')
    page = render_report(tmp_path)
    assert "metrics.json: not valid JSON" in page and "records.jsonl: 1 line(s) skipped" in page
    with pytest.raises(FileNotFoundError):
        write_report(tmp_path / "nope")


def test_write_report_to_another_path(eval_run, tmp_path):
    out = write_report(eval_run, tmp_path / "sub" / "r.html", max_prompts=1)
    assert out.read_text().count('<details class="prompt"') == 1
    assert not list(out.parent.glob(".report-*"))  # the temp file was renamed away


# ------------------------------------------------------------------------------ headless Chromium


class _Dom(HTMLParser):
    """Counts what the browser's DOM holds: PNG images, elements by class, script elements."""

    def __init__(self) -> None:
        super().__init__()
        self.images = 0
        self.scripts = 0
        self.classes: dict[str, int] = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img" and (a.get("src") or "").startswith("data:image/png;base64,"):
            self.images += 1
        if tag == "script":
            self.scripts += 1
        for cls in (a.get("class") or "").split():
            self.classes[cls] = self.classes.get(cls, 0) + 1


def _chromium(page: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        CHROMIUM or "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp / 'profile'}",
        *args,
        page.resolve().as_uri(),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=True)


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless browser test needs Debian chromium: apt-get install -y chromium",
)
@pytest.mark.parametrize("kind", ["evaluate", "train"])
def test_report_renders_in_headless_chromium(kind, eval_run, tmp_path):
    run = eval_run if kind == "evaluate" else make_train_run(tmp_path / "run")
    page = write_report(run)
    dom = _Dom()
    dom.feed(_chromium(page, tmp_path, "--dump-dom").stdout)
    assert dom.scripts == 0  # the injected <script> stayed text
    assert dom.images >= (3 if kind == "evaluate" else 6)
    assert dom.classes.get("prompt", 0) >= 1
    assert dom.classes.get("rollout", 0) >= 3 and dom.classes.get("disagree", 0) >= 1
    assert dom.classes.get("ref", 0) >= 1
    if kind == "evaluate":
        assert dom.classes.get("scores") == 1
        assert dom.classes.get("good", 0) + dom.classes.get("bad", 0) >= 3  # scores, correctness
    else:
        assert dom.classes.get("rubric", 0) >= 1 and dom.classes.get("met-no", 0) >= 1
    shot = tmp_path / f"{kind}.png"
    _chromium(
        page, tmp_path, f"--screenshot={shot}", "--window-size=1280,2600", "--hide-scrollbars"
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    _keep(shot, f"{kind}-report.png")
    _keep(page, f"{kind}-report.html")
