"""CaT's teacher as a reward function for TRL's ``GRPOTrainer``.

TRL samples G completions per prompt and calls its reward functions once per process per
generation batch. :class:`TeacherReward` regroups those completions by prompt
(:mod:`.groups`, which refuses a split group), runs the pipeline's teacher on them exactly as
``cat-framework run`` does (:class:`~cat_framework.engine.teacher.Teacher`: aggregator, reward
deriver, reference fallback, with the frozen anchor of :mod:`.roles`), returns one reward per
completion (``None``: unscorable, which TRL leaves out of the group's baseline and gives
advantage 0), logs the teacher's diagnostics through TRL's ``log_metric`` and, with a
``run_dir``, writes our run records (:mod:`.run_dir`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from cat_framework.components import Roles
from cat_framework.engine.diagnostics import MajorityReading, majority_reading, teacher_metrics
from cat_framework.engine.record_builder import build_record
from cat_framework.engine.teacher import Teacher, TeacherOutput
from cat_framework.errors import CatError, cut_message
from cat_framework.integrations.trl.groups import check_layout, to_groups
from cat_framework.integrations.trl.roles import trl_roles
from cat_framework.integrations.trl.run_dir import TeacherRunDir
from cat_framework.pipeline import Pipeline, load_pipeline
from cat_framework.pipeline.build import BackendPool, build_component
from cat_framework.plugins import Plugins
from cat_framework.records import RunRecord
from cat_framework.rundir import secret_values
from cat_framework.scrub import register_secret, scrub
from cat_framework.types import RolloutGroup

#: the reward's name in TRL's logs, unless given another (its metrics are then prefixed with it)
DEFAULT_NAME = "cat_teacher"
#: keyword arguments TRL passes that are not dataset columns
_TRL_KWARGS = ("trainer_state", "log_metric", "log_extra", "environments")


def _evaluating(log_metric: Any) -> bool:
    """Whether TRL calls the reward for an evaluation: ``log_metric`` is the trainer's bound
    ``_log_metric``, and the trainer's model is in eval mode then. An evaluation's scores go to
    TRL's eval metrics; they are not training steps, so the run folder does not record them."""
    model = getattr(getattr(log_metric, "__self__", None), "model", None)
    return model is not None and not getattr(model, "training", True)


class TeacherReward:
    """A TRL reward function: ``reward(prompts, completions, completion_ids, **columns)`` ->
    one reward per completion, ``None`` where the teacher could not score it.

    Built by :func:`teacher_reward`; use it as a context manager (or call :meth:`close`) so the
    teacher's backends are released and the run directory records how the run ended."""

    def __init__(
        self,
        teacher: Teacher,
        num_generations: int,
        *,
        task: str,
        roles: Roles,
        pool: BackendPool | None = None,
        run_dir: TeacherRunDir | None = None,
        gold_column: str | None = None,
        max_tokens: int | None = None,
        name: str = DEFAULT_NAME,
        majority: MajorityReading | None = None,
    ) -> None:
        self.teacher = teacher
        self.num_generations = num_generations
        self.task = task
        self.roles = roles
        self.pool = pool
        self.run_dir = run_dir
        self.gold_column = gold_column
        self.max_tokens = max_tokens
        self.majority = majority  # the diagnostics' majority vote: the pipeline's own
        self.__name__ = name  # TRL names the reward's metrics after it
        self.calls = 0
        #: the last call's groups and teacher output (for inspection and tests)
        self.last: tuple[list[RolloutGroup], TeacherOutput] | None = None

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        trl = {k: kwargs.pop(k) for k in _TRL_KWARGS if k in kwargs}
        groups = to_groups(
            prompts, completions, completion_ids, self.num_generations, kwargs,
            task=self.task, gold_column=self.gold_column, max_tokens=self.max_tokens,
        )  # fmt: skip
        out = self.teacher.teach(groups)
        self.calls += 1
        state = trl.get("trainer_state")
        step = (state.global_step if state is not None else self.calls - 1) + 1
        records = [
            build_record(
                "train",
                step,
                group,
                {ref.method: ref},
                ref.method,
                rewards=rewards,
                majority=self.majority,
            )
            for group, ref, rewards in zip(groups, out.references, out.rewards, strict=True)
        ]
        self.last = (groups, out)
        self._log(records, out, trl)
        if self.run_dir is not None and not _evaluating(trl.get("log_metric")):
            rows = [r.to_dict() for r in records]
            self.run_dir.append(step, rows, self.task, out.timings)
        return [v for r in out.rewards for v in r.values]

    def _log(self, records: list[RunRecord], out: TeacherOutput, trl: dict[str, Any]) -> None:
        """The teacher diagnostics as TRL metrics (averaged over the logging interval and the
        processes) and the reference beside each completion in TRL's completions table."""
        log_metric, log_extra = trl.get("log_metric"), trl.get("log_extra")
        prefix = "" if self.__name__ == DEFAULT_NAME else f"{self.__name__}/"
        if log_metric is not None:
            metrics = {**teacher_metrics(records, self.task), **out.timings}
            for key, value in metrics.items():
                if not key.endswith(("/count", "/total")):  # a mean of counts says nothing
                    log_metric(prefix + key, float(value))
        if log_extra is not None:
            shown = [
                ref.answer if ref.answer is not None else ref.text[:200] for ref in out.references
            ]
            log_extra(
                f"{self.__name__}/reference",
                [s for s in shown for _ in range(self.num_generations)],
            )

    def close(self, status: str = "completed", error: str | None = None) -> None:
        """Release the teacher's backends; the run directory records ``status``."""
        if self.pool is not None:
            self.pool.close()
        if self.run_dir is not None:
            self.run_dir.finish(status, error)

    def __enter__(self) -> TeacherReward:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
        else:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            self.close(status, cut_message(scrub(f"{type(exc).__name__}: {exc}")))


