"""The plugin manager: built-ins first, then third-party entry points, each loaded under guard.

``load_plugins()`` builds everything; nothing is loaded at import time. Built-in plugins go
through the same ``pm.register`` path as third-party ones, so a name clash blames the newcomer.
Each entry point is loaded on its own: an import error (or a ``sys.exit()``), a duplicate
entry-point name, a misspelled hook or a clash is recorded on that plugin (and shown by
``cat-framework plugins``) while the rest keep working; a clash drops only the clashing name, not
the plugin's other components. What a plugin prints while loading is kept on its record, never
on stdout, where it would corrupt the commands' JSON. ``CAT_STRICT_PLUGINS=1`` turns any such
problem into an error; ``CAT_LOAD_PLUGINS=a,b`` loads only the named third-party plugins (empty:
none). :meth:`Plugins.blame` names the plugin whose code an exception came from.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata as md
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pluggy
import structlog

from cat_framework import hookspecs
from cat_framework.components import COMPONENT_KINDS, Component
from cat_framework.errors import ComponentClashError, PluginLoadError
from cat_framework.plugin_guard import (
    Culprit,
    Owner,
    capture_stdout,
    describe_failure,
    find_culprit,
)
from cat_framework.registry import Provenance, Registry, suggest

log = structlog.get_logger("cat_framework.plugins")

ENTRY_POINT_GROUP = "cat_framework"
BUILTIN_PLUGINS: tuple[str, ...] = (
    "cat_plugins.aggregators",
    "cat_plugins.rewards",
    "cat_plugins.backends",
    "cat_plugins.datasets",
    "cat_plugins.observers",
)
#: component kind -> the hook that registers it
KIND_HOOKS: dict[str, str] = {
    "aggregator": "register_aggregators",
    "reward_deriver": "register_reward_derivers",
    "backend": "register_backends",
    "dataset": "register_datasets",
}


@dataclass
class PluginRecord:
    """What ``cat-framework plugins`` reports about one plugin."""

    name: str
    builtin: bool
    distribution: str | None = None
    version: str | None = None
    entry_point: str | None = None
    status: str = "loaded"  # loaded | failed | partial | not-selected
    errors: list[str] = field(default_factory=list)
    hooks: list[str] = field(default_factory=list)
    components: dict[str, list[str]] = field(default_factory=dict)
    output: str = ""  # what the plugin printed to stdout while loading (kept off the stdout)

    def fail(self, message: str, *, partial: bool = False) -> None:
        self.errors.append(message)
        self.status = "partial" if partial and self.status != "failed" else "failed"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def keep_output(self, text: str) -> None:
        """Keep what the plugin printed (``cat-framework plugins`` shows it), off stdout."""
        self.output += text


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _selection_from_env() -> set[str] | None:
    raw = os.environ.get("CAT_LOAD_PLUGINS")
    if raw is None:
        return None
    return {s.strip() for s in raw.split(",") if s.strip()}


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


class Plugins:
    """The loaded plugin manager, the component registries and the load report."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.registries: dict[str, Registry[Any]] = {
            kind: Registry(kind.replace("_", " "), base) for kind, base in COMPONENT_KINDS.items()
        }
        self.records: list[PluginRecord] = []

    def registry(self, kind: str) -> Registry[Any]:
        return self.registries[kind]

    def get(self, kind: str, name: str) -> type[Component]:
        return self.registries[kind].get(name)

    @property
    def problems(self) -> list[str]:
        return [f"plugin {r.name!r}: {e}" for r in self.records for e in r.errors]

    # -- loading -----------------------------------------------------------------------------

    def register_plugin(self, obj: object, record: PluginRecord) -> bool:
        """Register one plugin object, rejecting it (recorded) when it misuses the contract."""
        self.records.append(record)
        try:
            self.pm.register(obj, name=record.name)
        except Exception as exc:  # pluggy validation errors, double registration
            record.fail(f"could not register: {type(exc).__name__}: {exc}")
            return False
        unknown = [hc.name for hc in self.pm.get_hookcallers(obj) or [] if not hc.has_spec()]
        if unknown:
            known = [
                n
                for n, hc in vars(self.pm.hook).items()
                if isinstance(hc, pluggy.HookCaller) and hc.has_spec()
            ]
            for hook in unknown:
                hint = suggest(hook, known)
                record.fail(
                    f"implements unknown hook {hook!r}"
                    + (f" (did you mean {hint!r}?)" if hint else "")
                    + "; the plugin was not loaded"
                )
            self.pm.unregister(obj)
            return False
        self.pm.check_pending()
        record.hooks = sorted(hc.name for hc in self.pm.get_hookcallers(obj) or [])
        return True

    def collect_components(self) -> None:
        """Call every plugin's ``register_<kind>`` hook with a provenance-stamping callback."""
        by_name = {r.name: r for r in self.records}
        for kind, hook_name in KIND_HOOKS.items():
            registry = self.registries[kind]
            # pluggy returns impls in registration order: built-ins first, as intended
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                record = by_name[impl.plugin_name]
                source = Provenance(record.name, record.distribution, record.version)

                def register(
                    component: Any,
                    name: str | None = None,
                    _reg: Registry[Any] = registry,
                    _src: Provenance = source,
                    _rec: PluginRecord = record,
                    _kind: str = kind,
                ) -> None:
                    # A rejected registration is recorded and returns normally: raising here
                    # would end the plugin's hook and silently drop its later components.
                    try:
                        if name is None:
                            name = getattr(component, "name", None)
                            if isinstance(component, str) or not name:
                                raise ValueError(
                                    f"{_kind} {component!r} has no 'name'; "
                                    "pass register(obj, name=...)"
                                )
                        _reg.add(name, component, _src)
                    except ComponentClashError as exc:
                        _rec.fail(str(exc), partial=True)
                    except (TypeError, ValueError) as exc:
                        _rec.fail(str(exc), partial=True)
                    else:
                        _rec.components.setdefault(_kind, []).append(name)

                with capture_stdout() as printed:
                    try:
                        impl.function(**{arg: register for arg in impl.argnames})
                    except KeyboardInterrupt:
                        raise
                    except BaseException as exc:  # sys.exit() in a hook must not end the command
                        record.fail(f"{hook_name} failed: {describe_failure(exc)}", partial=True)
                record.keep_output(printed.text)

    def blame(self, exc: BaseException) -> Culprit | None:
        """The plugin (and component) whose code ``exc`` escaped from, if any."""
        return find_culprit(exc, self)

    def owners(self) -> list[Owner]:
        """The modules each loaded plugin owns, for :meth:`blame`: every component's module
        (with its class), then each plugin's package (an entry point's top-level package, a
        built-in's module)."""
        by_name = {r.name: r for r in self.records}
        owners: list[Owner] = []
        for kind, registry in self.registries.items():
            for entry in registry:
                record = by_name.get(entry.source.plugin)
                if record is not None:
                    module, qualname = _module_of(entry.target)
                    owners.append(Owner(module, record, kind, entry.name, qualname))
        for record in self.records:
            if record.entry_point:  # "name = pkg.module:attr": the whole top-level package
                module = record.entry_point.partition("=")[2].strip().partition(":")[0]
                owners.append(Owner(module.partition(".")[0], record))
            elif record.builtin:
                owners.append(Owner(record.name, record))
        return owners

    def notify(self, hook_name: str, **kwargs: Any) -> None:
        """Call an observer hook on every plugin; one failing observer never stops a run."""
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            try:
                impl.function(**{a: kwargs[a] for a in impl.argnames if a in kwargs})
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # an observer's sys.exit() must not end the run either
                if self.strict:
                    raise PluginLoadError(
                        f"plugin {impl.plugin_name!r} failed in {hook_name}: "
                        f"{describe_failure(exc)}"
                    ) from exc
                log.warning(
                    "observer failed",
                    plugin=impl.plugin_name,
                    hook=hook_name,
                    error=describe_failure(exc),
                )


