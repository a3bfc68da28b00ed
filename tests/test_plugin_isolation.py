"""A plugin's mistakes stay its own: exits, prints and clashes at load; blame at run time."""

from __future__ import annotations

import sys

import pytest

from cat_framework import PluginLoadError, load_plugins
from cat_framework.plugin_guard import capture_stdout, find_culprit

GOOD = """
from cat_framework import Aggregator, Reference, hookimpl

class G(Aggregator):
    name = "good_vote"
    def aggregate(self, groups):
        return [Reference(text="", method=self.name) for _ in groups]

@hookimpl
def register_aggregators(register):
    register(G)
"""

#: a package-less plugin whose aggregator fails inside a helper module of the same distribution
BOOM = """
from cat_framework import Aggregator, Dataset, Reference, hookimpl
import cat_boom_helpers

class Calm(Aggregator):
    name = "calm_vote"
    def aggregate(self, groups):
        return []

class Boom(Aggregator):
    name = "boom_vote"
    def aggregate(self, groups):
        return cat_boom_helpers.explode(len(groups))

class Quitter(Dataset):
    name = "quitter"
    def load(self):
        import sys
        sys.exit(4)

@hookimpl
def register_aggregators(register):
    register(Calm)
    register(Boom)

@hookimpl
def register_datasets(register):
    register(Quitter)
"""

HELPERS = """
def explode(n):
    raise ValueError(f"cannot vote on {n} groups")
"""


def record(plugins, name):
    return next(r for r in plugins.records if r.name == name)


def test_plugin_calling_sys_exit_at_import_is_failed_not_fatal(fake_dist):
    fake_dist("cat-quit", {"quit": "cat_quit"}, {"cat_quit": "import sys\nsys.exit(3)\n"})
    fake_dist("cat-good", {"good": "cat_good"}, {"cat_good": GOOD})
    plugins = load_plugins()
    quit_rec = record(plugins, "quit")
    assert quit_rec.status == "failed"
    assert quit_rec.errors == ["import failed: called sys.exit(3)"]
    assert record(plugins, "good").status == "loaded"
    assert "good_vote" in plugins.registry("aggregator")


