"""Where a dataset's file comes from: ``path:``, ``$CAT_DATA_DIR``, the package, the cache.

Issue 11: a user with only the package (no research folder beside a checkout) must get MATH-500 and
GSM8K test from any folder, and the product must never name this repository's surroundings.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cat_framework import ConfigError
from cat_framework.paths import cache_dir, data_dir
from cat_plugins.datasets.common import PACKAGE_DATA, DatasetFileError
from cat_plugins.datasets.fetch import FetchError
from cat_plugins.datasets.gsm8k import Gsm8kDataset
from cat_plugins.datasets.healthbench import HealthBenchDataset
from cat_plugins.datasets.math500 import Math500Dataset

REPO = Path(__file__).resolve().parents[3]
SHIPPED = {"math500/test.jsonl": 500, "gsm8k/test.jsonl": 1319}
#: the originals' sha256, written here independently of the package README: MATH-500's is the
#: Git LFS oid of openai/prm800k ``prm800k/math_splits/test.jsonl``; GSM8K's that of
#: openai/grade-school-math ``grade_school_math/data/test.jsonl`` at 3101c7d5
ORIGINALS = {
    "math500/test.jsonl": "35dc41080a3680858b27fa7e0533d2d547825316fc5dafe5d316f4ccc5a06132",
    "gsm8k/test.jsonl": "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
}


@pytest.fixture(autouse=True)
def _no_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CAT_DATA_DIR", raising=False)
    monkeypatch.setenv("CAT_OFFLINE", "1")
    monkeypatch.setenv("CAT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


# ------------------------------------------------------------------------------ package data


def test_shipped_files_match_the_digests_in_the_package_readme() -> None:
    readme = (PACKAGE_DATA / "README.md").read_text(encoding="utf-8")
    for name, count in SHIPPED.items():
        data = (PACKAGE_DATA / name).read_bytes()
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{name}`"))
        assert hashlib.sha256(data).hexdigest() in row, name
        assert f"{len(data):,}" in row and f"{count:,}" in row, name
        assert len(data.splitlines()) == count
    assert "MIT" in readme and "Source:" in readme


def test_shipped_files_are_the_originals() -> None:
    assert set(ORIGINALS) == set(SHIPPED)
    for name, digest in ORIGINALS.items():
        assert hashlib.sha256((PACKAGE_DATA / name).read_bytes()).hexdigest() == digest, name


def test_builtins_load_from_the_package_anywhere_without_env() -> None:
    math = Math500Dataset()
    assert len(math.load()) == 500
    assert math.resolve_path().is_relative_to(PACKAGE_DATA)
    gsm = Gsm8kDataset({"limit": 3})
    assert [p.gold_answer for p in gsm.load()] == ["18", "3", "70000"]
    assert gsm.resolve_path().is_relative_to(PACKAGE_DATA)


def test_builtins_in_a_fresh_process_from_an_empty_folder(tmp_path: Path) -> None:
    """What a new user runs: no CAT_DATA_DIR, a folder with nothing around it."""
    code = (
        "from cat_plugins.datasets.math500 import Math500Dataset as M\n"
        "from cat_plugins.datasets.gsm8k import Gsm8kDataset as G\n"
        "print(len(M().load()), len(G().load()), M().resolve_path())\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": f"{REPO}:{REPO}/plugins"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    count_math, count_gsm, path = out.stdout.split()
    assert (count_math, count_gsm) == ("500", "1319")
    shipped = REPO / "plugins" / "cat_plugins" / "datasets" / "data"
    assert Path(path) == shipped / "math500" / "test.jsonl"  # the package's copy, nothing else


def test_data_dir_copy_wins_over_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = tmp_path / "mine"
    (mine / "gsm8k").mkdir(parents=True)
    row = {"question": "Mine?", "answer": "#### 7"}
    (mine / "gsm8k" / "test.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    monkeypatch.setenv("CAT_DATA_DIR", str(mine))
    (prompt,) = Gsm8kDataset().load()
    assert prompt.gold_answer == "7"
    # a CAT_DATA_DIR without the file falls back to the shipped copy
    assert len(Math500Dataset().load()) == 500


def test_data_dir_is_the_env_var_or_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "research" / "data").mkdir(parents=True)  # a sibling folder with data
    (tmp_path / "work" / "data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    assert data_dir() is None  # neither the research folder's data nor ./data is guessed
    monkeypatch.setenv("CAT_DATA_DIR", str(tmp_path / "chosen"))
    assert data_dir() == tmp_path / "chosen"  # returned even though it does not exist


def test_cache_dir_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAT_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("CAT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "cat-framework"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "cat-framework"


# ------------------------------------------------------------------------------ missing files


def test_offline_without_cache_says_what_to_download_and_where(tmp_path: Path) -> None:
    with pytest.raises(FetchError) as info:
        Gsm8kDataset({"split": "train"}).load()
    message = str(info.value)
    assert "raw.githubusercontent.com/openai/grade-school-math/" in message
    assert str(tmp_path / "cache" / "data" / "gsm8k" / "train.jsonl") in message
    assert "CAT_OFFLINE=1" in message
    assert "`path:`" in message and "CAT_DATA_DIR" in message
    assert "../" not in message  # no folder outside the cache is suggested


def test_missing_explicit_path_lists_every_place_tried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAT_DATA_DIR", str(tmp_path / "dd"))
    with pytest.raises(DatasetFileError) as info:
        HealthBenchDataset({"path": "nowhere.jsonl"}).load()
    message = str(info.value)
    assert str(tmp_path / "nowhere.jsonl") in message
    assert str(tmp_path / "dd" / "nowhere.jsonl") in message
    assert "`path:`" in message
    assert isinstance(info.value, ConfigError)
