"""``cat-framework serve-command``: the servers a pipeline's backends expect, as the exact
commands to start them (the real server tests start what it prints:
tests/engine/test_server_placement.py)."""

from __future__ import annotations

import shlex

from click.testing import CliRunner

from cat_framework.cli import cli

POLICY = (
    "{backend: vllm-server, model: org/model, urls: [http://10.0.0.5:8001/v1, "
    "http://10.0.0.6:8002], dtype: bfloat16, max_model_len: 4096, "
    "server_args: [--tensor-parallel-size, '2'], transfer_dir: /shared/w}"
)


def pipeline(tmp_path, policy: str = POLICY):
    path = tmp_path / "p.yaml"
    path.write_text(
        f"name: served\nmode: train\nmodels:\n  policy: {policy}\n"
        "data:\n  train: {dataset: arithmetic, count: 4}\n"
        "rollouts: {n: 2, max_new_tokens: 8}\ntrainer: {steps: 1, prompts_per_step: 2}\n"
        "aggregator: {name: majority}\nreward: {name: programmatic}\n"
    )
    return path


def test_one_line_per_replica_with_everything_the_backend_needs(tmp_path):
    result = CliRunner().invoke(cli, ["serve-command", str(pipeline(tmp_path))])
    assert result.exit_code == 0, result.output
    lines = [x for x in result.output.splitlines() if not x.startswith("#")]
    assert len(lines) == 2
    for line, host, port in zip(lines, ("10.0.0.5", "10.0.0.6"), ("8001", "8002"), strict=True):
        argv = shlex.split(line)
        assert argv[0] == "VLLM_SERVER_DEV_MODE=1"
        flags = dict(zip(argv[4::2], argv[5::2], strict=False))
        assert argv[1:4] == ["python", "-m", "vllm.entrypoints.openai.api_server"]
        assert flags["--model"] == "org/model" and flags["--host"] == host
        assert flags["--port"] == port and flags["--dtype"] == "bfloat16"
        assert flags["--max-model-len"] == "4096"
        assert flags["--weight-transfer-config"] == '{"backend": "cat_file"}'
        assert flags["--logprobs-mode"] == "processed_logprobs"
        assert flags["--tensor-parallel-size"] == "2"
    assert "# models.policy: http://10.0.0.5:8001" in result.output


def test_a_pipeline_without_servers_says_so(tmp_path):
    result = CliRunner().invoke(cli, ["serve-command", "quickstart"])
    assert result.exit_code == 0
    assert "no backend of this pipeline expects a server" in result.output


def test_a_bad_url_is_one_clear_error(tmp_path):
    bad = pipeline(tmp_path, "{backend: vllm-server, model: m, urls: [gpu-node:8000]}")
    result = CliRunner().invoke(cli, ["serve-command", str(bad)])
    assert result.exit_code == 2
    assert "models.policy" in result.output and "http://" in result.output
    assert "Traceback" not in result.output


def test_two_roles_asking_for_different_servers_at_one_url_are_refused(tmp_path):
    path = pipeline(tmp_path)
    endpoint = "{backend: openai, base_url: 'http://10.0.0.5:8001/v1', serve_model: other/model}"
    path.write_text(path.read_text().replace("models:\n", f"models:\n  judge: {endpoint}\n"))
    result = CliRunner().invoke(cli, ["serve-command", str(path)])
    assert result.exit_code == 2
    assert "need different servers at http://10.0.0.5:8001" in result.output


NO_VLLM = """\
import sys
from cat_plugins.backends.vllm_server import VLLMServerBackend
params = VLLMServerBackend.Params(model="org/model", urls=["http://127.0.0.1:8000"])
print(VLLMServerBackend.server_commands(params)[0].shell())
sys.exit(3 if "vllm" in sys.modules else 0)
"""


def test_the_trainer_side_never_imports_vllm():
    """A trainer feeding servers needs no vLLM of its own (only the servers run it)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", NO_VLLM], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '"backend": "cat_file"' in proc.stdout
