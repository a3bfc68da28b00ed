"""Hostile run files met by ``--resume``: each gets one precise message and, where an older valid
checkpoint exists, a fallback to it. Counts are range-checked before use, nesting deeper than any
run writes is refused (never a bare RecursionError), FIFOs and devices are refused before they
are read, and records of a newer schema are refused instead of being kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from structlog.testing import capture_logs

from cat_framework.engine.checkpoint import (
    check_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    load_extra,
    truncate_jsonl,
)
from cat_framework.engine.training_run import resume_point
from cat_framework.errors import CatError
from tests.engine.test_checkpoint import make_training, one_process, save, train

DEEP = "[" * 3000 + "]" * 3000


def two_checkpoints(run: Path) -> Path:
    """Steps 1 and 2 of a tiny model; returns step 2's directory."""
    training = make_training()
    save(run, 1, training)
    train(*training, 1)
    step = save(run, 2, training)
    assert step is not None
    return step


def edit_state(path: Path, /, **changes: object) -> None:
    state = json.loads((path / "state.json").read_text())
    (path / "state.json").write_text(json.dumps({**state, **changes}))


def falls_back(run: Path, reason: str) -> None:
    """The newest checkpoint is skipped with ``reason``; the one before it is chosen and loads."""
    with capture_logs() as logs:
        ckpt = latest_checkpoint(run)
    assert ckpt is not None and ckpt.step == 1
    (skip,) = [e for e in logs if e["event"] == "skipping an unusable checkpoint"]
    assert skip["checkpoint"].endswith("step-000002")
    assert reason in skip["reason"], skip["reason"]
    assert len(skip["reason"]) < 500
    load_checkpoint(ckpt, *make_training(), process_index=0)


@pytest.mark.timeout(60)  # unchecked, 10**12 builds 10^12 file names (the audit's 24 GB)
@pytest.mark.parametrize(
    "processes", [10**12, 65_537, 0, True, 2.0, "2"], ids=["1e12", "65537", "0", "true", "2.0", "2"]
)
def test_processes_is_range_checked_before_use(tmp_path, processes):
    edit_state(two_checkpoints(tmp_path), processes=processes, sharded=True)
    falls_back(tmp_path, "has an invalid 'processes'")


@pytest.mark.parametrize(
    ("field", "value"),
    [("step", True), ("sharded", "no"), ("extra", "pending-rollouts"), ("extra", ["../x"])],
    ids=["step", "sharded", "extra-not-a-list", "extra-not-a-slot-name"],
)
def test_state_json_fields_must_have_their_types(tmp_path, field, value):
    edit_state(two_checkpoints(tmp_path), **{field: value})
    falls_back(tmp_path, "state.json")


def _replace_with_fifo(file: Path) -> None:
    file.unlink()
    os.mkfifo(file)


def _replace_with_dev_zero(file: Path) -> None:
    file.unlink()
    file.symlink_to("/dev/zero")


#: ``latest_checkpoint`` in a child process: a FIFO opened by safetensors blocks while holding
#: the GIL, where no in-process timeout can fire
CHILD = """
import sys
from pathlib import Path
from structlog.testing import capture_logs
from cat_framework.engine.checkpoint import latest_checkpoint
with capture_logs() as logs:
    ckpt = latest_checkpoint(Path(sys.argv[1]))
print(ckpt.step)
print([e["reason"] for e in logs if e["event"] == "skipping an unusable checkpoint"])
"""


@pytest.mark.timeout(60)  # /dev/zero was read without end
@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("state.json", "a device, not a regular file"),
        ("rng-0.safetensors", "is not a regular file"),
    ],
)
def test_devices_are_refused_before_reading(tmp_path, name, reason):
    _replace_with_dev_zero(two_checkpoints(tmp_path) / name)
    falls_back(tmp_path, reason)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("state.json", "state.json cannot be read (a named pipe (FIFO), not a regular file)"),
        ("optimizer.safetensors", "optimizer.safetensors is not a regular file"),
        ("trainable.safetensors", "trainable.safetensors is not a regular file"),
    ],
)
def test_fifos_are_refused_before_they_block(tmp_path, name, reason):
    _replace_with_fifo(two_checkpoints(tmp_path) / name)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        child = subprocess.run(
            [sys.executable, "-c", CHILD, str(tmp_path)],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"reading a checkpoint whose {name} is a FIFO blocked")
    assert child.returncode == 0, child.stderr
    step, reasons = child.stdout.splitlines()
    assert step == "1" and reason in reasons


