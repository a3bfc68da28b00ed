"""``report -o`` and ``compare -o`` write only to a new path or over a regular file (issue 23):
a page replaces what is at its path, so a device, a FIFO, a folder or a link there is refused."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cat_framework.errors import OutputError
from cat_framework.report import write_report
from cat_framework.report.compare_page import write_compare
from tests.report.fixture_runs import make_eval_run


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_eval_run(tmp_path_factory.mktemp("eval"))


def _device(path: Path) -> str:
    try:  # the /dev/null device (1, 3): only root may make one
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("making a device node needs root")
    return "a device"


def _fifo(path: Path) -> str:
    os.mkfifo(path)
    return r"a named pipe \(FIFO\)"


def _folder(path: Path) -> str:
    (path / "report.html").mkdir(parents=True)  # a folder gets report.html inside: a folder too
    (path / "compare.html").mkdir()
    return "a directory"


def _link(path: Path) -> str:
    path.symlink_to(path.parent / "elsewhere.html")
    (path.parent / "elsewhere.html").write_text("a user's page")
    return "a symbolic link"


@pytest.mark.parametrize("make", [_device, _fifo, _folder, _link])
@pytest.mark.parametrize("write", [write_report, write_compare])
def test_output_onto_anything_but_a_regular_file_is_refused(run, tmp_path, make, write):
    target = tmp_path / "out"
    kind = make(target)
    before = os.lstat(target)
    with pytest.raises(OutputError, match=rf"is {kind}, not a regular file.*-o/--output"):
        write(run, target) if write is write_report else write([run], target)
    after = os.lstat(target)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)  # left as it was


@pytest.mark.parametrize("write", [write_report, write_compare])
def test_output_to_a_new_path_or_over_a_regular_file_is_written(run, tmp_path, write):
    for target in (tmp_path / "new.html", tmp_path / "new.html"):  # new, then a regular file
        path = write(run, target) if write is write_report else write([run], target)
        assert path == target and "<html" in target.read_text()
