"""Plugin loading: built-ins, guarded entry points, clashes, selection, strict mode, hooks."""

from __future__ import annotations

import pytest

from cat_framework import PluginLoadError, hookimpl, load_plugins
from cat_framework.plugins import BUILTIN_PLUGINS

AGG_MODULE = """
from cat_framework import Aggregator, Reference, hookimpl

class {cls}(Aggregator):
    name = "{name}"
    def aggregate(self, groups):
        return [Reference(text="", method=self.name) for _ in groups]

@hookimpl
def register_aggregators(register):
    register({cls})
"""


def record(plugins, name):
    return next(r for r in plugins.records if r.name == name)


def test_builtins_are_registered_first_through_pm_register(make_plugins):
    plugins = make_plugins()
    names = [r.name for r in plugins.records]
    assert names[: len(BUILTIN_PLUGINS)] == list(BUILTIN_PLUGINS)
    assert all(r.builtin and r.status == "loaded" for r in plugins.records)
    assert plugins.pm.get_plugin("cat_plugins.aggregators") is not None
    assert "single" in plugins.registry("aggregator")
    agg = record(plugins, "cat_plugins.aggregators")
    assert agg.hooks == ["register_aggregators"]
    assert "single" in agg.components["aggregator"]


def test_entry_point_plugin_loads_with_provenance(fake_dist):
    fake_dist(
        "cat-good", {"good": "cat_good"}, {"cat_good": AGG_MODULE.format(cls="G", name="good_vote")}
    )
    plugins = load_plugins(selection=None)
    rec = record(plugins, "good")
    assert rec.status == "loaded" and rec.distribution == "cat-good" and rec.version == "1.0"
    assert rec.entry_point == "good = cat_good"
    assert rec.components == {"aggregator": ["good_vote"]}
    entry = plugins.registry("aggregator").entry("good_vote")
    assert entry.source.distribution == "cat-good"


def test_plugin_raising_at_import_is_recorded_and_others_work(fake_dist):
    fake_dist("cat-broken", {"broken": "cat_broken"}, {"cat_broken": "import not_a_real_dep_xyz\n"})
    fake_dist(
        "cat-good", {"good": "cat_good"}, {"cat_good": AGG_MODULE.format(cls="G", name="good_vote")}
    )
    plugins = load_plugins()
    broken = record(plugins, "broken")
    assert broken.status == "failed"
    assert "ModuleNotFoundError" in broken.errors[0] and "not_a_real_dep_xyz" in broken.errors[0]
    assert record(plugins, "good").status == "loaded"
    assert "good_vote" in plugins.registry("aggregator")
    assert any("broken" in p for p in plugins.problems)


def test_duplicate_entry_point_name_is_reported(fake_dist):
    fake_dist("cat-one", {"agg": "cat_one"}, {"cat_one": AGG_MODULE.format(cls="A", name="one")})
    fake_dist("cat-two", {"agg": "cat_two"}, {"cat_two": AGG_MODULE.format(cls="B", name="two")})
    plugins = load_plugins()
    recs = [r for r in plugins.records if r.name == "agg"]
    assert len(recs) == 2
    loaded = [r for r in recs if r.status == "loaded"]
    failed = [r for r in recs if r.status == "failed"]
    assert len(loaded) == 1 and len(failed) == 1
    assert "entry-point name 'agg' is also declared by" in failed[0].errors[0]
    assert loaded[0].distribution in failed[0].errors[0]


def test_two_distributions_registering_same_component_name(fake_dist):
    fake_dist(
        "cat-first", {"first": "cat_first"}, {"cat_first": AGG_MODULE.format(cls="A", name="vote")}
    )
    fake_dist(
        "cat-second",
        {"second": "cat_second"},
        {"cat_second": AGG_MODULE.format(cls="B", name="vote")},
    )
    plugins = load_plugins()
    problems = "\n".join(plugins.problems)
    assert "aggregator 'vote' is registered twice" in problems
    assert "cat-first" in problems and "cat-second" in problems
    statuses = sorted(record(plugins, n).status for n in ("first", "second"))
    assert statuses == ["loaded", "partial"]


