"""The plugin contract: every hook a cat-framework plugin can implement.

A plugin is a module (or object) whose functions are decorated with :data:`hookimpl` and named
after a hook below. Third-party plugins are found through the ``cat_framework`` entry-point group::

    [project.entry-points.cat_framework]
    my_plugin = "my_package.plugin"

Implementations may accept fewer arguments than the spec lists (pluggy passes only the ones an
implementation names), so hooks can grow new arguments without breaking existing plugins.

This module is the API reference: ``docs/`` renders it, and a test fails if a hook is undocumented.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    from cat_framework.components import Component

PROJECT = "cat_framework"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class Register(Protocol):
    """The callback passed to every ``register_*`` hook.

    ``register(component, name=None)`` where ``component`` is a component class or a lazy
    ``"module:Class"`` string (imported only when a pipeline uses it; use this for heavy optional
    dependencies such as vLLM). ``name`` defaults to the class attribute ``name``; it is required
    for lazy strings. Registering a name that another plugin already registered raises
    :class:`~cat_framework.errors.ComponentClashError` naming both plugins.
    """

    def __call__(self, component: type[Component] | str, name: str | None = None) -> None: ...


@hookspec
def register_aggregators(register: Register) -> None:
    """Register :class:`~cat_framework.components.Aggregator` classes.

    An aggregator turns each group of G rollouts into one reference
    (``aggregate(groups) -> list[Reference]``), e.g. anchor synthesis or majority vote. It may use
    the run's roles (``self.roles.anchor``) and must never read a prompt's gold answer or rubric.

    :param register: call ``register(MyAggregator)`` once per class, or
        ``register("pkg.module:MyAggregator", name="my_agg")`` to defer the import.

    Example::

        @hookimpl
        def register_aggregators(register):
            register(ConfidenceVote)
    """


@hookspec
def register_reward_derivers(register: Register) -> None:
    """Register :class:`~cat_framework.components.RewardDeriver` classes.

    A reward deriver turns groups and their references into one reward per rollout
    (``derive(groups, references) -> list[Rewards]``): programmatic answer checks, self-proposed
    rubrics scored by a judge, physician rubrics, or a holistic judge. Pipelines select one with
    ``reward: {name: ...}``.

    :param register: as for :func:`register_aggregators`.
    """


@hookspec
def register_backends(register: Register) -> None:
    """Register :class:`~cat_framework.components.Backend` classes.

    A backend serves a role (policy, anchor, judge): ``generate(requests)`` samples completions
    with token log-probs, ``score(contexts, continuations)`` returns teacher-forced log-probs and
    the optional ``update_weights(named_tensors)`` receives a training policy's weights. Register
    heavy backends lazily (``register("pkg.mod:Engine", name="engine")``) so importing
    cat-framework never imports their dependencies.

    :param register: as for :func:`register_aggregators`.
    """


@hookspec
def register_datasets(register: Register) -> None:
    """Register :class:`~cat_framework.components.Dataset` classes.

    A dataset loads :class:`~cat_framework.types.Prompt` objects (``load() -> list[Prompt]``) from
    a local file given by its ``path`` parameter, and declares its ``task`` (``math`` answers are
    checked programmatically, ``freeform`` answers by rubrics). Gold answers and rubrics go on the
    prompt for evaluation only.

    :param register: as for :func:`register_aggregators`.
    """


@hookspec
def on_run_start(run_dir: str, config: Mapping[str, Any]) -> None:
    """Called once when a run starts, after its directory and resolved config are written.

    Observers (loggers, trackers) open their sinks here.

    :param run_dir: the run's directory (absolute path as a string).
    :param config: the resolved pipeline as a JSON-compatible mapping.
    """


@hookspec
def on_step_end(run_dir: str, step: int, metrics: Mapping[str, float]) -> None:
    """Called after every training step (and after each evaluation, with ``eval/`` metrics).

    An exception raised here is logged and does not stop the run (unless
    ``CAT_STRICT_PLUGINS=1``).

    :param run_dir: the run's directory.
    :param step: the 1-based optimizer step just completed (0 for a pre-training evaluation).
    :param metrics: scalar metrics of that step, e.g. ``reward/mean``, ``kl``, ``time/step``.
    """


@hookspec
def on_run_end(run_dir: str, summary: Mapping[str, Any], status: str) -> None:
    """Called once when a run ends, successfully or not. Observers flush and close here.

    :param run_dir: the run's directory.
    :param summary: final metrics and paths (e.g. ``report``) as a JSON-compatible mapping.
    :param status: ``"completed"``, ``"failed"`` or ``"interrupted"``.
    """
