"""The Slurm template (pipelines/slurm/cat_multinode.sbatch), run with stand-ins for srun,
scontrol, curl and accelerate: every trainer node launches ``accelerate launch`` with its own
machine rank, the same main address and the same process count; each server node runs
``vllm serve`` and its role is pointed at it; the resulting pipeline validates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cat_framework import load_plugins
from cat_framework.pipeline import load_pipeline

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "pipelines" / "slurm" / "cat_multinode.sbatch"
PIPELINE = REPO / "pipelines" / "healthbench_rubric_rl.yaml"

#: srun: run the command once per node of --nodelist (as a step does), recording its argv
SRUN = textwrap.dedent("""\
    #!{python}
    import json, os, subprocess, sys
    args = sys.argv[1:]
    nodes = next(a.split("=", 1)[1] for a in args if a.startswith("--nodelist=")).split(",")
    command = args[next(i for i, a in enumerate(args) if not a.startswith("--")):]
    server = "vllm" in command
    with open(os.environ["STUB_LOG"], "a") as log:
        entry = {{"srun": "vllm" if server else command[0], "nodes": nodes}}
        log.write(json.dumps({{**entry, "command": command}} if server else entry) + "\\n")
    if server:
        sys.exit(0)
    for rank, node in enumerate(nodes):
        env = {{**os.environ, "SLURM_NODEID": str(rank), "SLURMD_NODENAME": node}}
        subprocess.run(command, env=env, check=True)
    """)
RECORD = textwrap.dedent("""\
    #!{python}
    import json, os, sys
    with open(os.environ["STUB_LOG"], "a") as log:
        log.write(json.dumps({{"argv": [os.path.basename(sys.argv[0]), *sys.argv[1:]]}}) + "\\n")
    """)


def stubs(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        "srun": SRUN.format(python=sys.executable),
        "accelerate": RECORD.format(python=sys.executable),
        "scontrol": "#!/bin/sh\nfor n in $STUB_NODES; do echo $n; done\n",
        "curl": "#!/bin/sh\nexit 0\n",
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def submit(tmp_path: Path, nodes: str, **env: str) -> tuple[subprocess.CompletedProcess, list]:
    log = tmp_path / "calls.jsonl"
    full = {**os.environ, "PATH": f"{stubs(tmp_path)}:{os.environ['PATH']}",
            "STUB_LOG": str(log), "STUB_NODES": nodes, "SLURM_JOB_NODELIST": "gpu[1-3]",
            "SLURM_JOB_ID": "7", **env}  # fmt: skip
    args = ["bash", str(TEMPLATE), str(PIPELINE), "--set", "trainer.steps=2"]
    proc = subprocess.run(args, env=full, capture_output=True, text=True, timeout=60, cwd=REPO)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return proc, calls


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_trainer_nodes_get_their_ranks_and_a_server_serves_the_judge(tmp_path):
    proc, calls = submit(tmp_path, "gpu1 gpu2 gpu3", TRAIN_NODES="2", SERVE_MODEL="Qwen/Qwen3-4B")
    assert proc.returncode == 0, proc.stderr
    assert [c["nodes"] for c in calls if c.get("srun") == "vllm"] == [["gpu3"]]
    launches = [c["argv"] for c in calls if "argv" in c]
    assert [option(a, "--machine_rank") for a in launches] == ["0", "1"]
    for argv in launches:
        assert argv[:2] == ["accelerate", "launch"]
        assert option(argv, "--num_machines") == "2"
        assert option(argv, "--num_processes") == "16"  # 8 GPUs per node
        assert option(argv, "--main_process_ip") == "gpu1"
        assert option(argv, "--rdzv_conf") == "timeout=600"
        assert option(argv, "--config_file") == "pipelines/accelerate/fsdp2_multinode.yaml"
        assert option(argv, "--run-dir") == "runs/cat-7"
    run_args = launches[0][launches[0].index(str(PIPELINE)) + 1 :]
    assert run_args[:4] == ["--run-dir", "runs/cat-7", "--set", "trainer.steps=2"]
    overrides = [run_args[i + 1] for i, a in enumerate(run_args) if a == "--set"]
    assert overrides[1].startswith("models.judge={backend: openai, base_url: 'http://gpu3:8000/v1'")
    pipeline = load_pipeline(PIPELINE, overrides, plugins=load_plugins(entry_points=False))
    judge = pipeline.component("models", "judge")
    assert judge.name == "openai" and judge.params.base_url == "http://gpu3:8000/v1"


def test_training_nodes_only(tmp_path):
    proc, calls = submit(tmp_path, "gpu1 gpu2", TRAIN_NODES="2", RENDEZVOUS_TIMEOUT="120")
    assert proc.returncode == 0, proc.stderr
    launches = [c["argv"] for c in calls if "argv" in c]
    assert len(launches) == 2 and not any(c.get("srun") == "vllm" for c in calls)
    assert option(launches[1], "--rdzv_conf") == "timeout=120"
    assert "--set" in launches[0] and "models.judge" not in " ".join(launches[0])


@pytest.mark.parametrize(
    ("nodes", "env", "message"),
    [
        ("gpu1 gpu2 gpu3", {"TRAIN_NODES": "1"}, "M <= the number of roles"),
        ("gpu1 gpu2", {"TRAIN_NODES": "1"}, "set SERVE_MODEL"),
    ],
)
def test_a_wrong_allocation_is_refused_before_anything_starts(tmp_path, nodes, env, message):
    proc, calls = submit(tmp_path, nodes, **env)
    assert proc.returncode == 2 and message in proc.stderr
    assert calls == []


def test_policy_server_nodes_are_replicas_fed_the_trainers_weights(tmp_path):
    run_dir = tmp_path / "runs" / "job"
    proc, calls = submit(tmp_path, "gpu1 gpu2 gpu3", TRAIN_NODES="1", SERVE_MODEL="Qwen/Qwen3-4B",
                         SERVE_ROLES="policy policy", RUN_DIR=str(run_dir))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    servers = [c for c in calls if c.get("srun") == "vllm"]
    assert sorted(c["nodes"] for c in servers) == [["gpu2"], ["gpu3"]]  # started in background
    for c in servers:
        command = c["command"]
        assert command[:2] == ["env", "VLLM_SERVER_DEV_MODE=1"]
        assert option(command, "--weight-transfer-config") == '{"backend": "cat_file"}'
        assert option(command, "--worker-extension-cls").endswith("CatWorkerExtension")
        # what the vllm-server backend expects of its servers (as serve-command prints it)
        assert option(command, "--logprobs-mode") == "processed_logprobs"
        assert option(command, "--generation-config") == "vllm"
    [launch] = [c["argv"] for c in calls if "argv" in c]
    run_args = launch[launch.index(str(PIPELINE)) + 1 :]
    overrides = [run_args[i + 1] for i, a in enumerate(run_args) if a == "--set"]
    pipeline = load_pipeline(PIPELINE, overrides, plugins=load_plugins(entry_points=False))
    policy = pipeline.component("models", "policy")
    assert policy.name == "vllm-server"
    assert policy.params.urls == ["http://gpu2:8000", "http://gpu3:8000"]
    assert policy.params.transfer_dir == f"{run_dir}.weights"  # beside the run, shared
    assert Path(f"{run_dir}.weights").is_dir()