def test_sys_exit_at_import_is_fatal_in_strict_mode_with_a_clear_message(fake_dist, monkeypatch):
    fake_dist("cat-quit", {"quit": "cat_quit"}, {"cat_quit": "import sys\nsys.exit('bye')\n"})
    monkeypatch.setenv("CAT_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError, match=r"plugin 'quit': import failed: called sys.exit\("):
        load_plugins()


def test_sys_exit_in_a_register_hook_is_recorded(fake_dist):
    source = GOOD.replace("    register(G)", "    register(G)\n    raise SystemExit(5)")
    fake_dist("cat-hookquit", {"hookquit": "cat_hookquit"}, {"cat_hookquit": source})
    plugins = load_plugins()
    rec = record(plugins, "hookquit")
    assert rec.status == "partial"
    assert rec.errors == ["register_aggregators failed: called sys.exit(5)"]
    assert "good_vote" in plugins.registry("aggregator")


def test_what_a_plugin_prints_while_loading_is_kept_off_stdout(fake_dist, capfd):
    source = (
        "import os, sys\nprint('hello from the plugin')\n"
        "sys.__stdout__.write('via sys.__stdout__\\n')\nos.write(1, b'raw fd write\\n')\n"
        + GOOD.replace("    register(G)", "    print('registering')\n    register(G)")
    )
    fake_dist("cat-chatty", {"chatty": "cat_chatty"}, {"cat_chatty": source})
    plugins = load_plugins()
    out, _ = capfd.readouterr()
    assert out == ""
    rec = record(plugins, "chatty")
    assert rec.status == "loaded"
    for text in ("hello from the plugin", "via sys.__stdout__", "raw fd write", "registering"):
        assert text in rec.output
    assert rec.to_dict()["output"] == rec.output


def test_capture_restores_stdout_after_an_exception(capfd):
    with pytest.raises(RuntimeError), capture_stdout() as printed:
        print("inside")
        raise RuntimeError("x")
    print("after")
    assert printed.text == "inside\n"
    assert capfd.readouterr().out == "after\n"


def test_clash_keeps_the_plugins_other_components(fake_dist):
    source = GOOD.replace('name = "good_vote"', 'name = "single"').replace(
        "    register(G)",
        '    register(G)\n    register(type("Mine", (G,), {"name": "mine_vote"}))',
    )
    fake_dist("cat-clash", {"clash": "cat_clash"}, {"cat_clash": source})
    plugins = load_plugins()
    rec = record(plugins, "clash")
    assert rec.status == "partial"
    assert len(rec.errors) == 1 and "aggregator 'single' is registered twice" in rec.errors[0]
    assert rec.components == {"aggregator": ["mine_vote"]}
    assert plugins.registry("aggregator").entry("mine_vote").source.distribution == "cat-clash"
    assert plugins.registry("aggregator").entry("single").source.plugin != "clash"


def _boom_plugins(fake_dist):
    fake_dist(
        "cat-boom",
        {"boom": "cat_boom"},
        {"cat_boom": BOOM, "cat_boom_helpers": HELPERS},
        version="2.3",
    )
    return load_plugins()


def test_exception_in_a_plugin_component_names_plugin_and_distribution(fake_dist):
    plugins = _boom_plugins(fake_dist)
    with pytest.raises(ValueError) as info:
        plugins.get("aggregator", "boom_vote")().aggregate([1, 2])
    culprit = plugins.blame(info.value)
    assert culprit is not None and not culprit.builtin
    assert (culprit.distribution, culprit.version) == ("cat-boom", "2.3")
    assert (culprit.kind, culprit.component) == ("aggregator", "boom_vote")
    message = culprit.message(info.value)
    assert message.startswith(
        "error in plugin cat-boom (aggregator boom_vote): ValueError: cannot vote on 2 groups"
    )
    assert "cat-boom 2.3" in message and "not by cat-framework" in message


def test_blame_follows_wrapped_exceptions_and_sys_exit(fake_dist):
    plugins = _boom_plugins(fake_dist)
    try:
        try:
            plugins.get("aggregator", "boom_vote")().aggregate([])
        except ValueError as exc:
            raise RuntimeError("step 3 failed") from exc
    except RuntimeError as wrapped:
        culprit = plugins.blame(wrapped)
    assert culprit is not None and culprit.component == "boom_vote"
    with pytest.raises(SystemExit) as info:
        plugins.get("dataset", "quitter")().load()
    culprit = plugins.blame(info.value)
    assert culprit is not None and (culprit.kind, culprit.component) == ("dataset", "quitter")
    assert "called sys.exit(4)" in culprit.message(info.value)


def test_core_and_builtin_errors_are_not_blamed_on_third_parties(fake_dist):
    plugins = _boom_plugins(fake_dist)
    with pytest.raises(ValueError) as core:
        plugins.registry("aggregator").add(3, "x:Y", None)  # type: ignore[arg-type]
    assert plugins.blame(core.value) is None
    single = plugins.get("aggregator", "single")
    with pytest.raises(AttributeError) as builtin:
        single().aggregate([object()])
    culprit = plugins.blame(builtin.value)
    assert culprit is not None and culprit.builtin
    assert (culprit.plugin, culprit.component) == ("cat_plugins.aggregators", "single")
    assert "please report it to cat-framework" in culprit.message(builtin.value)
    assert find_culprit(builtin.value, None).builtin  # before plugins load: still "built-in"


def test_blame_without_plugin_code_on_the_stack_is_none():
    try:
        sys.exit(2)
    except SystemExit as exc:
        assert find_culprit(exc, load_plugins(entry_points=False)) is None
