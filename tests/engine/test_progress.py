"""Progress: a bar with the current phase on a terminal; heartbeat log lines when piped."""

from __future__ import annotations

import io
import time

import pytest
from rich.console import Console

from cat_framework.engine import progress
from cat_framework.engine.progress import StepProgress, phase, track
from cat_framework.logs import configure_logging


@pytest.fixture
def logs():
    """Log lines go to a buffer (not a terminal), as when a run is piped."""
    buf = io.StringIO()
    configure_logging("info", stream=buf)
    yield buf
    configure_logging("info")


def piped() -> Console:
    return Console(file=io.StringIO(), force_terminal=False)


def test_a_piped_run_logs_a_heartbeat_naming_the_phase(logs):
    with StepProgress(3, interval=0.05, console=piped()) as bar:
        phase("rollouts")
        time.sleep(0.35)
        bar.update(1, {"reward/mean": 0.5, "loss": 0.25})
        phase("teacher")
        time.sleep(0.2)
    lines = logs.getvalue().splitlines()
    beats = [line for line in lines if "still working" in line]
    assert len(beats) >= 4, lines
    assert any("now=rollouts" in b and "done=0/3" in b for b in beats)
    assert any("now=teacher" in b and "done=1/3" in b for b in beats)
    assert any("step done" in line and "step=1/3" in line for line in lines)
    after = len(logs.getvalue())
    time.sleep(0.2)
    assert len(logs.getvalue()) == after, "the heartbeat outlives the run"
    assert progress._active == []


def test_the_default_heartbeat_is_under_30_seconds():
    assert 0 < progress.HEARTBEAT_S < 30


def test_no_display_no_thread_and_no_lines_when_disabled(logs):
    with StepProgress(2, enabled=False, interval=0.01, console=piped()) as bar:
        phase("rollouts")  # no-op: nothing is watching
        time.sleep(0.05)
        bar.update(1, {})
    assert logs.getvalue() == ""
    phase("rollouts")  # outside any display: a no-op, never an error


def test_a_terminal_shows_a_bar_with_the_phase():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    with StepProgress(2, console=console) as bar:
        bar.update(1, {"loss": 0.5})
        phase("update")
        assert bar._doing().startswith("update 0:0")
        bar._progress.refresh()
    text = out.getvalue()
    assert "train" in text and "1/2" in text and "update" in text and "loss=0.5" in text


def test_track_nested_in_a_run_is_shown_as_its_phase(logs):
    seen = []
    with StepProgress(2, interval=0.05, console=piped()) as bar:
        for _item in track(["a", "b"], "evaluate"):
            phase("rollouts")
            seen.append(bar._doing())
            time.sleep(0.12)
        assert bar._doing() == ""  # restored after the evaluation
    assert [s.rsplit(" ", 1)[0] for s in seen] == [
        "evaluate 0/2 · rollouts",
        "evaluate 1/2 · rollouts",
    ]
    assert "now='evaluate 1/2 · rollouts'" in logs.getvalue()


def test_track_alone_has_its_own_progress(logs):
    items = []
    for x in track([1, 2, 3], "evaluate", interval=0.05, console=piped()):
        assert progress._active and progress._active[-1].label == "evaluate"
        phase("rollouts")
        time.sleep(0.12)
        items.append(x)
    assert items == [1, 2, 3] and progress._active == []
    beats = [line for line in logs.getvalue().splitlines() if "still working" in line]
    assert any("on=evaluate" in b and "done=2/3" in b and "now=rollouts" in b for b in beats)


def test_on_a_terminal_log_lines_print_above_the_bar_then_go_back(logs):
    import structlog

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    log = structlog.get_logger("test")
    with StepProgress(2, console=console):
        log.info("evaluated", score=0.5)
    assert "evaluated" in out.getvalue() and "score=0.5" in out.getvalue()
    assert "evaluated" not in logs.getvalue()  # not written under the live region
    log.info("after the run")
    assert "after the run" in logs.getvalue() and "after the run" not in out.getvalue()