def test_clash_with_builtin_blames_the_newcomer(fake_dist):
    fake_dist("cat-dup", {"dup": "cat_dup"}, {"cat_dup": AGG_MODULE.format(cls="S", name="single")})
    plugins = load_plugins()
    assert record(plugins, "dup").status == "partial"
    assert plugins.registry("aggregator").entry("single").source.plugin == "cat_plugins.aggregators"


def test_misspelled_hook_is_caught(fake_dist):
    source = "from cat_framework import hookimpl\n\n@hookimpl\ndef register_agregators(register):\n    pass\n"
    fake_dist("cat-typo", {"typo": "cat_typo"}, {"cat_typo": source})
    plugins = load_plugins()
    rec = record(plugins, "typo")
    assert rec.status == "failed"
    assert "unknown hook 'register_agregators'" in rec.errors[0]
    assert "did you mean 'register_aggregators'" in rec.errors[0]
    assert plugins.pm.get_plugin("typo") is None


def test_hook_with_unknown_argument_is_rejected(fake_dist):
    source = "from cat_framework import hookimpl\n\n@hookimpl\ndef register_aggregators(register, bogus):\n    pass\n"
    fake_dist("cat-args", {"args": "cat_args"}, {"cat_args": source})
    rec = record(load_plugins(), "args")
    assert rec.status == "failed" and "bogus" in rec.errors[0]


