"""The `cat-framework` command, run as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    full_env = {**os.environ, **(env or {})}
    full_env.pop("CAT_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "cat_framework", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd or REPO,
        timeout=300,
    )


THREE_MISTAKES = """\
name: three-mistakes
mode: train
models:
  policy: {backend: transformers, model: default}
data:
  train: {dataset: gsm8k, limit: 4}
rollouts:
  n: -1
aggregator:
  name: synthsis
reward: {name: programmatic}
trainer:
  steps: 2
  learnig_rate: 1.0e-6
"""


def test_validate_reports_three_errors_without_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(THREE_MISTAKES)
    res = cli("validate", str(path))
    assert res.returncode == 2, res.stderr
    out = res.stderr
    assert "Traceback" not in out
    assert "bad.yaml: 3 errors" in out
    assert f"{path}:8:3: rollouts.n:" in out
    assert (
        f"{path}:10:3: aggregator.name: unknown aggregator 'synthsis'. Did you mean 'synthesis'?"
        in out
    )
    assert (
        f"{path}:14:3: trainer.learnig_rate: unknown key 'learnig_rate'. Did you mean 'learning_rate'?"
        in out
    )


def test_validate_malformed_yaml_shows_line_and_column(tmp_path):
    path = tmp_path / "indent.yaml"
    path.write_text("name: x\nmode: train\nmodels:\n  policy: default\n   bad: 1\n")
    res = cli("validate", str(path))
    assert res.returncode == 2
    assert f"{path}:5:7: YAML syntax error" in res.stderr
    assert "Traceback" not in res.stderr


def test_validate_refuses_a_placement_the_trainer_would_refuse(tmp_path):
    """A policy on a server that cannot receive weights cannot be trained: validate says so
    before any model loads, with the run's own message."""
    path = tmp_path / "remote.yaml"
    path.write_text(
        "name: remote\nmode: train\nmodels: {policy: {backend: openai, model: gpt-4o}}\n"
        "data: {train: {dataset: gsm8k, limit: 4}}\naggregator: single\nreward: programmatic\n"
    )
    res = cli("validate", str(path))
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"{path}: models.policy: backend 'openai' cannot receive the trainer's weights" in (
        res.stderr
    )
    assert "Traceback" not in res.stderr


def test_validate_refuses_lora_on_the_shards(tmp_path):
    """``fsdp_gather_for_generation: false`` only means something under FSDP2: validate checks
    it as a sharded run would, before any launch."""
    path = tmp_path / "shards.yaml"
    path.write_text(
        "name: shards\nmode: train\nmodels: {policy: default}\n"
        "data: {train: {dataset: gsm8k, limit: 4}}\naggregator: single\nreward: programmatic\n"
        "trainer: {fsdp_gather_for_generation: false, lora: {r: 4}}\n"
    )
    res = cli("validate", str(path))
    assert res.returncode == 2, res.stdout + res.stderr
    assert "fsdp_gather_for_generation: false does not support trainer.lora" in res.stderr


def test_validate_many_files_exit_code(tmp_path):
    good = REPO / "pipelines" / "quickstart.yaml"
    bad = tmp_path / "bad.yaml"
    bad.write_text(THREE_MISTAKES)
    res = cli("validate", str(good), str(bad))
    assert res.returncode == 2
    assert f"{good}: valid" in res.stdout


def test_set_override_fixes_an_error(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        THREE_MISTAKES.replace("learnig_rate", "learning_rate").replace("synthsis", "synthesis")
    )
    assert cli("validate", str(path)).returncode == 2
    res = cli("validate", str(path), "--set", "rollouts.n=2")
    assert res.returncode == 0, res.stderr


def test_plugins_json_lists_builtins():
    res = cli("plugins")
    assert res.returncode == 0, res.stderr
    records = json.loads(res.stdout)
    by_name = {r["name"]: r for r in records}
    agg = by_name["cat_plugins.aggregators"]
    assert agg["builtin"] and agg["status"] == "loaded" and agg["distribution"] == "cat-framework"
    assert {"synthesis", "majority", "single"} <= set(agg["components"]["aggregator"])
    assert "register_aggregators" in agg["hooks"]