def _module_of(target: Any) -> tuple[str, str | None]:
    """``(module, class qualname)`` of a registered component (a class, or a lazy
    ``"module:attr"`` string)."""
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        return module, attr or None
    return target.__module__, target.__qualname__


def _guarded_import(record: PluginRecord, load: Callable[[], object]) -> object | None:
    """``load()`` with its stdout kept on ``record``; any failure (even an exit) fails it."""
    with capture_stdout() as printed:
        try:
            obj = load()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a plugin's sys.exit() at import must not end the command
            record.fail(f"import failed: {describe_failure(exc)}")
            obj = None
    record.keep_output(printed.text)
    return obj


def _load_builtins(plugins: Plugins, modules: Sequence[str]) -> None:
    try:
        version = md.version("cat-framework")
    except md.PackageNotFoundError:
        from cat_framework.version import __version__ as version
    for module_name in modules:
        record = PluginRecord(
            module_name, builtin=True, distribution="cat-framework", version=version
        )
        module = _guarded_import(record, functools.partial(importlib.import_module, module_name))
        if module is None:
            plugins.records.append(record)
            continue
        plugins.register_plugin(module, record)


def _iter_entry_points(group: str) -> Iterable[md.EntryPoint]:
    return md.entry_points(group=group)


def _load_entry_points(plugins: Plugins, selection: set[str] | None) -> None:
    seen: dict[str, PluginRecord] = {}
    matched: set[str] = set()
    for ep in _iter_entry_points(ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        record = PluginRecord(
            ep.name,
            builtin=False,
            distribution=dist.name if dist else None,
            version=dist.version if dist else None,
            entry_point=f"{ep.name} = {ep.value}",
        )
        if selection is not None:
            keys = {ep.name, _norm(ep.name)} | ({dist.name, _norm(dist.name)} if dist else set())
            hit = keys & (selection | {_norm(s) for s in selection})
            if not hit:
                record.status = "not-selected"
                plugins.records.append(record)
                continue
            matched |= {s for s in selection if s in keys or _norm(s) in keys}
        first = seen.get(ep.name)
        if first is not None:
            plugins.records.append(record)
            record.fail(
                f"entry-point name {ep.name!r} is also declared by {first.distribution}; "
                f"entry-point names must be unique across plugins, so this one was not loaded. "
                f"Uninstall one of the two distributions."
            )
            continue
        seen[ep.name] = record
        obj = _guarded_import(record, ep.load)
        if obj is None:
            plugins.records.append(record)
            continue
        plugins.register_plugin(obj, record)
    if selection:
        for missing in sorted(selection - matched):
            record = PluginRecord(missing, builtin=False, status="failed")
            record.fail(f"CAT_LOAD_PLUGINS names {missing!r}, but no such plugin is installed")
            plugins.records.append(record)


def load_plugins(
    *,
    entry_points: bool = True,
    strict: bool | None = None,
    selection: Iterable[str] | None = None,
    builtins: Sequence[str] = BUILTIN_PLUGINS,
    extra: Iterable[tuple[str, object]] = (),
) -> Plugins:
    """Build a plugin manager and the component registries.

    :param entry_points: load third-party plugins from the ``cat_framework`` entry-point group.
    :param strict: make any plugin problem fatal (default: ``CAT_STRICT_PLUGINS``).
    :param selection: names of the third-party plugins to load (entry-point or distribution
        names; default: ``CAT_LOAD_PLUGINS``, or all when unset).
    :param builtins: module names of the built-in plugins.
    :param extra: ``(name, plugin_object)`` pairs registered after everything else (tests,
        notebooks, project-local plugins).
    """
    plugins = Plugins(strict=_env_flag("CAT_STRICT_PLUGINS") if strict is None else strict)
    _load_builtins(plugins, builtins)
    if entry_points:
        chosen = set(selection) if selection is not None else _selection_from_env()
        _load_entry_points(plugins, chosen)
    for name, obj in extra:
        plugins.register_plugin(obj, PluginRecord(name, builtin=False))
    plugins.collect_components()
    for problem in plugins.problems:
        log.warning("plugin problem", problem=problem)
    if plugins.strict and plugins.problems:
        raise PluginLoadError(
            "plugin problems (CAT_STRICT_PLUGINS=1 makes them fatal):\n  "
            + "\n  ".join(plugins.problems)
        )
    return plugins


@functools.cache
def default_plugins() -> Plugins:
    """The process-wide plugins, loaded on first use (not at import)."""
    return load_plugins()
