"""``cat-framework data NAME``: the prompts a dataset yields, as JSON lines (issue 11, item 6)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cat_framework.cli import main
from tests.conftest import DATASETS

HB_SLICE = DATASETS / "healthbench" / "oss_eval_subset500_slice.jsonl"
KEYS = {"id", "messages", "has_gold_answer", "has_rubric"}


@pytest.fixture(autouse=True)
def _fresh_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAT_DATA_DIR", raising=False)
    monkeypatch.setenv("CAT_OFFLINE", "1")
    monkeypatch.setenv("CAT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))  # for subprocesses
    try:  # `datasets` reads its cache folder at import: for this process, set it on its config
        import datasets

        monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    except ImportError:
        pass
    monkeypatch.chdir(tmp_path)


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, list[dict], str]:
    code = 0
    try:
        main(list(argv))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return code, [json.loads(line) for line in out.out.splitlines()], out.err


def test_builtin_prompts_without_gold_values(capsys: pytest.CaptureFixture) -> None:
    code, lines, err = run(capsys, "data", "gsm8k", "--limit", "2")
    assert code == 0, err
    assert [line["id"] for line in lines] == ["gsm8k/test/0", "gsm8k/test/1"]
    assert all(set(line) == KEYS for line in lines)
    assert lines[0]["has_gold_answer"] is True and lines[0]["has_rubric"] is False
    assert lines[0]["messages"][0]["content"].startswith("Janet\u2019s ducks")
    assert "gsm8k: 2 prompts" in err


def test_show_gold(capsys: pytest.CaptureFixture) -> None:
    code, lines, _ = run(capsys, "data", "math500", "--limit", "1", "--show-gold")
    assert code == 0
    assert lines[0]["gold_answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert lines[0]["rubric"] is None


def test_rubrics_are_flagged_and_shown_on_request(capsys: pytest.CaptureFixture) -> None:
    args = ("data", "healthbench", "--set", f"path={HB_SLICE}", "--limit", "1")
    code, lines, _ = run(capsys, *args)
    assert code == 0 and lines[0]["has_rubric"] is True and "rubric" not in lines[0]
    code, lines, _ = run(capsys, *args, "--show-gold")
    assert lines[0]["rubric"][0]["points"] == 8.0
    assert lines[0]["rubric"][0]["criterion"].startswith("Correctly states that mild chest pain")


def test_set_values_are_yaml_and_check_a_mapping(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rows = [{"prompt": "2+2?", "target": 4}, {"prompt": "3+3?", "target": 6}]
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, lines, err = run(
        capsys,
        "data",
        "jsonl",
        "--set",
        "path=mine.jsonl",
        "--set",
        "question_field=prompt",
        "--set",
        "answer_field=target",
        "--set",
        "instruction=",
        "--show-gold",
    )
    assert code == 0, err
    assert [(line["messages"][0]["content"], line["gold_answer"]) for line in lines] == [
        ("2+2?", "4"),
        ("3+3?", "6"),
    ]


def test_bad_mapping_is_one_message(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "mine.jsonl").write_text(json.dumps({"prompt": "x"}) + "\n")
    code, lines, err = run(capsys, "data", "hf", "--set", "path=mine.jsonl")
    assert code == 2 and lines == []
    assert "error: dataset 'hf':" in err and "Traceback" not in err
    assert "no field 'question' (question_field); its fields are: prompt" in err


def test_unknown_parameter_suggests_the_right_one(capsys: pytest.CaptureFixture) -> None:
    code, _, err = run(capsys, "data", "gsm8k", "--set", "spilt=train")
    assert code == 2
    assert "unknown parameter 'spilt' (did you mean 'split'?)" in err
    code, _, err = run(capsys, "data", "gsm8k", "--set", "split=dev")
    assert code == 2 and "split: Input should be 'test' or 'train'" in err


def test_bad_arguments(capsys: pytest.CaptureFixture) -> None:
    code, _, err = run(capsys, "data", "gsm8k", "--set", "nonsense")
    assert code == 2 and "expected KEY=VALUE" in err
    code, _, err = run(capsys, "data", "gsm8k8")
    assert code != 0 and "unknown dataset 'gsm8k8'" in err and "gsm8k" in err
    code, _, err = run(capsys, "data", "gsm8k", "--limit", "0")
    assert code == 2


def test_a_closed_pipe_is_not_an_error(tmp_path: Path) -> None:
    """``cat-framework data gsm8k | head -1`` must end quietly."""
    proc = subprocess.run(
        f"{sys.executable} -m cat_framework data gsm8k | head -n 1",
        shell=True,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert json.loads(proc.stdout)["id"] == "gsm8k/test/0"
    assert "Error" not in proc.stderr and "error" not in proc.stderr, proc.stderr
