"""A run touches only its own files (issue 23): ``--overwrite`` deletes only inside a folder a
run marked as its own, and nothing a run writes, appends to or deletes is reached through a
symbolic link to somewhere else."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cat_framework import hookimpl, load_plugins
from cat_framework.engine.checkpoint import CHECKPOINTS, tidy_checkpoints
from cat_framework.errors import CatError
from cat_framework.logs import attach_run_log, detach_run_log
from cat_framework.pipeline import load_pipeline
from cat_framework.rundir import MARKER, check_fresh, holds_run
from cat_framework.runner import new_run_dir
from tests.engine.test_run_directories import evaluate_yaml, start
from tests.helpers.echo_backend import EchoBackend


class EchoPlugin:
    @hookimpl
    def register_backends(self, register):
        register(EchoBackend)


@pytest.fixture
def plugins():
    return load_plugins(entry_points=False, extra=[("echo", EchoPlugin())])


def audit_folder(root: Path) -> dict[str, bytes]:
    """The audit's folder: a config.yaml beside a user's own files, and no run."""
    files = {
        "config.yaml": b"name: my experiment\n",
        "checkpoints/precious.ckpt": b"weights",
        "final/paper.tex": b"\\documentclass{article}\n",
    }
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return files


def contents(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_with_only_a_config_is_no_run_and_keeps_every_file(tmp_path, overwrite):
    files = audit_folder(tmp_path)
    assert not holds_run(tmp_path)
    with pytest.raises(CatError, match="holds no run") as err:
        check_fresh(tmp_path, overwrite=overwrite)
    assert "already holds a run" not in str(err.value)
    assert contents(tmp_path) == files


def test_a_run_is_marked_and_overwrite_removes_only_what_it_wrote(tmp_path, plugins, toy_data):
    run_dir = tmp_path / "run"
    start(tmp_path, evaluate_yaml(toy_data), plugins, run_dir=str(run_dir))
    assert json.loads((run_dir / MARKER).read_text())["format"] == "cat-framework run"
    assert holds_run(run_dir)
    (run_dir / "notes.txt").write_text("mine")
    with pytest.raises(CatError, match="already holds a run"):
        start(tmp_path, evaluate_yaml(toy_data), plugins, run_dir=str(run_dir))
    start(tmp_path, evaluate_yaml(toy_data), plugins, run_dir=str(run_dir), overwrite=True)
    assert (run_dir / "notes.txt").read_text() == "mine" and holds_run(run_dir)


def test_a_run_written_before_markers_is_still_a_run(tmp_path):
    (tmp_path / "config.yaml").write_text("name: old\n")
    (tmp_path / "log.jsonl").write_text('{"run_dir": "x", "event": "run start"}\n')
    (tmp_path / "records.jsonl").write_text("{}\n")
    assert holds_run(tmp_path)
    check_fresh(tmp_path, overwrite=True)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "config.yaml").write_text("name: old\n")
    (tmp_path / "log.jsonl").write_text('{"event": "something else"}\n')
    assert not holds_run(tmp_path)  # a log.jsonl of another tool does not make a run


@pytest.mark.parametrize("name", ["checkpoints", "final", "tensorboard", "log.jsonl", "eval"])
def test_resume_refuses_a_link_and_touches_nothing_outside(tmp_path, plugins, toy_data, name):
    run_dir = tmp_path / "run"
    start(tmp_path, evaluate_yaml(toy_data), plugins, run_dir=str(run_dir))
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / name
    if "." in name:
        target.write_text("a user's file\n")
    else:
        for inner in (".tmp-step-000001/x", ".trash-step-000002/y", "step-000003/z"):
            (target / inner).parent.mkdir(parents=True)
            (target / inner).write_text("a user's file")
    before = contents(outside)
    if (run_dir / name).is_dir():
        shutil.rmtree(run_dir / name)
    (run_dir / name).unlink(missing_ok=True)
    (run_dir / name).symlink_to(target)
    with pytest.raises(CatError, match=f"{run_dir / name} is a symbolic link") as err:
        start(tmp_path, evaluate_yaml(toy_data), plugins, resume=str(run_dir))
    assert str(target) in str(err.value)
    assert contents(outside) == before


def test_overwrite_refuses_a_link_inside_a_run_folder_before_deleting(tmp_path):
    (tmp_path / "config.yaml").write_text("name: old\n")
    (tmp_path / "log.jsonl").write_text('{"event": "run start"}\n')
    outside = tmp_path.parent / f"{tmp_path.name}-outside.safetensors"
    outside.write_bytes(b"a user's weights")
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "model.safetensors").symlink_to(outside)
    with pytest.raises(CatError, match=r"final/model\.safetensors is a symbolic link"):
        check_fresh(tmp_path, overwrite=True)
    assert (tmp_path / "log.jsonl").exists()  # refused before anything was deleted
    assert outside.read_bytes() == b"a user's weights"


def test_tidying_checkpoints_never_deletes_through_a_link(tmp_path):
    outside = tmp_path / "outside"
    (outside / ".tmp-step-000001").mkdir(parents=True)
    (outside / ".tmp-step-000001" / "precious").write_text("mine")
    run = tmp_path / "run"
    run.mkdir()
    (run / CHECKPOINTS).symlink_to(outside)
    with pytest.raises(CatError, match="checkpoints is a symbolic link"):
        tidy_checkpoints(run)
    assert (outside / ".tmp-step-000001" / "precious").read_text() == "mine"


def test_the_run_log_is_never_appended_through_a_link(tmp_path):
    outside = tmp_path / "bashrc"
    outside.write_text("export A=1\n")
    (tmp_path / "log.jsonl").symlink_to(outside)
    try:
        with pytest.raises(CatError, match=r"log\.jsonl is a symbolic link"):
            attach_run_log(tmp_path / "log.jsonl")
    finally:
        detach_run_log()
    assert outside.read_text() == "export A=1\n"


def test_a_long_experiment_name_still_makes_a_valid_folder_name(tmp_path, toy_data, plugins):
    (tmp_path / "p.yaml").write_text(evaluate_yaml(toy_data).replace("rundirs", "x" * 300))
    path = new_run_dir(load_pipeline(tmp_path / "p.yaml", plugins=plugins), None)
    assert len(path.name.encode()) <= 255 and path.name.startswith("xxx")


def test_a_fifo_where_the_run_keeps_a_file_is_refused(tmp_path):
    """Reading or appending to a FIFO blocks forever: a resume refuses it, naming the file."""
    import os

    from cat_framework.rundir import check_run_links

    os.mkfifo(tmp_path / "records.jsonl")
    with pytest.raises(CatError, match=r"records\.jsonl is not a regular file"):
        check_run_links(tmp_path)


def test_a_deeply_nested_marker_or_log_is_no_run_and_no_crash(tmp_path):
    (tmp_path / MARKER).write_text("[" * 60_000)
    (tmp_path / "config.yaml").write_text("name: x\n")
    (tmp_path / "log.jsonl").write_text("[" * 60_000 + "\n")
    assert not holds_run(tmp_path)
