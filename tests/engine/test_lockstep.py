"""The lock-step agreement without a process group: two threads stand for two processes (an
all-reduce built on a barrier), each with its own policy and pi_0 backends. Whatever each one
generates or scores, both run the same sequence of forwards on the same modules (what FSDP2's
per-layer all-gathers need), and every result equals generation without lock-step.
The 2-process FSDP2 runs are in test_placement_equivalence.py and test_placement_edges.py."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch

from cat_framework.components import TrainableBackend
from cat_framework.engine.lockstep import Lockstep
from cat_framework.types import GenerationRequest
from cat_plugins.backends.transformers_backend import TransformersBackend
from tests.plugins.backends.conftest import build_tiny_model, build_tiny_tokenizer


class ThreadAllReduce:
    """``all_reduce(MAX)`` between threads: each rank's flags in, the element-wise max out."""

    def __init__(self, world: int) -> None:
        self.barrier = threading.Barrier(world, timeout=60)  # a mismatch fails, never hangs
        self.slots: list[torch.Tensor | None] = [None] * world

    def for_rank(self, rank: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def reduce(flags: torch.Tensor) -> torch.Tensor:
            self.slots[rank] = flags.clone()
            self.barrier.wait()
            out = torch.stack(self.slots).amax(0)  # type: ignore[arg-type]
            self.barrier.wait()  # nobody overwrites a slot before all have read
            return out

        return reduce


def request(text: str, n: int, max_new: int, seed: int) -> GenerationRequest:
    return GenerationRequest(
        text=text, n=n, temperature=1.0, max_new_tokens=max_new, seed=seed, stop=("q", "x")
    )


@pytest.fixture(scope="module")
def models() -> tuple[Any, torch.nn.Module, torch.nn.Module]:
    tok = build_tiny_tokenizer()
    return tok, build_tiny_model(len(tok), seed=1), build_tiny_model(len(tok), seed=2)


def rank_backends(models, log: list[str]) -> tuple[TrainableBackend, TrainableBackend]:
    """This 'process's' policy and pi_0, recording every forward their modules run."""
    tok, policy, pi0 = models
    backends = []
    for tag, model in (("policy", policy), ("pi0", pi0)):
        model = copy.deepcopy(model)
        model.register_forward_pre_hook(lambda *_, tag=tag: log.append(tag))
        backends.append(TransformersBackend.from_model(model, tok, {"max_batch_tokens": 48}))
    return backends[0], backends[1]


WORK = {  # rank -> what it does: uneven on purpose (rank 1 has no policy prompt at all)
    0: lambda policy, pi0: [
        policy.generate([request("hello world " * 6, 3, 12, 1), request("a", 2, 20, 2)]),
        pi0.generate([request("the", 1, 5, 3)]),
    ],
    1: lambda policy, pi0: [
        policy.generate([]),
        pi0.score(["and"], ["hello"]),
        pi0.generate([request("ing and the", 4, 16, 4)]),
        pi0.generate([request("x", 1, 3, 5)]),
    ],
}


def test_every_rank_runs_the_same_forwards_and_gets_the_unsynchronised_results(models):
    reduce = ThreadAllReduce(2)
    logs: dict[int, list[str]] = {0: [], 1: []}
    results: dict[int, Any] = {}
    errors: list[BaseException] = []
    locks: dict[int, Lockstep] = {}

    def rank(r: int) -> None:
        try:
            policy, pi0 = rank_backends(models, logs[r])
            lock = locks[r] = Lockstep("cpu", reduce=reduce.for_rank(r))
            lock.attach(policy)
            lock.attach(pi0)
            results[r] = WORK[r](policy, pi0)
            lock.drain()
        except BaseException as exc:
            errors.append(exc)
            reduce.barrier.abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert logs[0] == logs[1] and {"policy", "pi0"} <= set(logs[0])
    assert locks[0].idle_forwards > 0 and locks[1].idle_forwards > 0
    assert locks[0].forwards + locks[0].idle_forwards == len(logs[0])
    for r in (0, 1):  # the same results as each backend alone, without lock-step
        policy, pi0 = rank_backends(models, [])
        plain = WORK[r](policy, pi0)
        assert results[r] == plain


def test_without_a_hook_a_backend_runs_no_agreement(models):
    log: list[str] = []
    policy, _ = rank_backends(models, log)
    assert policy.lockstep is None and TransformersBackend.supports_lockstep()
    policy.generate([request("a", 1, 3, 0)])
    assert log == ["policy"] * len(log) and log


def test_a_backend_without_idle_forward_cannot_generate_in_lockstep():
    class NoIdle(TransformersBackend):
        idle_forward = TrainableBackend.idle_forward

    assert not NoIdle.supports_lockstep()


class ShardingAccelerator:
    """What build_placement reads of an accelerator that shards with FSDP2 over 2 processes."""

    is_fsdp2 = True
    num_processes = 2
    device = torch.device("cpu")


def lockstep_policy(tmp_path, tiny_policy, toy_data, trainer: str):
    from cat_framework import load_plugins
    from cat_framework.engine.placement import build_placement
    from cat_framework.pipeline import load_pipeline
    from cat_framework.pipeline.build import BackendPool
    from tests.engine.test_trainer import write_pipeline

    plugins = load_plugins(entry_points=False)
    path = write_pipeline(tmp_path, tiny_policy, toy_data, trainer)
    pipeline = load_pipeline(path, plugins=plugins)
    return build_placement(
        pipeline, plugins, BackendPool(), ShardingAccelerator(), need_frozen=False
    )


def test_without_gathering_the_sharded_policy_samples_itself(tmp_path, tiny_policy, toy_data):
    trainer = "{steps: 1, prompts_per_step: 2, fsdp_gather_for_generation: false}"
    policy = lockstep_policy(tmp_path, tiny_policy, toy_data, trainer)
    assert policy.topology == "on-shards" and policy.sampler is policy.trainable
    assert policy.lockstep is not None and policy.trainable.lockstep is not None
    assert not policy.pushes_weights  # nothing to refill after a step


def test_lockstep_with_lora_is_refused_with_the_alternative(tmp_path, tiny_policy, toy_data):
    from cat_framework.errors import CatError

    trainer = "{steps: 1, prompts_per_step: 2, fsdp_gather_for_generation: false, lora: {r: 4}}"
    with pytest.raises(CatError, match=r"fsdp_gather_for_generation: false(?s:.*)lora(?s:.*)true"):
        lockstep_policy(tmp_path, tiny_policy, toy_data, trainer)


SHARDED_ALONE = """
import os, sys, torch, torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from cat_framework import GenerationRequest
from cat_plugins.backends.transformers_backend import TransformersBackend

os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
dist.init_process_group("gloo", rank=0, world_size=1)
backend = TransformersBackend({"model": sys.argv[1], "device": "cpu"})
fully_shard(backend.model)  # one process: no lockstep hook, but sharded weights all the same
backend.generate([GenerationRequest(text="a b", n=2, max_new_tokens=4, seed=1)])
ids = torch.tensor([[1, 5, 6]])
backend.model(input_ids=ids, labels=ids).loss.backward()  # training reuses what generate gathered
dist.destroy_process_group()
print("ok")
"""


def test_a_sharded_module_in_one_process_generates_and_then_trains(tmp_path, tiny_policy):
    """FSDP2 with one process (``accelerate launch --num_processes 1`` with an FSDP2 config):
    generation must not turn the gathered weights into inference tensors."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    script = tmp_path / "alone.py"
    script.write_text(SHARDED_ALONE)
    proc = subprocess.run(
        [sys.executable, str(script), str(tiny_policy), port],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]
