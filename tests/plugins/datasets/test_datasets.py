"""Built-in datasets against real files: the copies the package ships (MATH-500, GSM8K test),
verbatim slices of the others committed under ``tests/data/datasets`` (the data folder here), and
small temporary files.

Downloads are off here (``CAT_OFFLINE=1``, an empty cache): these tests read local files only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from cat_framework import Criterion, load_plugins
from cat_plugins.datasets.common import DEFAULT_MATH_INSTRUCTION, PACKAGE_DATA, DatasetFileError
from cat_plugins.datasets.gsm8k import Gsm8kDataset
from cat_plugins.datasets.healthbench import HealthBenchDataset, split_test_ids
from cat_plugins.datasets.hf import HfDataset
from cat_plugins.datasets.jsonl import JsonlDataset
from cat_plugins.datasets.math500 import Math500Dataset
from tests.conftest import DATASETS

#: 30 conversations of a HealthBench subset (the dataset's default is the full main set)
HB_SLICE = "healthbench/oss_eval_subset500_slice.jsonl"
#: 30 problems of the 12k MATH pool
POOL_SLICE = "math500/math_train12k_slice.jsonl"
#: the slices and their record counts (sizes and digests: the README beside them)
SLICES = {"gsm8k/train.jsonl": 40, POOL_SLICE: 30, HB_SLICE: 30}


@pytest.fixture(autouse=True)
def _data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CAT_DATA_DIR", str(DATASETS))
    monkeypatch.setenv("CAT_OFFLINE", "1")
    monkeypatch.setenv("CAT_CACHE_DIR", str(tmp_path / "cache"))


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------ slices


def test_slices_match_the_digests_in_their_readme() -> None:
    readme = (DATASETS / "README.md").read_text(encoding="utf-8")
    for name, count in SLICES.items():
        data = (DATASETS / name).read_bytes()
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{name}`"))
        assert hashlib.sha256(data).hexdigest() in row, name
        assert f"| {count} | {len(data):,} |" in row, name
        assert len(data.splitlines()) == count, name
    assert readme.count("**Licence:** MIT") == len(SLICES)
    # nothing else lies in the data folder (MATH-500 and GSM8K test come from the package)
    files = {p.relative_to(DATASETS).as_posix() for p in DATASETS.rglob("*") if p.is_file()}
    assert files == {*SLICES, "README.md"}


# ------------------------------------------------------------------------------- registration


def test_datasets_registered_with_their_tasks() -> None:
    plugins = load_plugins(entry_points=False)
    registry = plugins.registry("dataset")
    expected = {
        "math500": (Math500Dataset, "math"),
        "gsm8k": (Gsm8kDataset, "math"),
        "healthbench": (HealthBenchDataset, "freeform"),
        "jsonl": (JsonlDataset, "math"),
        "hf": (HfDataset, "math"),
    }
    for name, (cls, task) in expected.items():
        assert registry.get(name) is cls
        assert cls.task == task


def test_every_param_has_a_description() -> None:
    for cls in (Math500Dataset, Gsm8kDataset, HealthBenchDataset, JsonlDataset, HfDataset):
        for field_name, field in cls.Params.model_fields.items():
            assert field.description, f"{cls.__name__}.Params.{field_name}"


# ----------------------------------------------------------------------------------- math500


def test_math500_loads_all_500_with_gold_and_instruction() -> None:
    dataset = Math500Dataset()
    prompts = dataset.load()
    assert dataset.resolve_path() == PACKAGE_DATA / "math500" / "test.jsonl"
    assert len(prompts) == 500
    first = prompts[0]
    assert first.id == "test/precalculus/807.json"
    assert first.gold_answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert first.rubric is None
    assert len(first.messages) == 1 and first.messages[0]["role"] == "user"
    assert first.messages[0]["content"].startswith("Convert the point $(0,3)$")
    assert first.messages[0]["content"].endswith("\n" + DEFAULT_MATH_INSTRUCTION)
    assert first.meta == {
        "dataset": "math500",
        "task": "math",
        "index": 0,
        "subject": "Precalculus",
        "level": 2,
    }
    assert len({p.id for p in prompts}) == 500


def test_math500_never_puts_the_solution_on_the_prompt() -> None:
    prompts = Math500Dataset({"limit": 20}).load()
    rows = [json.loads(line) for line in (PACKAGE_DATA / "math500" / "test.jsonl").open()][:20]
    for prompt, row in zip(prompts, rows, strict=True):
        assert row["solution"] not in json.dumps(prompt.to_dict())


def test_math500_reads_the_12k_pool_by_path() -> None:
    prompts = Math500Dataset({"path": POOL_SLICE}).load()
    assert len(prompts) == 30
    assert prompts[0].id == "train/algebra/0.json"
    assert prompts[0].gold_answer == "0"
    assert prompts[-1].id == "test/prealgebra/1148.json"  # the 4,500 MATH test problems follow
    levels = {p.id: p.meta["level"] for p in prompts}
    assert levels["train/geometry/377.json"] == "Level ?"  # as in the MATH source
    assert levels["train/algebra/0.json"] == 5


def test_math500_instruction_and_system_prompt() -> None:
    plain = Math500Dataset({"limit": 1, "instruction": ""}).load()[0]
    assert plain.messages[0]["content"].endswith("< 2 \\pi.$")
    custom = Math500Dataset(
        {"limit": 1, "instruction": "Answer in \\boxed{}.", "system_prompt": "You are careful."}
    ).load()[0]
    assert custom.messages[0] == {"role": "system", "content": "You are careful."}
    assert custom.messages[1]["content"].endswith("< 2 \\pi.$\nAnswer in \\boxed{}.")


def test_shuffle_is_seeded_and_applied_before_limit() -> None:
    a = [p.id for p in Math500Dataset({"shuffle": True, "seed": 3, "limit": 5}).load()]
    b = [p.id for p in Math500Dataset({"shuffle": True, "seed": 3, "limit": 5}).load()]
    c = [p.id for p in Math500Dataset({"shuffle": True, "seed": 4, "limit": 5}).load()]
    unshuffled = [p.id for p in Math500Dataset({"limit": 5}).load()]
    assert a == b
    assert a != c
    assert a != unshuffled
    assert len(a) == 5


# ------------------------------------------------------------------------------------- gsm8k


def test_gsm8k_test_gold_is_the_number_after_hashes() -> None:
    dataset = Gsm8kDataset()
    prompts = dataset.load()
    assert dataset.resolve_path() == PACKAGE_DATA / "gsm8k" / "test.jsonl"
    assert len(prompts) == 1319
    assert prompts[0].id == "gsm8k/test/0"
    assert prompts[0].gold_answer == "18"
    assert prompts[0].messages[0]["content"].startswith("Janet\u2019s ducks lay 16 eggs")
    assert "<<" not in prompts[0].messages[0]["content"]  # the worked solution is not shown
    golds = {p.gold_answer for p in prompts}
    assert {"-10", "-3", "1450000", "2125"} <= golds
    assert not any("," in g for g in golds if g)


def test_gsm8k_train_split() -> None:
    dataset = Gsm8kDataset({"split": "train", "limit": 3})
    prompts = dataset.load()
    assert dataset.resolve_path() == DATASETS / "gsm8k" / "train.jsonl"  # the data folder's
    assert [p.id for p in prompts] == ["gsm8k/train/0", "gsm8k/train/1", "gsm8k/train/2"]
    assert prompts[0].gold_answer == "72"
    assert prompts[0].meta == {"dataset": "gsm8k", "task": "math", "index": 0}
    assert len(Gsm8kDataset({"split": "train"}).load()) == 40


def test_gsm8k_rejects_unknown_split() -> None:
    with pytest.raises(ValidationError):
        Gsm8kDataset({"split": "dev"})


# ------------------------------------------------------------------------------- healthbench


def test_healthbench_conversations_and_rubrics() -> None:
    prompts = HealthBenchDataset({"path": HB_SLICE}).load()
    assert len(prompts) == 30
    first = prompts[0]
    assert first.id == "c5f6bb12-a633-4ee4-b6a8-e6f9539472dc"
    assert first.messages == (
        {
            "role": "user",
            "content": "What do you think about a dull ache in the chest after a 10 hour drive",
        },
    )
    assert first.gold_answer is None
    assert first.rubric[:2] == (
        Criterion(
            "Correctly states that mild chest pain after a short drive, in the absence of red "
            "flag symptoms like shortness of breath or leg swelling, is likely not an emergency.",
            8.0,
        ),
        Criterion(
            "Correctly states that pulmonary embolism is a consideration after a long drive due "
            "to the risk of clotting.",
            6.0,
        ),
    )
    assert first.meta["rubric_tags"][0] == ["level:example", "axis:accuracy"]
    assert len(first.meta["rubric_tags"]) == len(first.rubric)
    assert "theme:emergency_referrals" in first.meta["example_tags"]
    assert (first.meta["dataset"], first.meta["task"], first.meta["index"]) == (
        "healthbench",
        "freeform",
        0,
    )
    assert sum(len(p.rubric) for p in prompts) == 134
    assert any(c.points < 0 for p in prompts for c in p.rubric)
    assert max(len(p.messages) for p in prompts) == 15
    assert not HealthBenchDataset.Params().instruction  # no boxed instruction on freeform
    assert HealthBenchDataset().default_file == "healthbench/2025-05-07-06-14-12_oss_eval.jsonl"


def test_healthbench_split_is_deterministic_and_disjoint() -> None:
    test = HealthBenchDataset({"path": HB_SLICE, "split": "test"}).load()
    train = HealthBenchDataset({"path": HB_SLICE, "split": "train"}).load()
    assert (len(test), len(train)) == (6, 24)  # round(30 * 0.2) for test
    assert not {p.id for p in test} & {p.id for p in train}
    again = HealthBenchDataset(
        {"path": HB_SLICE, "split": "test", "shuffle": True, "seed": 9}
    ).load()
    assert {p.id for p in again} == {p.id for p in test}  # shuffle never moves the split
    other = HealthBenchDataset({"path": HB_SLICE, "split": "test", "split_seed": 1}).load()
    assert {p.id for p in other} != {p.id for p in test}
    half = HealthBenchDataset({"path": HB_SLICE, "split": "test", "test_fraction": 0.5}).load()
    assert len(half) == 15


def test_split_ids_depend_only_on_ids() -> None:
    ids = [f"id{i}" for i in range(10)]
    assert split_test_ids(ids, 0.3, 0) == split_test_ids(list(reversed(ids)), 0.3, 0)
    assert len(split_test_ids(ids, 0.3, 0)) == 3


def test_healthbench_system_prompt() -> None:
    params = {"path": HB_SLICE, "limit": 1, "system_prompt": "Be kind."}
    first = HealthBenchDataset(params).load()[0]
    assert first.messages[0] == {"role": "system", "content": "Be kind."}
    assert first.messages[1]["content"].endswith("10 hour drive")


# ------------------------------------------------------------------------------------- jsonl


def test_jsonl_maps_fields(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "qs.jsonl",
        [
            {"q": "1+1?", "a": "2", "uid": "a"},
            {"q": "2+2?", "a": "Since 2+2=4, \\boxed{4}", "uid": "b"},
        ],
    )
    prompts = JsonlDataset(
        {"path": str(path), "question_field": "q", "answer_field": "a", "id_field": "uid"}
    ).load()
    assert [p.id for p in prompts] == ["a", "b"]
    assert prompts[0].messages[0]["content"] == "1+1?\n" + DEFAULT_MATH_INSTRUCTION
    assert prompts[1].gold_answer == "Since 2+2=4, \\boxed{4}"
    extracted = JsonlDataset(
        {"path": str(path), "question_field": "q", "answer_field": "a", "extract_gold": True}
    ).load()
    assert [p.gold_answer for p in extracted] == ["2", "4"]
    assert [p.id for p in extracted] == ["qs/0", "qs/1"]


def test_jsonl_freeform_conversations_with_rubrics(tmp_path: Path) -> None:
    conversation = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "advice?"},
    ]
    path = write_jsonl(
        tmp_path / "chat.jsonl",
        [{"conv": conversation, "rub": ["Is kind", {"criterion": "Is rude", "points": -2}]}],
    )
    dataset = JsonlDataset(
        {"path": str(path), "task": "freeform", "messages_field": "conv", "rubric_field": "rub"}
    )
    assert dataset.task_kind == "freeform"
    (prompt,) = dataset.load()
    assert prompt.messages == tuple(conversation)  # no math instruction on freeform
    assert prompt.rubric == (Criterion("Is kind", 1.0), Criterion("Is rude", -2.0))
    assert prompt.meta == {"dataset": "jsonl", "task": "freeform", "index": 0}


def test_jsonl_reads_relative_to_data_dir() -> None:
    prompts = JsonlDataset({"path": "gsm8k/train.jsonl", "limit": 2}).load()
    assert [p.id for p in prompts] == ["train/0", "train/1"]
    assert prompts[0].gold_answer is None
    assert prompts[0].messages[0]["content"].startswith("Natalia sold clips to 48")


def test_jsonl_requires_path() -> None:
    with pytest.raises(ValidationError, match="path"):
        JsonlDataset({})


def test_jsonl_missing_field_names_record_and_field(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "x.jsonl", [{"question": "ok"}, {"prompt": "no question"}])
    with pytest.raises(DatasetFileError, match=r"record 1 has no field 'question'"):
        JsonlDataset({"path": str(path)}).load()


def test_jsonl_bad_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "a"}\n\n{"question": \n', encoding="utf-8")
    with pytest.raises(DatasetFileError, match=r"bad\.jsonl:3: not valid JSON"):
        JsonlDataset({"path": str(path)}).load()


def test_jsonl_bad_rubric_item(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", [{"question": "q", "rub": [3]}])
    with pytest.raises(DatasetFileError, match="record 0: rubric items"):
        JsonlDataset({"path": str(path), "rubric_field": "rub"}).load()


# ------------------------------------------------------------------- issue 9: bad records


def test_a_utf8_bom_is_accepted_and_lines_count_blank_ones(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"question": "a"}\n\n\n{"nope": 1}\n')
    with pytest.raises(DatasetFileError, match=r"x\.jsonl:4: record 1 has no field 'question'"):
        JsonlDataset({"path": str(path)}).load()
    path.write_bytes(b'\xef\xbb\xbf{"question": "a"}\n')
    assert JsonlDataset({"path": str(path)}).load()[0].question.startswith("a")


@pytest.mark.parametrize(
    ("cls", "field", "extra"),
    [
        (JsonlDataset, "question", {}),
        (Gsm8kDataset, "question", {"answer": "#### 2"}),
        (Math500Dataset, "problem", {"answer": "2"}),
    ],
)
def test_null_question_is_refused_not_rendered_as_none(
    tmp_path: Path, cls: type, field: str, extra: dict
) -> None:
    path = write_jsonl(tmp_path / "q.jsonl", [{field: "1+1?", **extra}, {field: None, **extra}])
    with pytest.raises(DatasetFileError, match=rf"q\.jsonl:2: record 1: field '{field}' is null"):
        cls({"path": str(path)}).load()


def test_non_utf8_file_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    path.write_bytes(b'{"question": "a"}\n{"question": "caf\xe9"}\n')
    with pytest.raises(DatasetFileError, match=r"l\.jsonl:2: not UTF-8 text \(byte 0xe9"):
        JsonlDataset({"path": str(path)}).load()


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_empty_file_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "e.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetFileError, match=r"e\.jsonl: no records"):
        JsonlDataset({"path": str(path)}).load()


def test_duplicate_ids_name_both_records(tmp_path: Path) -> None:
    rows = [
        {"id": "a", "question": "x"},
        {"id": "b", "question": "y"},
        {"id": "a", "question": "z"},
    ]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DatasetFileError) as info:
        JsonlDataset({"path": str(path), "id_field": "id"}).load()
    message = str(info.value)
    assert "d.jsonl:3: record 2: prompt id 'a' is used again" in message
    assert "d.jsonl:1: record 0" in message


def test_healthbench_bad_records(tmp_path: Path) -> None:
    good = {"prompt_id": "p", "prompt": [{"role": "user", "content": "hi"}], "rubrics": []}
    bad_rubric = {**good, "prompt_id": "q", "rubrics": [{"criterion": "c"}]}
    path = write_jsonl(tmp_path / "h.jsonl", [good, bad_rubric])
    with pytest.raises(DatasetFileError, match=r"h\.jsonl:2: record 1: field 'rubrics' must"):
        HealthBenchDataset({"path": str(path)}).load()
    path = write_jsonl(tmp_path / "h.jsonl", [good, good])
    with pytest.raises(DatasetFileError, match=r"h\.jsonl:2: record 1: prompt_id 'p' is used"):
        HealthBenchDataset({"path": str(path)}).load()
    path = write_jsonl(tmp_path / "h.jsonl", [{**good, "prompt": "hi"}])
    with pytest.raises(DatasetFileError, match=r"h\.jsonl:1: record 0: field 'prompt' must"):
        HealthBenchDataset({"path": str(path)}).load()


def test_path_is_checked_only_when_validate_asks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    check = {"check_files": True}
    assert JsonlDataset.Params.model_validate({"path": "later.jsonl"}).path == "later.jsonl"
    with pytest.raises(ValidationError, match=r"dataset file not found \(tried .*later\.jsonl"):
        JsonlDataset.Params.model_validate({"path": "later.jsonl"}, context=check)
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValidationError, match="is a folder"):
        Gsm8kDataset.Params.model_validate({"path": "sub"}, context=check)
    (tmp_path / "later.jsonl").write_text("{}\n")
    assert JsonlDataset.Params.model_validate({"path": "later.jsonl"}, context=check)
    # relative paths are also looked for in the data folder
    assert Math500Dataset.Params.model_validate({"path": POOL_SLICE}, context=check)