def test_plugins_table_and_failed_plugin_keep_cli_working(tmp_path):
    site = tmp_path / "site"
    info = site / "cat_broken-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cat-broken\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[cat_framework]\nbroken = cat_broken\n")
    (site / "cat_broken.py").write_text("raise ImportError('this plugin is broken on purpose')\n")
    env = {"PYTHONPATH": str(site)}
    res = cli("plugins", env=env)
    assert res.returncode == 0, res.stderr
    broken = next(r for r in json.loads(res.stdout) if r["name"] == "broken")
    assert broken["status"] == "failed" and "broken on purpose" in broken["errors"][0]
    table = cli("plugins", "--table", env=env)
    assert table.returncode == 0 and "failed" in table.stdout and "cat-broken" in table.stdout
    assert cli("components", "aggregators", env=env).returncode == 0
    strict = cli("plugins", env={**env, "CAT_STRICT_PLUGINS": "1"})
    assert strict.returncode == 1 and "broken on purpose" in strict.stderr
    assert "Traceback" not in strict.stderr


def test_components_lists_params_with_descriptions():
    res = cli("components", "aggregators")
    assert res.returncode == 0, res.stderr
    assert "synthesis" in res.stdout and "question_aware" in res.stdout
    data = json.loads(cli("components", "datasets", "--json").stdout)
    gsm8k = next(d for d in data["dataset"] if d["name"] == "gsm8k")
    assert gsm8k["plugin"] == "cat_plugins.datasets"
    assert all("description" in p for p in gsm8k["params"]["properties"].values())


def test_run_of_unavailable_or_invalid_pipeline_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(THREE_MISTAKES)
    res = cli("run", str(path))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "error:" in res.stderr and "3 errors" in res.stderr
    assert not (tmp_path / "runs").exists()


def test_debug_shows_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(THREE_MISTAKES)
    res = cli("--debug", "run", str(path))
    assert "Traceback" in res.stderr


def test_version_and_help():
    assert cli("--version").stdout.startswith("cat-framework, version")
    res = cli("--help")
    assert res.returncode == 0 and "validate" in res.stdout and "plugins" in res.stdout


def test_console_script_installed():
    exe = Path(sys.executable).parent / "cat-framework"
    if not exe.exists():
        pytest.skip("console script not on this interpreter's bin dir")
    res = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0


def test_unknown_command_is_usage_error():
    res = cli("frobnicate")
    assert res.returncode == 2 and "No such command" in res.stderr


def test_missing_pipeline_file():
    res = cli("validate", "does-not-exist.yaml")
    assert res.returncode == 2 and "file not found" in res.stderr