def test_deeply_nested_state_json_falls_back(tmp_path):
    step = two_checkpoints(tmp_path)
    (step / "state.json").write_text('{"step": 2, "x": ' + DEEP + "}")
    falls_back(tmp_path, "state.json is not readable JSON (nested deeper than 64 levels)")


def _rewrite_structure(file: Path, structure: str) -> None:
    tensors = load_file(str(file))
    save_file(tensors, str(file), metadata={"cat_state": structure})


@pytest.mark.parametrize(
    ("structure", "reason"),
    [
        (DEEP, "'cat_state' structure is not valid JSON (nested deeper than 64 levels)"),
        ('{"state": {"$items": 5}, "param_groups": []}', "'cat_state' structure is malformed"),
        ('{"$items": [[1, 2, 3]]}', "'cat_state' structure is malformed"),
        ('{"$items": [[[1], 2]]}', "'cat_state' structure is malformed"),
        ('{"$tuple": 7}', "'cat_state' structure is malformed"),
    ],
    ids=["deep", "items-not-a-list", "items-not-pairs", "unhashable-key", "tuple-not-a-list"],
)
def test_a_hostile_cat_state_falls_back(tmp_path, structure, reason):
    _rewrite_structure(two_checkpoints(tmp_path) / "optimizer.safetensors", structure)
    falls_back(tmp_path, f"optimizer.safetensors: its {reason}")


def test_a_checkpoint_marked_the_old_way_keeps_its_pending_rollouts(tmp_path):
    """Before the generic slots, state.json said ``"pending_rollouts": true``: such a checkpoint
    still resumes with its rollouts sampled ahead (same file), checked like any slot."""
    import cat_framework.engine.async_rollouts  # noqa: F401  (registers its old flag)

    path = save(tmp_path, 1, make_training())
    edit_state(path, pending_rollouts=True)
    (path / "pending-rollouts-0.json").write_text(json.dumps({"step": 2}))
    ckpt = check_checkpoint(path)
    assert ckpt.extra == ["pending-rollouts"]
    assert load_extra(ckpt, "pending-rollouts", 0)[0] == {"step": 2}
    (path / "pending-rollouts-0.json").unlink()
    with pytest.raises(CatError, match=r"pending-rollouts-0\.json is missing"):
        check_checkpoint(path)


def test_deeply_nested_pending_rollouts_fall_back(tmp_path):
    training = make_training()
    for step in (1, 2):
        path = save(tmp_path, step, training)
        edit_state(path, extra=["pending-rollouts"])
        (path / "pending-rollouts-0.json").write_text(json.dumps({"step": step + 1}))
    (path / "pending-rollouts-0.json").write_text(DEEP)
    falls_back(tmp_path, "pending-rollouts-0.json is not readable JSON (nested deeper than 64")
    # and read directly (a checkpoint chosen before the file was damaged): a precise error
    ckpt = check_checkpoint(tmp_path / "checkpoints" / "step-000001")
    (ckpt.path / "pending-rollouts-0.json").write_text(DEEP)
    with pytest.raises(CatError, match=r"pending-rollouts-0\.json cannot be read \(nested deeper"):
        load_extra(ckpt, "pending-rollouts", 0)


def test_a_deeply_nested_metrics_line_is_one_precise_error(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    before = '{"step": 1}\n{"step": 2, "x": ' + DEEP + '}\n{"step": 3}\n'
    metrics.write_text(before)
    with pytest.raises(CatError, match=r"metrics\.jsonl:2: not valid JSON \(nested deeper than"):
        truncate_jsonl(metrics, 1)
    assert metrics.read_text() == before  # untouched


RECORD = {"schema": 1, "mode": "train", "step": 1, "prompt_id": "0", "messages": []}


def test_a_train_resume_refuses_records_of_a_newer_schema(tmp_path):
    save(tmp_path, 1, make_training())
    records = tmp_path / "records.jsonl"
    rows = [RECORD, {**RECORD, "schema": 99}, {**RECORD, "step": 2}]
    records.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(CatError, match=r"records\.jsonl:2: record schema 99 is newer"):
        resume_point(tmp_path, str(tmp_path), one_process())
    records.write_text("".join(json.dumps(r) + "\n" for r in (RECORD, {**RECORD, "step": 2})))
    assert resume_point(tmp_path, str(tmp_path), one_process()).step == 1
    assert records.read_text() == json.dumps(RECORD) + "\n"  # step 2 is redone
