from __future__ import annotations

import sys
import types

import pytest

from cat_framework import Aggregator, ComponentClashError, Reference, UnknownComponentError
from cat_framework.registry import Provenance, Registry


class Vote(Aggregator):
    name = "vote"

    def aggregate(self, groups):
        return [Reference(text="", method="vote") for _ in groups]


def make_registry() -> Registry:
    return Registry("aggregator", Aggregator)


def test_register_and_get_class():
    reg = make_registry()
    reg.add("vote", Vote, Provenance("mine"))
    assert reg.get("vote") is Vote
    assert reg.names() == ["vote"]
    assert "vote" in reg and len(reg) == 1


def test_clash_names_both_sources():
    reg = make_registry()
    reg.add("vote", Vote, Provenance("first_plugin", "cat-first", "1.0"))
    with pytest.raises(ComponentClashError) as err:
        reg.add("vote", Vote, Provenance("second_plugin", "cat-second", "2.0"))
    msg = str(err.value)
    assert "'first_plugin' (cat-first 1.0)" in msg
    assert "'second_plugin' (cat-second 2.0)" in msg


def test_unknown_name_exact_message():
    reg = make_registry()
    reg.add("synthesis", "nowhere.mod:Synth", Provenance("p"))
    reg.add("majority", "nowhere.mod:Maj", Provenance("p"))
    with pytest.raises(UnknownComponentError) as err:
        reg.get("synthsis")
    assert str(err.value) == (
        "unknown aggregator 'synthsis'. Did you mean 'synthesis'? "
        "Installed: majority, synthesis. If it comes from a plugin, install that plugin; "
        "`cat-framework plugins` lists what is installed and what failed to load."
    )


def test_unknown_name_without_close_match_has_no_suggestion():
    reg = make_registry()
    reg.add("majority", Vote, Provenance("p"))
    with pytest.raises(UnknownComponentError) as err:
        reg.get("zzz")
    assert "Did you mean" not in str(err.value)
    assert "Installed: majority." in str(err.value)


def test_lazy_target_imported_only_when_used(monkeypatch):
    module = types.ModuleType("lazy_mod_for_test")
    imported = []

    def getattr_(name):
        imported.append(name)
        if name == "Vote":
            return Vote
        raise AttributeError(name)

    module.__getattr__ = getattr_  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "lazy_mod_for_test", module)
    reg = make_registry()
    reg.add("vote", "lazy_mod_for_test:Vote", Provenance("p"))
    entry = reg.entry("vote")
    assert entry.is_lazy and entry.origin == "lazy_mod_for_test:Vote"
    assert imported == []
    assert reg.get("vote") is Vote
    assert imported == ["Vote"]
    assert not reg.entry("vote").is_lazy
    reg.get("vote")
    assert imported == ["Vote"]  # cached


def test_lazy_target_import_error_is_reported():
    reg = make_registry()
    reg.add("ghost", "no_such_module_xyz:Ghost", Provenance("p", "cat-ghost", "0.1"))
    with pytest.raises(UnknownComponentError) as err:
        reg.get("ghost")
    assert "could not be imported" in str(err.value)
    assert "ModuleNotFoundError" in str(err.value)


def test_lazy_target_of_wrong_type_is_reported():
    reg = make_registry()
    reg.add("bad", "collections:OrderedDict", Provenance("p"))
    with pytest.raises(UnknownComponentError, match="not a Aggregator subclass"):
        reg.get("bad")


def test_rejects_non_component_and_malformed_lazy_target():
    reg = make_registry()
    with pytest.raises(TypeError):
        reg.add("x", dict, Provenance("p"))
    with pytest.raises(ValueError, match="module:Class"):
        reg.add("x", "no_colon", Provenance("p"))


def test_lazy_import_that_prints_or_exits_is_contained(tmp_path, monkeypatch, capfd):
    (tmp_path / "cat_lazy_chatty.py").write_text(
        "import os\nprint('loading weights...')\nos.write(1, b'from C\\n')\n"
        "from cat_framework import Aggregator\nclass Chatty(Aggregator):\n    name = 'chatty'\n"
    )
    (tmp_path / "cat_lazy_quit.py").write_text("import sys\nsys.exit(7)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = make_registry()
    reg.add("chatty", "cat_lazy_chatty:Chatty", Provenance("p"))
    reg.add("quit", "cat_lazy_quit:Quit", Provenance("p", "cat-quit", "1.0"))
    assert reg.get("chatty").__name__ == "Chatty"
    out, err = capfd.readouterr()
    assert out == "" and "loading weights...\nfrom C\n" in err
    with pytest.raises(UnknownComponentError, match=r"could not be imported: called sys.exit\(7\)"):
        reg.get("quit")
    for name in ("cat_lazy_chatty", "cat_lazy_quit"):
        sys.modules.pop(name, None)
