"""Fetched data sets, against a real HTTP server on 127.0.0.1 (no network) serving the verbatim
slices committed under ``tests/data/datasets`` in place of the full files.

``CAT_DATA_URL`` points the download code at the server; everything else (urllib, the checks,
the atomic cache) is the code users run.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from cat_framework.cli import main
from cat_plugins.datasets import fetch
from cat_plugins.datasets.fetch import REMOTE_FILES, FetchError, cached_path, digest_path
from cat_plugins.datasets.gsm8k import Gsm8kDataset
from cat_plugins.datasets.healthbench import HealthBenchDataset
from cat_plugins.datasets.math500 import Math500Dataset
from tests.conftest import DATASETS

GSM_SLICE = DATASETS / "gsm8k" / "train.jsonl"  # the first 40 of 7,473
POOL_SLICE = DATASETS / "math500" / "math_train12k_slice.jsonl"
HB_SLICE = DATASETS / "healthbench" / "oss_eval_subset500_slice.jsonl"
GSM_TRAIN = REMOTE_FILES["gsm8k/train.jsonl"]
PRM_TRAIN = REMOTE_FILES["math500/prm800k_train.jsonl"]
HB_MAIN = REMOTE_FILES["healthbench/2025-05-07-06-14-12_oss_eval.jsonl"]


@dataclass
class Server:
    url: str
    root: Path
    requests: list[str] = field(default_factory=list)
    #: path -> bytes to send instead of the file, with the file's full Content-Length
    truncate: dict[str, bytes] = field(default_factory=dict)

    def serve(self, name: str, source: Path) -> None:
        """Serve ``source`` at ``/<name>``."""
        target = self.root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source)


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    root = tmp_path / "www"
    root.mkdir()
    state = Server("", root)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            cut = state.truncate.get(self.path)
            if cut is None:
                return super().do_GET()
            self.send_response(200)
            self.send_header("Content-Length", str(len(cut) * 2))
            self.end_headers()
            self.wfile.write(cut)
            self.close_connection = True
            return None

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    monkeypatch.setenv("CAT_DATA_URL", state.url)
    monkeypatch.setenv("CAT_CACHE_DIR", str(tmp_path / "cache"))
    for var in ("CAT_DATA_DIR", "CAT_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    yield state
    httpd.shutdown()
    httpd.server_close()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


def test_download_with_known_digest_then_cache_reuse(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the slice stands in for the full file: its own digest (the README beside it) is the known one
    slice_sha256 = "36031994776bdec88b524a9cb53d166d4da21a651cfa4e0c5aac5f80e2ea21aa"
    assert GSM_TRAIN.sha256 and GSM_TRAIN.sha256 != slice_sha256
    monkeypatch.setitem(REMOTE_FILES, GSM_TRAIN.name, replace(GSM_TRAIN, sha256=slice_sha256))
    server.serve(GSM_TRAIN.name, GSM_SLICE)
    prompts = Gsm8kDataset({"split": "train", "limit": 2}).load()
    assert [p.id for p in prompts] == ["gsm8k/train/0", "gsm8k/train/1"]
    assert prompts[0].gold_answer == "72"
    cached = cached_path(GSM_TRAIN)
    assert cached.read_bytes() == GSM_SLICE.read_bytes()
    # no temporary file left behind, and no digest recorded: the known one is used
    assert leftovers(cached.parent) == ["train.jsonl"]
    assert server.requests == ["/gsm8k/train.jsonl"]
    again = Gsm8kDataset({"split": "train"}).load()
    assert len(again) == 40
    assert server.requests == ["/gsm8k/train.jsonl"]  # no second request


def test_the_published_digest_refuses_other_bytes(server: Server) -> None:
    """Without the stand-in digest, the slice is not the published GSM8K train file."""
    server.serve(GSM_TRAIN.name, GSM_SLICE)
    with pytest.raises(FetchError, match="does not match its expected sha256") as info:
        Gsm8kDataset({"split": "train"}).load()
    assert GSM_TRAIN.sha256 in str(info.value)
    assert "expected 4,166,206 bytes, got 23,422" in str(info.value)
    assert leftovers(cached_path(GSM_TRAIN).parent) == []


def test_checksum_mismatch_caches_nothing(server: Server) -> None:
    # (a slice of) the reconstructed 12k pool is not PRM800K's file: its digest differs
    server.serve(PRM_TRAIN.name, POOL_SLICE)
    with pytest.raises(FetchError) as info:
        Math500Dataset({"split": "train"}).load()
    message = str(info.value)
    assert f"{server.url}/math500/prm800k_train.jsonl" in message
    assert PRM_TRAIN.sha256 in message
    assert hashlib.sha256(POOL_SLICE.read_bytes()).hexdigest() in message
    assert "not kept" in message
    assert leftovers(cached_path(PRM_TRAIN).parent) == []


def test_digest_recorded_at_first_download_guards_later_use(server: Server) -> None:
    server.serve(HB_MAIN.name, HB_SLICE)
    prompts = HealthBenchDataset({"limit": 3}).load()
    assert len(prompts) == 3 and prompts[0].rubric
    expected = hashlib.sha256(cached_path(HB_MAIN).read_bytes()).hexdigest()
    assert digest_path(HB_MAIN).read_text().strip() == expected
    cached = cached_path(HB_MAIN)
    cached.write_bytes(cached.read_bytes()[:-10])  # damaged after download
    with pytest.raises(FetchError, match="does not match its sha256") as info:
        HealthBenchDataset({"limit": 3}).load()
    assert str(cached) in str(info.value) and "Delete it" in str(info.value)
    assert server.requests == [f"/{HB_MAIN.name}"]


def test_recorded_digest_binds_a_new_download(server: Server) -> None:
    digest = digest_path(HB_MAIN)
    digest.parent.mkdir(parents=True)
    digest.write_text("0" * 64 + "\n")  # recorded earlier; the file itself was deleted since
    server.serve(HB_MAIN.name, HB_SLICE)
    with pytest.raises(FetchError, match="does not match its expected sha256"):
        HealthBenchDataset().load()
    assert not cached_path(HB_MAIN).exists()


def test_truncated_download_never_looks_complete(server: Server) -> None:
    data = GSM_SLICE.read_bytes()
    server.truncate["/gsm8k/train.jsonl"] = data[: len(data) // 2]
    with pytest.raises(FetchError, match=r"stopped at 11,711 of 23,422 bytes"):
        Gsm8kDataset({"split": "train"}).load()
    assert leftovers(cached_path(GSM_TRAIN).parent) == []


def test_http_error_says_what_to_download(server: Server) -> None:
    with pytest.raises(FetchError) as info:
        Gsm8kDataset({"split": "train"}).load()
    message = str(info.value)
    assert "HTTP 404" in message
    assert f"Download {server.url}/gsm8k/train.jsonl and save it as {cached_path(GSM_TRAIN)}" in (
        message
    )


def test_unreachable_server_is_one_message(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAT_DATA_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(FetchError, match=r"the download failed \(.*refused"):
        Gsm8kDataset({"split": "train"}).load()


def test_canonical_urls_without_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAT_DATA_URL", raising=False)
    assert fetch.source_url(GSM_TRAIN) == GSM_TRAIN.url
    assert HB_MAIN.url == (
        "https://openaipublic.blob.core.windows.net/simple-evals/healthbench/"
        "2025-05-07-06-14-12_oss_eval.jsonl"
    )
    monkeypatch.setenv("CAT_DATA_URL", "https://mirror.example/data/")
    assert fetch.source_url(GSM_TRAIN) == "https://mirror.example/data/gsm8k/train.jsonl"


def test_offline_cli_exits_non_zero_with_one_message(
    server: Server, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("CAT_OFFLINE", "1")
    monkeypatch.delenv("CAT_DATA_URL")
    with pytest.raises(SystemExit) as info:
        main(["data", "gsm8k", "--set", "split=train", "--limit", "1"])
    assert info.value.code != 0
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert "downloads are off (CAT_OFFLINE=1)" in err
    assert GSM_TRAIN.url in err and str(cached_path(GSM_TRAIN)) in err
    assert server.requests == []
