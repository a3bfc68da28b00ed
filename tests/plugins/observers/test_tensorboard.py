"""The TensorBoard observer, driven through the real plugin manager and read back from disk."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import structlog
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import cat_plugins.observers.tensorboard as tb
from cat_framework import hookimpl, load_plugins
from cat_framework.hookspecs import Register
from cat_framework.plugins import Plugins

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def fresh_observer(monkeypatch: pytest.MonkeyPatch) -> Iterator[tb.TensorBoardObserver]:
    """A clean observer (no writers, not yet warned) and no switch set, for every test."""
    monkeypatch.delenv("CAT_TENSORBOARD", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    observer = tb.TensorBoardObserver()
    monkeypatch.setattr(tb, "_OBSERVER", observer)
    yield observer
    observer.close_all()


@pytest.fixture
def plugins() -> Plugins:
    return load_plugins(entry_points=False, strict=True)


def run(
    plugins: Plugins, run_dir: Path, steps: dict[int, dict[str, object]], status: str = "completed"
) -> None:
    plugins.notify("on_run_start", run_dir=str(run_dir), config={"name": "toy", "seed": 1})
    for step, metrics in steps.items():
        plugins.notify("on_step_end", run_dir=str(run_dir), step=step, metrics=metrics)
    plugins.notify("on_run_end", run_dir=str(run_dir), summary={}, status=status)


def events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return acc


def scalars(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def text(acc: EventAccumulator, tag: str) -> list[tuple[int, str]]:
    return [
        (e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(f"{tag}/text_summary")
    ]


def test_registered_as_builtin_observer(plugins: Plugins) -> None:
    rec = next(r for r in plugins.records if r.name == "cat_plugins.observers")
    assert rec.status == "loaded"
    assert rec.hooks == ["on_run_end", "on_run_start", "on_step_end"]


def test_scalars_steps_and_status_are_written(plugins: Plugins, tmp_path: Path) -> None:
    run(
        plugins,
        tmp_path,
        {1: {"reward/mean": 0.25, "kl": 0.01}, 2: {"reward/mean": 0.5, "kl": 0.02}},
    )
    acc = events(tmp_path)
    assert set(acc.Tags()["scalars"]) == {"reward/mean", "kl"}
    assert scalars(acc, "reward/mean") == [(1, 0.25), (2, 0.5)]
    assert [s for s, _ in scalars(acc, "kl")] == [1, 2]
    assert [v for _, v in scalars(acc, "kl")] == pytest.approx([0.01, 0.02])
    assert text(acc, "run/status") == [(2, "completed")]
    ((step, config),) = text(acc, "run/config")
    assert step == 0 and '"name": "toy"' in config


def test_non_finite_and_non_numeric_values_are_skipped(plugins: Plugins, tmp_path: Path) -> None:
    metrics: dict[str, object] = {
        "ok": 1.5,
        "int": 3,
        "flag": True,
        "np": np.float32(0.5),
        "np_int": np.int64(7),
        "tensor": torch.tensor(2.0),
        "nan": math.nan,
        "np_nan": np.float64("nan"),
        "inf": math.inf,
        "str": "1.0",
        "none": None,
        "list": [1.0],
        "vector": torch.tensor([1.0, 2.0]),
    }
    run(plugins, tmp_path, {4: metrics})
    acc = events(tmp_path)
    assert set(acc.Tags()["scalars"]) == {"ok", "int", "flag", "np", "np_int", "tensor"}
    assert scalars(acc, "flag") == [(4, 1.0)]
    assert scalars(acc, "np_int") == [(4, 7.0)]
    assert scalars(acc, "tensor") == [(4, 2.0)]


def test_interleaved_runs_get_their_own_writers(plugins: Plugins, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for run_dir in (a, b):
        plugins.notify("on_run_start", run_dir=str(run_dir), config={})
    plugins.notify("on_step_end", run_dir=str(a), step=1, metrics={"loss": 1.0})
    plugins.notify("on_step_end", run_dir=str(b), step=1, metrics={"loss": 10.0})
    plugins.notify("on_step_end", run_dir=str(a), step=2, metrics={"loss": 2.0})
    plugins.notify("on_run_end", run_dir=str(a), summary={}, status="completed")
    plugins.notify("on_step_end", run_dir=str(b), step=2, metrics={"loss": 20.0})
    plugins.notify("on_run_end", run_dir=str(b), summary={}, status="failed")
    assert scalars(events(a), "loss") == [(1, 1.0), (2, 2.0)]
    assert scalars(events(b), "loss") == [(1, 10.0), (2, 20.0)]
    assert text(events(b), "run/status") == [(2, "failed")]


def test_hooks_for_an_unknown_run_are_no_ops(plugins: Plugins, tmp_path: Path) -> None:
    plugins.notify("on_step_end", run_dir=str(tmp_path), step=1, metrics={"loss": 1.0})
    plugins.notify("on_run_end", run_dir=str(tmp_path), summary={}, status="completed")
    assert not (tmp_path / "tensorboard").exists()
    run(plugins, tmp_path, {1: {"loss": 1.0}})
    plugins.notify("on_run_end", run_dir=str(tmp_path), summary={}, status="completed")  # twice
    assert scalars(events(tmp_path), "loss") == [(1, 1.0)]


def test_missing_run_dir_is_not_created(plugins: Plugins, tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    run(plugins, missing, {1: {"loss": 1.0}})
    assert not missing.exists()


@pytest.mark.parametrize("value", ["0", "false", "OFF", "no"])
def test_env_switch_disables(
    plugins: Plugins, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("CAT_TENSORBOARD", value)
    run(plugins, tmp_path, {1: {"loss": 1.0}})
    assert not (tmp_path / "tensorboard").exists()


def test_only_rank_zero_writes(
    plugins: Plugins, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANK", "1")
    run(plugins, tmp_path, {1: {"loss": 1.0}})
    assert not (tmp_path / "tensorboard").exists()
    monkeypatch.setenv("RANK", "0")
    run(plugins, tmp_path, {1: {"loss": 1.0}})
    assert scalars(events(tmp_path), "loss") == [(1, 1.0)]


def test_missing_tensorboard_says_so_once_and_runs_go_on(
    plugins: Plugins, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now fails
    with structlog.testing.capture_logs() as logs:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            run(plugins, tmp_path / name, {1: {"loss": 1.0}})  # strict: any raise would fail
    notes = [e for e in logs if "tensorboard" in e["event"].lower()]
    assert len(notes) == 1 and notes[0]["log_level"] == "info"  # optional: not a warning
    assert "pip install 'cat-framework[tensorboard]'" in notes[0]["event"]
    assert not (tmp_path / "a" / "tensorboard").exists()


def test_importing_the_plugin_does_not_import_torch() -> None:
    code = "import sys, cat_plugins.observers; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


class _Echo:
    @hookimpl
    def register_backends(self, register: Register) -> None:
        from tests.helpers.echo_backend import EchoBackend

        register(EchoBackend)


def test_a_real_evaluate_run_writes_eval_metrics_at_step_0(tmp_path: Path) -> None:
    from cat_framework.pipeline import load_pipeline
    from cat_framework.runner import run_pipeline

    plugins = load_plugins(entry_points=False, strict=True, extra=[("echo", _Echo())])
    data = tmp_path / "toy.jsonl"
    data.write_text(json.dumps({"id": "a", "question": "2+2?", "answer": "4"}) + "\n")
    pipe = tmp_path / "p.yaml"
    pipe.write_text(
        textwrap.dedent(f"""\
            name: toy-eval
            mode: evaluate
            models:
              policy: {{backend: echo, replies: ["\\\\boxed{{4}}"]}}
            data:
              eval: {{dataset: jsonl, path: "{data}", answer_field: answer, id_field: id}}
            rollouts: {{n: 2, max_new_tokens: 8}}
            eval: {{aggregators: [majority], bootstrap: 10}}
        """)
    )
    run_dir = tmp_path / "run"
    run_pipeline(load_pipeline(pipe, plugins=plugins), plugins=plugins, run_dir=str(run_dir))
    acc = events(run_dir)
    assert scalars(acc, "eval/majority/score") == [(0, 1.0)]
    assert text(acc, "run/status") == [(0, "completed")]
