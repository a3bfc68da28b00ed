"""Shared fixtures: isolated plugin managers and throw-away fake distributions."""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from cat_framework.plugins import Plugins, load_plugins

REPO = Path(__file__).resolve().parent.parent
#: verbatim slices of real data sets, laid out like a ``$CAT_DATA_DIR`` (provenance: its README)
DATASETS = REPO / "tests" / "data" / "datasets"

pytest_plugins = ["tests.helpers.training_fixtures"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fail-on-skip",
        action="store_true",
        help="exit non-zero if any test is skipped (CI: a clone alone must hold what they need)",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--fail-on-skip"):
        config.pluginmanager.register(FailOnSkip(), "fail-on-skip")


class FailOnSkip:
    """``--fail-on-skip``: every skip is listed at the end and the run fails."""

    def __init__(self) -> None:
        self.skips: list[str] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
            self.skips.append(f"{report.nodeid}: {reason}")

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.skips and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.skips:
            terminalreporter.write_line(f"--fail-on-skip: {len(self.skips)} skipped", red=True)
            for line in self.skips:
                terminalreporter.write_line(f"  {line}")


@pytest.fixture
def make_plugins() -> Callable[..., Plugins]:
    """Build a plugin manager without third-party entry points (plus any extra plugins)."""

    def make(*extra: tuple[str, object], strict: bool = False) -> Plugins:
        return load_plugins(entry_points=False, strict=strict, extra=extra)

    return make


@pytest.fixture
def fake_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Create an installed-looking distribution (dist-info + module) on ``sys.path``.

    ``fake_dist("cat-x", {"x": "cat_x"}, {"cat_x": "<module source>"})``
    """
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    created: list[str] = []

    def make(
        dist: str, entry_points: dict[str, str], modules: dict[str, str], version: str = "1.0"
    ) -> Path:
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        eps = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
        (info / "entry_points.txt").write_text(f"[cat_framework]\n{eps}\n")
        for name, source in modules.items():
            (site / f"{name}.py").write_text(textwrap.dedent(source))
            created.append(name)
        importlib.invalidate_caches()
        return info

    yield make
    for name in created:
        sys.modules.pop(name, None)