def test_strict_mode_makes_problems_fatal(fake_dist, monkeypatch):
    fake_dist(
        "cat-broken", {"broken": "cat_broken"}, {"cat_broken": "raise RuntimeError('boom')\n"}
    )
    monkeypatch.setenv("CAT_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError, match="boom"):
        load_plugins()
    monkeypatch.setenv("CAT_STRICT_PLUGINS", "0")
    assert record(load_plugins(), "broken").status == "failed"


@pytest.mark.parametrize(
    ("env", "expected"),
    [("", set()), ("alpha", {"alpha"}), ("cat-beta", {"beta"}), ("alpha, beta", {"alpha", "beta"})],
)
def test_cat_load_plugins_selects_subset(fake_dist, monkeypatch, env, expected):
    fake_dist(
        "cat-alpha", {"alpha": "cat_alpha"}, {"cat_alpha": AGG_MODULE.format(cls="A", name="a1")}
    )
    fake_dist("cat-beta", {"beta": "cat_beta"}, {"cat_beta": AGG_MODULE.format(cls="B", name="b1")})
    monkeypatch.setenv("CAT_LOAD_PLUGINS", env)
    plugins = load_plugins()
    loaded = {r.name for r in plugins.records if not r.builtin and r.status == "loaded"}
    assert loaded & {"alpha", "beta"} == expected
    assert ("a1" in plugins.registry("aggregator")) == ("alpha" in expected)


def test_cat_load_plugins_unknown_name_is_reported(monkeypatch):
    monkeypatch.setenv("CAT_LOAD_PLUGINS", "no-such-plugin")
    plugins = load_plugins()
    assert any("CAT_LOAD_PLUGINS names 'no-such-plugin'" in p for p in plugins.problems)


def test_register_callback_requires_name_for_lazy_strings(make_plugins):
    class P:
        @hookimpl
        def register_aggregators(self, register):
            register("some.module:Cls")

    plugins = make_plugins(("lazy-no-name", P()))
    rec = record(plugins, "lazy-no-name")
    assert rec.status == "partial" and "pass register(obj, name=...)" in rec.errors[0]


# -- one test per hook (a meta-test below checks every hookspec has one) ----------------------


def _agg_plugin(name):
    from cat_framework import Aggregator, Reference

    class A(Aggregator):
        def aggregate(self, groups):
            return [Reference(text="", method=name) for _ in groups]

    A.name = name
    return A


def test_hook_register_aggregators(make_plugins):
    cls = _agg_plugin("hooked")

    class P:
        @hookimpl
        def register_aggregators(self, register):
            register(cls)

    assert make_plugins(("p", P())).get("aggregator", "hooked") is cls


def test_hook_register_reward_derivers(make_plugins):
    from cat_framework import RewardDeriver, Rewards

    class R(RewardDeriver):
        name = "const"

        def derive(self, groups, references):
            return [Rewards(values=[1.0] * len(g)) for g in groups]

    class P:
        @hookimpl
        def register_reward_derivers(self, register):
            register(R)

    assert make_plugins(("p", P())).get("reward_deriver", "const") is R


def test_hook_register_backends(make_plugins):
    class P:
        @hookimpl
        def register_backends(self, register):
            register("tests.helpers.echo_backend:EchoBackend", name="echo")

    plugins = make_plugins(("p", P()))
    assert plugins.registry("backend").entry("echo").is_lazy
    assert plugins.get("backend", "echo").__name__ == "EchoBackend"


def test_hook_register_datasets(make_plugins):
    from cat_framework import Dataset, Prompt

    class D(Dataset):
        name = "two"

        def load(self):
            return [
                Prompt(id=str(i), messages=[{"role": "user", "content": "q"}]) for i in range(2)
            ]

    class P:
        @hookimpl
        def register_datasets(self, register):
            register(D)

    assert len(make_plugins(("p", P())).get("dataset", "two")().load()) == 2


def _observer():
    calls = []

    class Obs:
        @hookimpl
        def on_run_start(self, run_dir, config):
            calls.append(("start", run_dir, dict(config)))

        @hookimpl
        def on_step_end(self, step, metrics):  # accepts a subset of the spec's arguments
            calls.append(("step", step, dict(metrics)))

        @hookimpl
        def on_run_end(self, run_dir, summary, status):
            calls.append(("end", status, dict(summary)))

    return Obs(), calls


def test_hook_on_run_start(make_plugins):
    obs, calls = _observer()
    make_plugins(("obs", obs)).notify("on_run_start", run_dir="/r", config={"a": 1})
    assert calls == [("start", "/r", {"a": 1})]


def test_hook_on_step_end(make_plugins):
    obs, calls = _observer()
    make_plugins(("obs", obs)).notify("on_step_end", run_dir="/r", step=3, metrics={"loss": 0.5})
    assert calls == [("step", 3, {"loss": 0.5})]


def test_hook_on_run_end(make_plugins):
    obs, calls = _observer()
    make_plugins(("obs", obs)).notify(
        "on_run_end", run_dir="/r", summary={"x": 1}, status="completed"
    )
    assert calls == [("end", "completed", {"x": 1})]


def test_failing_observer_does_not_stop_others(make_plugins):
    obs, calls = _observer()

    class Bad:
        @hookimpl
        def on_step_end(self, step):
            raise RuntimeError("observer bug")

    plugins = make_plugins(("obs", obs), ("bad", Bad()))
    plugins.notify("on_step_end", run_dir="/r", step=1, metrics={})
    assert calls == [("step", 1, {})]
    strict = make_plugins(("bad", Bad()), strict=True)
    with pytest.raises(PluginLoadError, match="observer bug"):
        strict.notify("on_step_end", run_dir="/r", step=1, metrics={})


def test_every_hookspec_has_a_test_and_a_docstring():
    import inspect

    from cat_framework import hookspecs

    specs = [
        name
        for name, fn in vars(hookspecs).items()
        if inspect.isfunction(fn) and hasattr(fn, "cat_framework_spec")
    ]
    assert len(specs) >= 7
    tests = set(globals())
    for name in specs:
        assert f"test_hook_{name}" in tests, f"hook {name} has no test_hook_{name}"
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert len(doc) > 80 and ":param" in doc, f"hook {name} is not fully documented"