@pytest.fixture(scope="session")
def example_plugin_installed():
    """Install the example third-party plugin (editable), as a user would."""
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-e",
            str(REPO / "plugins" / "cat-agg-confidence"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr


def test_example_plugin_listed_and_usable(example_plugin_installed, tmp_path):
    records = json.loads(cli("plugins").stdout)
    rec = next(r for r in records if r["name"] == "confidence_vote")
    assert rec["distribution"] == "cat-agg-confidence" and rec["version"] == "0.1.0"
    assert rec["status"] == "loaded" and rec["components"] == {"aggregator": ["confidence_vote"]}
    path = tmp_path / "uses_plugin.yaml"
    path.write_text(
        textwrap.dedent("""\
        name: uses-plugin
        mode: evaluate
        requires: [cat-agg-confidence]
        models:
          policy: default
        data:
          eval: {dataset: gsm8k, limit: 2}
        eval:
          aggregators: [majority, {name: confidence_vote, sharpness: 2.0}]
    """)
    )
    res = cli("validate", str(path))
    assert res.returncode == 0, res.stderr
    none = cli("validate", str(path), env={"CAT_LOAD_PLUGINS": ""})
    assert none.returncode == 2 and "confidence_vote" in none.stderr
    only = json.loads(cli("plugins", env={"CAT_LOAD_PLUGINS": "cat-agg-confidence"}).stdout)
    assert next(r for r in only if r["name"] == "confidence_vote")["status"] == "loaded"


# -- plugins stay isolated and blamed correctly ---------------------------------------------------


def _site(tmp_path: Path, dist: str, ep: str, modules: dict[str, str]) -> Path:
    """A throw-away installed distribution (dist-info with a real entry point) under tmp/site."""
    site = tmp_path / "site"
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[cat_framework]\n{ep}\n")
    for name, source in modules.items():
        (site / f"{name}.py").write_text(textwrap.dedent(source))
    return site


def test_plugin_exiting_or_printing_at_import_keeps_every_command_working(tmp_path):
    _site(tmp_path, "cat-quit", "quit = cat_quit", {"cat_quit": "import sys\nsys.exit(3)\n"})
    site = _site(
        tmp_path, "cat-chatty", "chatty = cat_chatty", {"cat_chatty": "print('Welcome!')\n"}
    )
    env = {"PYTHONPATH": str(site)}
    res = cli("plugins", env=env)
    assert res.returncode == 0, res.stderr
    by_name = {r["name"]: r for r in json.loads(res.stdout)}  # the print did not corrupt it
    assert by_name["quit"]["status"] == "failed"
    assert by_name["quit"]["errors"] == ["import failed: called sys.exit(3)"]
    assert by_name["chatty"]["status"] == "loaded" and by_name["chatty"]["output"] == "Welcome!\n"
    assert "Welcome!" in cli("plugins", "--table", env=env).stdout
    components = cli("components", "datasets", "--json", env=env)
    assert components.returncode == 0 and json.loads(components.stdout)["dataset"]
    good = cli("validate", str(REPO / "pipelines" / "quickstart.yaml"), env=env)
    assert good.returncode == 0, good.stderr
    strict = cli("components", env={**env, "CAT_STRICT_PLUGINS": "1"})
    assert strict.returncode == 1 and "Traceback" not in strict.stderr
    assert "plugin 'quit': import failed: called sys.exit(3)" in strict.stderr


BOOM_DATASET = """
from cat_framework import Dataset, hookimpl

class BoomData(Dataset):
    \"\"\"Fails to load.\"\"\"
    name = "boom_data"
    def load(self):
        raise ValueError("the shard index is corrupt")

@hookimpl
def register_datasets(register):
    register(BoomData)
"""


def test_error_inside_a_plugin_component_is_blamed_on_its_distribution(tmp_path):
    site = _site(tmp_path, "cat-boom", "boom = cat_boom", {"cat_boom": BOOM_DATASET})
    path = tmp_path / "p.yaml"
    path.write_text(
        "name: boom\nmode: evaluate\nmodels:\n  policy: default\n"
        "data:\n  eval: {dataset: boom_data}\neval:\n  aggregators: [majority]\n"
    )
    res = cli("run", str(path), "--run-dir", str(tmp_path / "run"), env={"PYTHONPATH": str(site)})
    assert res.returncode == 1, res.stderr
    assert (
        "error in plugin cat-boom (dataset boom_data): ValueError: the shard index is corrupt"
        in res.stderr
    )
    assert "report it to that plugin's authors" in res.stderr
    assert "please report it to cat-framework" not in res.stderr and "Traceback" not in res.stderr


# -- report: bad run directories and outputs ----------------------------------------------------


def _run_dir(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "config.yaml").write_text("name: tiny\nmode: evaluate\n")
    (root / "log.jsonl").write_text('{"event": "run start", "level": "info"}\n')
    return root


def test_report_refuses_a_directory_that_is_not_a_run(tmp_path):
    runs = tmp_path / "runs"
    _run_dir(runs / "tiny-1")
    res = cli("report", str(runs))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"{runs} is not a run directory: it has no config.yaml" in res.stderr
    assert "It holds runs: tiny-1; pass one of them." in res.stderr
    assert not (runs / "report.html").exists()
    (runs / "config.yaml").write_text("name: x\n")
    res = cli("report", str(runs))
    assert res.returncode == 2 and "the run never started" in res.stderr
    assert cli("report", str(runs / "tiny-1")).returncode == 0


def test_report_to_an_unwritable_output_is_a_clear_error(tmp_path):
    run = _run_dir(tmp_path / "run")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    res = cli("report", str(run), "-o", str(blocker / "report.html"))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert f"error: cannot write the report to {blocker / 'report.html'}" in res.stderr
    assert f"{blocker} is a file, not a folder; choose a writable path with -o/--output" in (
        res.stderr
    )
    assert "unexpected" not in res.stderr
    into_dir = cli("report", str(run), "-o", str(tmp_path))
    assert into_dir.returncode == 0, into_dir.stderr
    assert (tmp_path / "report.html").is_file()


def test_an_error_message_is_bounded_in_size(monkeypatch, capsys):
    """A message that quotes hostile input (a value, a file's text) never prints megabytes."""
    from cat_framework import cli as cli_module
    from cat_framework.errors import CatError

    def fail(*args, **kwargs):
        raise CatError("bad value: " + "x" * 10**6)

    monkeypatch.setattr(cli_module.cli, "main", fail)
    with pytest.raises(SystemExit):
        cli_module.main(["validate", "p.yaml"])
    err = capsys.readouterr().err
    assert err.startswith("error: bad value: xxx") and len(err) < 10_200
    assert "(990,011 more characters; --debug shows them)" in err