def teacher_reward(
    pipeline: str | os.PathLike[str] | Pipeline,
    *,
    args: Any | None = None,
    num_generations: int | None = None,
    overrides: Sequence[str] = (),
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    gold_column: str | None = None,
    plugins: Plugins | None = None,
    name: str = DEFAULT_NAME,
) -> TeacherReward:
    """A TRL reward function from a pipeline's teacher section.

    :param pipeline: a pipeline file, a shipped pipeline's name, or a loaded :class:`Pipeline`;
        its ``aggregator``, ``reward``, ``trainer.reference_fallback`` and ``models`` are used
        (``models.policy`` must name the model TRL trains: the anchor is its frozen copy).
    :param args: the ``GRPOConfig``: G is its ``num_generations``, and a per-process batch that
        would split a group is refused before training.
    :param num_generations: G without ``args`` (default: the pipeline's ``rollouts.n``).
    :param overrides: ``--set``-style overrides (``"models.policy.model=..."``).
    :param run_dir: write ``records.jsonl``/``metrics.jsonl`` there for ``cat-framework report``.
    :param resume: continue ``run_dir`` (after resuming TRL from a checkpoint).
    :param gold_column: a dataset column of gold answers, for the audit fields of the records
        (the teacher never reads it).
    :param name: the reward's name in TRL's logs; a name other than ``cat_teacher`` also
        prefixes the teacher's metrics (two teacher rewards in one trainer).
    """
    pipe = _load(pipeline, overrides, plugins)
    g = _group_size(pipe, args, num_generations)
    for key in ("aggregator", "reward"):
        if pipe.component(key) is None:
            raise CatError(
                f"pipeline {pipe.config.name!r} has no {key}: the teacher reward needs the "
                "teacher section of a training pipeline (aggregator and reward)"
            )
    for secret in secret_values(pipe.resolved()):  # masked in every message, as in our runs
        register_secret(secret)
    pool = BackendPool()
    roles = trl_roles(pipe, pool)
    fallback = pipe.component("trainer", "reference_fallback")
    teacher = Teacher(
        build_component(pipe, "aggregator", roles=roles),  # type: ignore[arg-type]
        build_component(pipe, "reward", roles=roles),  # type: ignore[arg-type]
        fallback.build(roles=roles) if fallback else None,  # type: ignore[arg-type]
    )
    # last: a refused pipeline leaves no run directory behind
    writer = TeacherRunDir(run_dir, pipe, resume=resume) if run_dir is not None else None
    max_tokens = getattr(args, "max_completion_length", None) if args is not None else None
    return TeacherReward(
        teacher, g, task=_task(pipe), roles=roles, pool=pool, run_dir=writer,
        gold_column=gold_column, max_tokens=max_tokens, name=name,
        majority=majority_reading(pipe, evaluation=False),
    )  # fmt: skip


def _load(
    pipeline: str | os.PathLike[str] | Pipeline, overrides: Sequence[str], plugins: Plugins | None
) -> Pipeline:
    if isinstance(pipeline, Pipeline):
        if overrides:
            raise CatError("overrides apply to a pipeline file or name, not a loaded Pipeline")
        return pipeline
    from cat_framework.pipeline.shipped import resolve_pipeline
    from cat_framework.plugins import default_plugins

    path = resolve_pipeline(os.fspath(pipeline))
    return load_pipeline(path, overrides, plugins=plugins or default_plugins())


def _group_size(pipeline: Pipeline, args: Any | None, num_generations: int | None) -> int:
    """G: the GRPOConfig's, else ``num_generations``, else the pipeline's ``rollouts.n``."""
    if args is None:
        return num_generations or pipeline.config.rollouts.n
    g = int(args.num_generations)
    if num_generations is not None and num_generations != g:
        raise CatError(
            f"num_generations={num_generations} but the GRPOConfig samples "
            f"num_generations={g}: give one of them"
        )
    check_layout(args, g)
    return g


def _task(pipeline: Pipeline) -> str:
    """The task of the pipeline's training data (``math`` without one); a ``task`` dataset
    column overrides it per prompt."""
    comp = pipeline.component("data", "train")
    if comp is None:
        return "math"
    return str(getattr(comp.params, "task", None) or getattr(comp.cls, "task", "math"))


__all__ = ["DEFAULT_NAME", "TeacherReward", "teacher_reward"]
