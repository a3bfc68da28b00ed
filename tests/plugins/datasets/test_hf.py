"""``dataset: hf`` on local parquet/jsonl/csv files and folders through ``datasets.load_dataset``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from cat_framework import Criterion
from cat_plugins.datasets.common import DEFAULT_MATH_INSTRUCTION, DatasetFileError
from cat_plugins.datasets.hf import HfDataset

datasets = pytest.importorskip("datasets")
pd = pytest.importorskip("pandas")

ROWS = [
    {"q": "1+1?", "sol": "1+1=2, so \\boxed{2}", "uid": "a1"},
    {"q": "2+3?", "sol": "#### 5", "uid": "a2"},
    {"q": "3*3?", "sol": "9", "uid": "a3"},
]
CHAT = [
    {
        "conv": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "I have a headache, what should I do?"},
        ],
        "crit": ["Asks about red flags", "Suggests rest"],
        "key": "c1",
    },
    {
        "conv": [{"role": "user", "content": "Is coffee bad for me?"}],
        "crit": ["Mentions moderation"],
        "key": "c2",
    },
]


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.delenv("CAT_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_local_parquet_with_field_mapping(tmp_path: Path) -> None:
    pd.DataFrame(ROWS).to_parquet(tmp_path / "qs.parquet")
    params = {"path": "qs.parquet", "question_field": "q", "answer_field": "sol"}
    prompts = HfDataset({**params, "id_field": "uid", "extract_gold": True}).load()
    assert [p.id for p in prompts] == ["a1", "a2", "a3"]
    assert [p.gold_answer for p in prompts] == ["2", "5", "9"]
    assert prompts[0].messages == (
        {"role": "user", "content": "1+1?\n" + DEFAULT_MATH_INSTRUCTION},
    )
    assert prompts[0].meta == {"dataset": "hf", "task": "math", "index": 0}
    default_ids = HfDataset({**params, "limit": 2}).load()
    assert [p.id for p in default_ids] == ["qs/0", "qs/1"]
    assert [p.gold_answer for p in default_ids] == ["1+1=2, so \\boxed{2}", "#### 5"]  # verbatim


def test_local_jsonl_freeform_conversations_with_rubrics(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "chat.jsonl", CHAT)
    dataset = HfDataset(
        {
            "path": str(tmp_path / "chat.jsonl"),
            "task": "freeform",
            "messages_field": "conv",
            "rubric_field": "crit",
            "id_field": "key",
        }
    )
    assert dataset.task_kind == "freeform"
    first, second = dataset.load()
    assert first.id == "c1" and first.messages == tuple(CHAT[0]["conv"])  # no instruction
    assert first.rubric == (Criterion("Asks about red flags"), Criterion("Suggests rest"))
    assert second.rubric == (Criterion("Mentions moderation"),)
    assert first.gold_answer is None


def test_a_folder_of_files_and_csv(tmp_path: Path) -> None:
    folder = tmp_path / "set"
    folder.mkdir()
    pd.DataFrame(ROWS[:2]).to_parquet(folder / "part-0.parquet")
    pd.DataFrame(ROWS[2:]).to_parquet(folder / "part-1.parquet")
    prompts = HfDataset({"path": "set", "question_field": "q", "id_field": "uid"}).load()
    assert sorted(p.id for p in prompts) == ["a1", "a2", "a3"]
    pd.DataFrame(ROWS).to_csv(tmp_path / "qs.csv", index=False)
    prompts = HfDataset({"path": "qs.csv", "question_field": "q"}).load()
    assert [p.id for p in prompts] == ["qs/0", "qs/1", "qs/2"]


def test_bad_mapping_names_the_missing_fields_and_those_present(tmp_path: Path) -> None:
    pd.DataFrame(ROWS).to_parquet(tmp_path / "qs.parquet")
    with pytest.raises(DatasetFileError) as info:
        HfDataset({"path": "qs.parquet", "answer_field": "answer"}).load()
    message = str(info.value)
    assert "has no field 'question' (question_field) or 'answer' (answer_field)" in message
    assert "its fields are: q, sol, uid" in message
    assert str(tmp_path / "qs.parquet") in message
    with pytest.raises(DatasetFileError, match=r"no field 'conversation' \(messages_field\)"):
        HfDataset({"path": "qs.parquet", "messages_field": "conversation"}).load()


def test_a_bad_row_names_the_row(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "x.jsonl", [{"q": "fine"}, {"q": ""}])
    with pytest.raises(DatasetFileError, match=r"x\.jsonl \(split 'train'\): record 1: field 'q'"):
        HfDataset({"path": "x.jsonl", "question_field": "q"}).load()


def test_limit_and_seeded_shuffle(tmp_path: Path) -> None:
    rows = [{"question": f"q{i}"} for i in range(20)]
    write_jsonl(tmp_path / "many.jsonl", rows)
    first = HfDataset({"path": "many.jsonl", "limit": 3}).load()
    assert [p.id for p in first] == ["many/0", "many/1", "many/2"]
    a = HfDataset({"path": "many.jsonl", "limit": 3, "shuffle": True, "seed": 1}).load()
    b = HfDataset({"path": "many.jsonl", "limit": 3, "shuffle": True, "seed": 1}).load()
    assert [p.id for p in a] == [p.id for p in b] != [p.id for p in first]


def test_missing_local_path_and_unknown_type(tmp_path: Path) -> None:
    check = {"check_files": True}
    with pytest.raises(ValidationError, match=r"no such file or folder \(tried .*nope\.parquet"):
        HfDataset.Params.model_validate({"path": "nope.parquet"}, context=check)
    with pytest.raises(DatasetFileError, match="no such file or folder"):
        HfDataset({"path": "./nope"}).load()
    (tmp_path / "data.txt").write_text("x\n")
    with pytest.raises(DatasetFileError, match=r"unknown file type '\.txt'; use one of \.parquet"):
        HfDataset({"path": "data.txt"}).load()
    # a hub id is not checked against the disk (and validation never goes online)
    assert HfDataset.Params.model_validate({"path": "openai/gsm8k"}, context=check)


def test_hub_id_passes_name_split_and_revision(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def fake_load(*args: Any, **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        return datasets.Dataset.from_list([{"question": "What is 2+2?", "answer": "#### 4"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    params = {"path": "openai/gsm8k", "name": "main", "split": "test", "revision": "abc123"}
    (prompt,) = HfDataset({**params, "answer_field": "answer", "extract_gold": True}).load()
    assert calls == [(("openai/gsm8k", "main"), {"split": "test", "revision": "abc123"})]
    assert prompt.id == "gsm8k/test/0" and prompt.gold_answer == "4"

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", failing)
    with pytest.raises(DatasetFileError) as info:
        HfDataset(params).load()
    assert str(info.value).startswith(
        "dataset 'hf': cannot load openai/gsm8k@abc123 (split 'test'): ConnectionError: Couldn't"
    )
