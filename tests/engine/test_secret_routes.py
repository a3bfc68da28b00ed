"""Secrets by other routes (issue 23, item 6): a key a server echoes in its 401 body, URL
credentials, and keys a pipeline marks secret never reach a run's files, logs or TensorBoard."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cat_framework import BackendError, load_plugins
from cat_framework.pipeline import load_pipeline
from cat_framework.rundir import REDACTED, check_resume, redact
from cat_framework.runner import run_pipeline
from cat_framework.scrub import scrub
from tests.helpers.openai_server import FakeServer, Fault, free_port

KEY = "sk-proj-RUNFILES-0123456789abcdef"
PASSWORD = "hunter2-PASSWORD"
TENANT = "tenant-blob-SECRET-77"  # under a key whose name looks like nothing secret


@pytest.fixture
def echoing_server() -> Iterator[FakeServer]:
    """A server whose every answer is a 401 quoting the key and the request's extra fields."""
    server = FakeServer(free_port())

    def plan(index: int, path: str, body: dict) -> Fault:
        message = f"Incorrect API key provided: {KEY}. Request had x_tenant={body.get('x_tenant')}"
        return Fault(401, json.dumps({"error": {"message": message}}).encode())

    server.plan = plan
    server.start()
    yield server
    server.stop()


def pipeline_text(server: FakeServer, data: Path, marked: bool = True) -> str:
    url = server.url.replace("http://", f"http://alice:{PASSWORD}@")
    return textwrap.dedent(f"""\
        name: secrets
        mode: evaluate
        models:
          policy: {{backend: openai, model: m, base_url: "{url}", api_key: {KEY},
                    max_retries: 0, extra_body: {{x_tenant: {TENANT}}}}}
        data:
          eval: {{dataset: jsonl, path: "{data}", answer_field: answer, id_field: id}}
        rollouts: {{n: 2, max_new_tokens: 8}}
        eval: {{aggregators: [single], batch_size: 2, bootstrap: 10}}
        """) + ("output: {secret_keys: [x_tenant]}\n" if marked else "")


@pytest.mark.parametrize("marked", [False, True])
def test_an_echoed_key_url_credentials_and_marked_keys_never_reach_run_files(
    tmp_path, echoing_server, toy_data, capsys, marked
):
    path = tmp_path / "p.yaml"
    path.write_text(pipeline_text(echoing_server, toy_data, marked))
    leaks = (KEY, PASSWORD, "alice", KEY[8:20]) + ((TENANT,) if marked else ())
    plugins = load_plugins(entry_points=False)
    run_dir = tmp_path / "run"
    with pytest.raises(BackendError) as info:
        run_pipeline(load_pipeline(path, plugins=plugins), plugins=plugins, run_dir=str(run_dir))
    assert KEY not in str(info.value)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed"
    assert "401 (check models.policy.api_key in the pipeline" in status["error"]
    assert "Incorrect API key provided: **********" in status["error"]
    written = [p for p in run_dir.rglob("*") if p.is_file()]
    names = {p.name for p in written}
    assert {"report.html", "log.jsonl", "config.yaml"} <= names
    assert any("tfevents" in n for n in names)  # the TensorBoard observer ran
    for p in written:
        data = p.read_bytes()
        for secret in leaks:
            assert secret.encode() not in data, (p, secret)
    policy = yaml.safe_load((run_dir / "config.yaml").read_text())["models"]["policy"]
    assert policy["base_url"].startswith(f"http://{REDACTED}@127.0.0.1:")
    assert policy["extra_body"] == {"x_tenant": REDACTED if marked else TENANT}
    out = capsys.readouterr()
    for secret in leaks:
        assert secret not in out.out + out.err


def test_redact_masks_url_credentials_marked_keys_and_credential_names():
    config = {
        "output": {"secret_keys": ["X-Org-Pass"]},
        "models": {
            "judge": {
                "base_url": "https://bob:pw@example.org/v1",
                "extra_body": {"x-org-pass": "v1", "cookie": "c", "client_credential": "d"},
                "api_key_env": "OPENAI_API_KEY",
                "model": "https://example.org/plain",
            }
        },
    }
    judge = redact(config)["models"]["judge"]
    assert judge["base_url"] == f"https://{REDACTED}@example.org/v1"
    assert judge["extra_body"] == {
        k: REDACTED for k in ("x-org-pass", "cookie", "client_credential")
    }
    assert judge["model"] == "https://example.org/plain"
    assert redact(config)["output"] == {"secret_keys": ["X-Org-Pass"]}  # names are no secret


def test_a_run_written_before_the_new_masks_still_resumes(tmp_path):
    """A run whose config.yaml holds what is masked only now (URL credentials, a marked key) is
    not refused as a changed pipeline on --resume."""
    old = {
        "mode": "evaluate",
        "models": {"policy": {"base_url": "http://u:p@h/v1", "extra_body": {"x_t": "clear"}}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    (tmp_path / "log.jsonl").write_text('{"event": "run start"}\n')
    new = redact({**old, "output": {"secret_keys": ["x_t"]}})
    assert check_resume(tmp_path, new) == {"output.secret_keys": (None, ["x_t"])}


def test_scrub_masks_echoes_of_a_key_whole_or_in_part():
    key = "my-very-private-key-1234"
    assert scrub(f"bad key {key}!", [key]) == f"bad key {REDACTED}!"
    assert REDACTED in scrub("bad key my-very-pr...1234", [key])
    assert scrub("short keys like EMPTY are not masked", ["EMPTY"]).endswith("not masked")
    assert scrub("see http://a:b@host:8000/v1 and Bearer abcdefghijklmnop") == (
        f"see http://{REDACTED}@host:8000/v1 and Bearer {REDACTED}"
    )
