"""Thread discipline on CPU: each process of a run gets its share of the usable cores.

torch starts one intra-op thread per core in *every* process, so N processes on one machine (an
``accelerate launch`` run, or a trainer beside an engine process it started) run N times as many
busy threads as there are cores; on a small CPU that oversubscription slows a step several-fold
(``benchmarks/results/threads-cpu-2proc.md``). At run start, :func:`apply_thread_discipline` gives
this process ``(usable cores - cores of helper processes) / local processes`` torch threads (at
least 1), unless the user chose a count, and logs one ``threads`` event saying how many and why.

Who decides, first match wins (``source`` in the log):

1. ``pipeline``: the pipeline's top-level ``threads: N``;
2. ``env``: ``OMP_NUM_THREADS`` (or ``MKL_NUM_THREADS``) in the environment. torch read it at
   import, so it is left as it is. Under a launcher, ``OMP_NUM_THREADS=1`` is *not* a choice:
   ``accelerate launch`` and ``torchrun`` both write exactly 1 when the user set nothing;
3. ``auto``: the share above. Helper cores come from each role backend's
   :meth:`~cat_framework.components.Backend.helper_cores` (an engine core in its own process).

Only the count of this process changes (``torch.set_num_threads``, which sets OpenMP's too); the
environment is left alone, so child processes and later runs in the same process see the user's
own. An in-process engine that replaced ``torch.set_num_threads`` (vLLM's CPU worker binds its
threads and makes the call a no-op) is respected: the log then reports the count it left.
"""

from __future__ import annotations

import math
import os
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog

from cat_framework.errors import CatError

log = structlog.get_logger("cat_framework.threads")

Source = Literal["pipeline", "env", "auto"]
#: environment variables that say how many processes share this machine, first found wins
LOCAL_SIZE_VARS = (
    "LOCAL_WORLD_SIZE",
    "MPI_LOCALNRANKS",
    "OMPI_COMM_WORLD_LOCAL_SIZE",
    "MV2_COMM_WORLD_LOCAL_SIZE",
)
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
#: set by every ``accelerate launch`` (one process too), which also writes OMP_NUM_THREADS=1
LAUNCHER_VARS = (*LOCAL_SIZE_VARS, "ACCELERATE_DYNAMO_BACKEND")


@dataclass(frozen=True)
class ThreadPlan:
    """How many torch threads this process runs, and the figures that decided it."""

    threads: int
    cores: int
    local_processes: int
    helpers: int
    source: Source


def plan_threads(
    cores: int,
    local_processes: int = 1,
    helpers: int = 0,
    setting: Literal["auto"] | int = "auto",
    environ: Mapping[str, str] | None = None,
) -> ThreadPlan:
    """The thread count of one process (pure: no system calls).

    ``cores``: usable cores of the machine; ``local_processes``: processes of the run on it;
    ``helpers``: cores that helper processes started by *this* process keep busy; ``setting``:
    the pipeline's ``threads``; ``environ``: the environment (only the thread variables and the
    launcher's local size are read)."""
    env = environ or {}
    cores, local_processes, helpers = max(1, cores), max(1, local_processes), max(0, helpers)
    figures = {"cores": cores, "local_processes": local_processes, "helpers": helpers}
    if setting != "auto":
        return ThreadPlan(threads=int(setting), source="pipeline", **figures)
    chosen = _env_threads(env, launched=local_processes > 1 or _launched(env))
    if chosen is not None:
        return ThreadPlan(threads=chosen, source="env", **figures)
    share = (cores - local_processes * helpers) // local_processes
    return ThreadPlan(threads=max(1, share), source="auto", **figures)


def _launched(env: Mapping[str, str]) -> bool:
    return any(name in env for name in LAUNCHER_VARS)


def _env_threads(env: Mapping[str, str], launched: bool) -> int | None:
    """The user's thread count from the environment, or ``None`` (unset, or a launcher's 1)."""
    for name in THREAD_VARS:
        raw = env.get(name, "").strip()
        if not raw:
            continue
        first = raw.split(",")[0].strip()  # OpenMP allows a list, one count per nesting level
        if not first.isdigit() or int(first) < 1:
            raise CatError(
                f"environment variable {name}={raw!r} is not a thread count: set it to a "
                "positive integer (e.g. 2), or unset it to let the run share the cores itself"
            )
        if name == "OMP_NUM_THREADS" and launched and int(first) == 1:
            continue  # accelerate launch / torchrun wrote it: not the user's choice
        return int(first)
    return None


def usable_cores(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota if any."""
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:  # macOS, Windows
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    return max(1, min(cores, quota) if quota is not None else cores)


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The cgroup CPU limit in whole cores (a fractional quota rounds up), or ``None``.

    Reads cgroup v2's ``cpu.max`` ("max 100000" = none), else v1's ``cpu.cfs_quota_us`` (-1 =
    none); anything unreadable counts as no limit."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    try:
        q, p = int(quota), int(period)
    except ValueError:  # "max"
        return None
    return max(1, math.ceil(q / p)) if q > 0 and p > 0 else None


def local_processes(environ: Mapping[str, str] | None = None) -> int:
    """Processes of this run on this machine, as the launcher says (1 without one)."""
    env = os.environ if environ is None else environ
    for name in LOCAL_SIZE_VARS:
        raw = env.get(name, "").strip()
        if raw.isdigit() and int(raw) > 0:
            return int(raw)
    return 1


def helper_cores(pipeline: Any) -> int:
    """Cores kept busy by helper processes that the role backends will start (each distinct
    backend once, as the run builds them), asked of each backend class before it is built."""
    seen: set[tuple[type, str]] = set()
    total = 0
    for role in ("policy", "anchor", "judge"):
        comp = pipeline.component("models", role)
        if comp is None:
            continue
        key = (comp.cls, comp.params.model_dump_json())
        if key in seen:
            continue
        seen.add(key)
        total += max(0, int(comp.cls.helper_cores(comp.params)))
    return total


def apply_thread_discipline(pipeline: Any) -> tuple[ThreadPlan, int]:
    """Plan this process's threads for ``pipeline``, set them, and log one ``threads`` event.

    Returns the plan and the count before (for :func:`restore_threads` at run end)."""
    import torch

    plan = plan_threads(
        usable_cores(),
        local_processes(),
        helper_cores(pipeline),
        pipeline.config.threads,
        os.environ,
    )
    before = torch.get_num_threads()
    settable = isinstance(torch.set_num_threads, types.BuiltinFunctionType)
    if plan.source != "env" and settable and before != plan.threads:
        torch.set_num_threads(plan.threads)
    actual = torch.get_num_threads()
    extra = {} if actual == plan.threads else {"planned": plan.threads}
    if not settable:
        extra["note"] = "an in-process engine bound the threads; torch.set_num_threads is a no-op"
    log.info(
        "threads",
        torch=actual,
        cores=plan.cores,
        local_processes=plan.local_processes,
        helpers=plan.helpers,
        source=plan.source,
        **extra,
    )
    return plan, before


def restore_threads(before: int) -> None:
    """Give an in-process caller its own thread count back after a run (a no-op where an
    engine still holds the threads)."""
    import torch

    settable = isinstance(torch.set_num_threads, types.BuiltinFunctionType)
    if settable and torch.get_num_threads() != before:
        torch.set_num_threads(before)


__all__ = [
    "ThreadPlan",
    "apply_thread_discipline",
    "cgroup_cpu_quota",
    "helper_cores",
    "local_processes",
    "plan_threads",
    "restore_threads",
    "usable_cores",
]
