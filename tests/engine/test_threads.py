"""Thread discipline: each process of a run takes its share of the usable cores, an explicit
choice wins, and the run log says how many threads and why (every process, every mode)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import Field

from cat_framework import Backend, ComponentParams, hookimpl
from cat_framework.engine.threads import (
    cgroup_cpu_quota,
    local_processes,
    plan_threads,
    usable_cores,
)
from cat_framework.errors import CatError
from cat_framework.pipeline import load_pipeline
from cat_plugins.backends.vllm_backend import VLLMBackend
from tests.engine.test_trainer import read_jsonl, run, write_pipeline

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "pipelines" / "accelerate" / "cpu_2proc.yaml"
TRAINER = "{steps: 1, prompts_per_step: 2, micro_batch_size: 4, learning_rate: 0.01}"
LAUNCHED = {"LOCAL_WORLD_SIZE": "2"}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No thread or launcher variables from the shell that runs the tests."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("ACCELERATE_DYNAMO_BACKEND", raising=False)
    return monkeypatch


# -- the arithmetic ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cores", "local", "helpers", "expected"),
    [
        (2, 1, 0, 2),  # one process takes every core
        (2, 2, 0, 1),
        (16, 2, 0, 8),
        (3, 2, 0, 1),  # the odd core stays free rather than oversubscribing
        (1, 4, 0, 1),  # more processes than cores: still one thread each
        (8, 2, 2, 2),  # each process's engine binds 2 cores: (8 - 2*2) / 2
        (2, 1, 2, 1),  # an engine binding every core leaves the trainer one thread
        (0, 0, -1, 1),  # nonsense figures clamp to one thread
    ],
)
def test_auto_shares_the_cores(cores, local, helpers, expected):
    plan = plan_threads(cores, local, helpers)
    assert plan.threads == expected and plan.source == "auto"
    assert plan.cores >= 1 and plan.local_processes >= 1 and plan.helpers >= 0


def test_environment_wins_over_auto_and_the_pipeline_over_both():
    assert plan_threads(16, 2, environ={"OMP_NUM_THREADS": "3"}).threads == 3
    assert plan_threads(16, 2, environ={"OMP_NUM_THREADS": "3"}).source == "env"
    assert plan_threads(16, 1, environ={"MKL_NUM_THREADS": "5"}).threads == 5
    assert plan_threads(16, 1, environ={"OMP_NUM_THREADS": "4,2"}).threads == 4  # nested list
    both = plan_threads(16, 2, setting=6, environ={"OMP_NUM_THREADS": "3"})
    assert (both.threads, both.source) == (6, "pipeline")
    assert plan_threads(16, 1, environ={"OMP_NUM_THREADS": " "}).source == "auto"


def test_a_launchers_one_thread_is_not_a_choice():
    """accelerate launch and torchrun write OMP_NUM_THREADS=1 when the user set nothing."""
    launched = plan_threads(16, 2, environ={"OMP_NUM_THREADS": "1", **LAUNCHED})
    assert (launched.threads, launched.source) == (8, "auto")
    one_proc = {"OMP_NUM_THREADS": "1", "ACCELERATE_DYNAMO_BACKEND": "NO"}
    assert plan_threads(16, 1, environ=one_proc).source == "auto"
    assert plan_threads(16, 1, environ={"OMP_NUM_THREADS": "1"}).source == "env"  # no launcher
    assert plan_threads(16, 2, environ={"OMP_NUM_THREADS": "2", **LAUNCHED}).threads == 2


@pytest.mark.parametrize("value", ["abc", "0", "-2", "2.5"])
def test_a_bad_thread_variable_is_one_precise_error(value):
    with pytest.raises(CatError, match=rf"OMP_NUM_THREADS='{value}' is not a thread count"):
        plan_threads(2, environ={"OMP_NUM_THREADS": value})


def test_cgroup_quota_caps_the_cores(tmp_path):
    assert cgroup_cpu_quota(tmp_path) is None  # nothing readable: no limit
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(tmp_path) == 2  # 1.5 cores round up
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(tmp_path) is None
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    assert cgroup_cpu_quota(tmp_path) == 1
    assert usable_cores(tmp_path) == 1
    assert usable_cores(tmp_path / "none") == len(os.sched_getaffinity(0))


def test_local_processes_come_from_the_launcher():
    assert local_processes({}) == 1
    assert local_processes({"LOCAL_WORLD_SIZE": "4"}) == 4
    assert local_processes({"OMPI_COMM_WORLD_LOCAL_SIZE": "3"}) == 3


def test_vllm_counts_its_engine_process_only_when_it_runs_apart(monkeypatch):
    params = VLLMBackend.Params()
    for name in ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_OMP_THREADS_BIND"):
        monkeypatch.delenv(name, raising=False)
    on_gpu = torch.cuda.is_available()
    assert VLLMBackend.helper_cores(params) == (1 if on_gpu else 0)  # CPU default: in-process
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    assert VLLMBackend.helper_cores(params) == 0
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    if not on_gpu:
        assert VLLMBackend.helper_cores(params) == len(os.sched_getaffinity(0))
        monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0-2,5")
        assert VLLMBackend.helper_cores(params) == 4
        monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0-x,5")
        with pytest.raises(CatError, match=r"VLLM_CPU_OMP_THREADS_BIND='0-x,5' is not a CPU"):
            VLLMBackend.helper_cores(params)


@pytest.mark.parametrize(
    ("cores", "env", "expected"),
    [
        ([0, 1], {}, [0, 1]),  # no launcher: the one engine binds every core
        ([0, 1], {"LOCAL_WORLD_SIZE": "2", "LOCAL_RANK": "1"}, [1]),
        ([0, 1, 2, 3, 4], {"LOCAL_WORLD_SIZE": "2", "LOCAL_RANK": "0"}, [0, 1]),
        ([0, 1, 2, 3, 4], {"LOCAL_WORLD_SIZE": "2", "LOCAL_RANK": "1"}, [2, 3, 4]),
        ([4, 5], {"LOCAL_WORLD_SIZE": "4", "LOCAL_RANK": "3"}, [5]),  # more processes than cores
        ([0, 1], {"LOCAL_WORLD_SIZE": "x", "LOCAL_RANK": "1"}, [0, 1]),
    ],
)
def test_colocated_vllm_engines_bind_their_own_slice_of_cores(cores, env, expected):
    """Two processes that each start an in-process CPU engine must not both bind every core."""
    from cat_plugins.backends.vllm_support import local_core_slice

    assert local_core_slice(cores, env) == expected


@pytest.mark.parametrize("value", ["0", "many", "true", "2.5"])
def test_the_pipeline_key_is_validated(tmp_path, tiny_policy, toy_data, value):
    path = write_pipeline(tmp_path, tiny_policy, toy_data, TRAINER, f"threads: {value}\n")
    with pytest.raises(CatError, match="threads must be 'auto' or a whole number from 1"):
        load_pipeline(path)


# -- real runs --------------------------------------------------------------------------------


class CoreHungryJudge(Backend):
    """A judge that says its helper process keeps one core busy (never asked to generate)."""

    name = "core_hungry_judge"

    class Params(ComponentParams):
        cores: int = Field(1, description="Cores its helper process takes.")

    @classmethod
    def helper_cores(cls, params: Any) -> int:
        return params.cores

    def generate(self, requests):  # pragma: no cover - the run's reward never asks the judge
        raise AssertionError("not used")

    def score(self, contexts, continuations):  # pragma: no cover
        raise AssertionError("not used")


class JudgePlugin:
    @hookimpl
    def register_backends(self, register):
        register(CoreHungryJudge)


def thread_events(run_dir: Path) -> list[dict[str, Any]]:
    return [e for e in read_jsonl(run_dir / "log.jsonl") if e["event"] == "threads"]


def test_a_run_logs_its_share_and_gives_the_caller_its_threads_back(
    tmp_path, tiny_policy, toy_data, clean_env
):
    cores = usable_cores()
    path = write_pipeline(tmp_path, tiny_policy, toy_data, TRAINER)
    before = torch.get_num_threads()
    run(path, tmp_path / "run")
    (event,) = thread_events(tmp_path / "run")
    assert event["torch"] == cores and event["source"] == "auto"
    assert (event["cores"], event["local_processes"], event["helpers"]) == (cores, 1, 0)
    assert torch.get_num_threads() == before

    judge = "device: cpu}\n  judge: {backend: core_hungry_judge, cores: 1}\n"
    path.write_text(path.read_text().replace("device: cpu}\n", judge, 1))
    run(path, tmp_path / "judged", ("judge", JudgePlugin()))
    (event,) = thread_events(tmp_path / "judged")
    assert (event["helpers"], event["torch"]) == (1, max(1, cores - 1))


def test_the_environment_and_the_pipeline_win_in_every_mode(
    tmp_path, tiny_policy, toy_data, clean_env
):
    clean_env.setenv("OMP_NUM_THREADS", "1")
    path = write_pipeline(tmp_path, tiny_policy, toy_data, TRAINER)
    run(path, tmp_path / "env")
    (event,) = thread_events(tmp_path / "env")
    assert (event["source"], event["torch"]) == ("env", torch.get_num_threads())

    sft = path.read_text().replace("mode: train", "mode: sft") + "threads: 1\n"
    path.write_text(sft.replace("reward: {name: programmatic, fallback: number}\n", ""))
    clean_env.setenv("OMP_NUM_THREADS", "2")
    run(path, tmp_path / "pipeline")
    (event,) = thread_events(tmp_path / "pipeline")
    assert (event["source"], event["torch"]) == ("pipeline", 1)

    evaluate = tmp_path / "evaluate.yaml"
    evaluate.write_text(
        "name: threads-eval\nmode: evaluate\nthreads: 1\n"
        f'models:\n  policy: {{backend: transformers, model: "{tiny_policy}", device: cpu}}\n'
        f'data:\n  eval: {{dataset: jsonl, path: "{toy_data}", answer_field: answer}}\n'
        "rollouts: {n: 2, max_new_tokens: 4}\n"
        "eval: {aggregators: [majority], limit: 2, bootstrap: 10}\n"
    )
    run(evaluate, tmp_path / "evaluated")
    (event,) = thread_events(tmp_path / "evaluated")
    assert (event["source"], event["torch"]) == ("pipeline", 1)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_processes_each_take_half_the_cores(tmp_path, tiny_policy, toy_data):
    """Under accelerate launch (which writes OMP_NUM_THREADS=1 itself) each process logs its
    share: usable cores // 2."""
    path = write_pipeline(tmp_path, tiny_policy, toy_data, TRAINER)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["CAT_TENSORBOARD"] = "0"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG)]
    cmd += ["-m", "cat_framework", "run", str(path), "--run-dir", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=220, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = thread_events(tmp_path / "ddp")
    assert len(events) == 2
    for event in events:
        assert event["local_processes"] == 2 and event["source"] == "auto"
        assert event["torch"] == max(1, usable_cores() // 2)
