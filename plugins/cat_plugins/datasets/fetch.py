"""Data sets too large (or licensed apart) to ship in the package: fetched once, verified, cached.

Each :class:`RemoteFile` has a relative name (``gsm8k/train.jsonl``), its canonical URL and, where
one is known, its sha256. :func:`ensure_file` returns the cached copy under
``<cache>/data/<name>`` (see :func:`cat_framework.paths.cache_dir`), downloading it first if
needed. A download goes to a temporary file beside the target and is renamed into place only
after its size and digest check out, so an interrupted or corrupted download never looks
complete. Where no digest is published, the one seen at the first download is recorded beside
the file (``<name>.sha256``) and every later use is checked against it.

Environment: ``CAT_DATA_URL`` replaces every canonical URL by ``$CAT_DATA_URL/<name>`` (a mirror,
or a local server in tests); ``CAT_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``/``HF_DATASETS_OFFLINE=1``)
forbids downloads. Proxies come from ``https_proxy``/``no_proxy`` as urllib reads them.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import structlog

from cat_framework import __version__
from cat_framework.errors import CatError
from cat_framework.paths import DATA_DIR_ENV, cache_dir

log = structlog.get_logger("cat_plugins.datasets")

#: environment variable: base URL of a mirror serving every file at ``<base>/<name>``
MIRROR_ENV = "CAT_DATA_URL"
#: environment variable: ``1`` forbids downloads (the Hugging Face variables are honoured too)
OFFLINE_ENV = "CAT_OFFLINE"
_OFFLINE_ENVS = (OFFLINE_ENV, "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_CHUNK = 1 << 20


class FetchError(CatError):
    """A data file could not be obtained or failed its checksum; the message says what to do."""


@dataclass(frozen=True)
class RemoteFile:
    """A file fetched on first use.

    ``name`` is where it lives under ``$CAT_DATA_DIR``, the cache and a mirror; ``sha256`` is
    None where no digest is published (trust on first download, then verify).
    """

    name: str
    url: str
    sha256: str | None
    size: int | None
    licence: str


_HB = "https://openaipublic.blob.core.windows.net/simple-evals/healthbench"

#: every fetchable file by name (provenance: the package's ``datasets/data/README.md``)
REMOTE_FILES: dict[str, RemoteFile] = {
    f.name: f
    for f in (
        RemoteFile(
            "gsm8k/train.jsonl",
            "https://raw.githubusercontent.com/openai/grade-school-math/"
            "3101c7d5072418e28b9008a6636bde82a006892c/grade_school_math/data/train.jsonl",
            "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465",
            4_166_206,
            "MIT (openai/grade-school-math)",
        ),
        RemoteFile(
            # the original PRM800K split is a Git LFS object: media.githubusercontent.com serves
            # its bytes, and the LFS oid is their sha256
            "math500/prm800k_train.jsonl",
            "https://media.githubusercontent.com/media/openai/prm800k/"
            "7ecc794703b2877f63226f2477a49b34f9b25163/prm800k/math_splits/train.jsonl",
            "90d96daeac3fe343ebb1e22ce93dd99690f75983e957f88de42f87cffe1e8076",
            10_896_985,
            "MIT (openai/prm800k; MATH by Hendrycks et al.)",
        ),
        RemoteFile(
            "healthbench/2025-05-07-06-14-12_oss_eval.jsonl",
            f"{_HB}/2025-05-07-06-14-12_oss_eval.jsonl",
            None,
            None,
            "MIT (openai/simple-evals)",
        ),
        RemoteFile(
            "healthbench/hard_2025-05-08-21-00-10.jsonl",
            f"{_HB}/hard_2025-05-08-21-00-10.jsonl",
            None,
            None,
            "MIT (openai/simple-evals)",
        ),
        RemoteFile(
            "healthbench/consensus_2025-05-09-20-00-46.jsonl",
            f"{_HB}/consensus_2025-05-09-20-00-46.jsonl",
            None,
            None,
            "MIT (openai/simple-evals)",
        ),
    )
}


def cached_path(remote: RemoteFile) -> Path:
    """Where the file is (or will be) cached."""
    return cache_dir() / "data" / remote.name


def digest_path(remote: RemoteFile) -> Path:
    """Where the digest seen at first download is recorded (files with no published digest)."""
    path = cached_path(remote)
    return path.with_name(path.name + ".sha256")


def source_url(remote: RemoteFile) -> str:
    """The canonical URL, or the mirror's when ``$CAT_DATA_URL`` is set."""
    base = os.environ.get(MIRROR_ENV, "").strip()
    return f"{base.rstrip('/')}/{remote.name}" if base else remote.url


def offline() -> bool:
    """True when downloads are forbidden by the environment."""
    return any(_is_set(v) for v in _OFFLINE_ENVS)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def ensure_file(remote: RemoteFile, *, who: str) -> Path:
    """The verified cached copy of ``remote``, downloaded first if absent.

    ``who`` names the dataset in messages. Raises :class:`FetchError` when the file is absent
    and cannot be downloaded (saying which URL to fetch and where to save it), or when a cached
    or downloaded copy does not match its digest (nothing is cached then).
    """
    target = cached_path(remote)
    if target.is_file():
        _verify_cached(remote, target, who)
        return target
    url = source_url(remote)
    if offline():
        raise _missing(remote, who, url, f"downloads are off ({_offline_var()}=1)")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _missing(remote, who, url, f"the cache folder cannot be created: {e}") from None
    # a digest recorded by an earlier download binds this one too (the file must not change)
    recorded = digest_path(remote)
    expected = remote.sha256 or (
        recorded.read_text(encoding="utf-8").strip() if recorded.is_file() else None
    )
    download(url, target, sha256=expected, size=remote.size, who=who, name=remote.name)
    return target


def download(
    url: str,
    target: Path,
    *,
    sha256: str | None,
    size: int | None = None,
    who: str = "data",
    name: str | None = None,
    timeout: float = 60.0,
) -> str:
    """Download ``url`` to ``target`` atomically and return its sha256.

    With ``sha256`` given, a mismatch is a :class:`FetchError` and nothing is written; without,
    the digest is recorded beside the target (``<target>.sha256``) for later checks. ``who``
    and ``name`` (the file's relative name) are for messages.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    started = time.monotonic()
    log.info("downloading", dataset=who, url=url, to=str(target))
    try:
        digest = hashlib.sha256()
        received = 0
        request = urllib.request.Request(
            url, headers={"User-Agent": f"cat-framework/{__version__}"}
        )
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    announced = response.headers.get("Content-Length")
                    while chunk := response.read(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
            except urllib.error.HTTPError as e:
                reason = f"the download failed (HTTP {e.code} {e.reason})"
                raise _missing_url(who, url, target, reason, name=name) from None
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                reason = f"the download failed ({getattr(e, 'reason', None) or e})"
                raise _missing_url(who, url, target, reason, name=name) from None
            out.flush()
            os.fsync(out.fileno())
        if announced is not None and announced.isdigit() and int(announced) != received:
            reason = f"the download stopped at {received:,} of {int(announced):,} bytes"
            raise _missing_url(who, url, target, reason, name=name)
        got = digest.hexdigest()
        if sha256 is not None and got != sha256:
            size_note = "" if size is None else f"; expected {size:,} bytes, got {received:,}"
            raise FetchError(
                f"dataset {who!r}: the file downloaded from {url} does not match its expected "
                f"sha256 ({sha256}; got {got}{size_note}), so it was not kept. It was damaged in "
                "transit or changed at the source: retry, or download it yourself, check it and "
                "point `path:` at it."
            )
        if sha256 is None:
            _write_atomic(target.with_name(target.name + ".sha256"), got + "\n")
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    log.info(
        "downloaded",
        dataset=who,
        path=str(target),
        bytes=received,
        sha256=got,
        seconds=round(time.monotonic() - started, 1),
    )
    return got


def _verify_cached(remote: RemoteFile, target: Path, who: str) -> None:
    expected = remote.sha256
    recorded = digest_path(remote)
    if expected is None and recorded.is_file():
        expected = recorded.read_text(encoding="utf-8").strip()
    got = sha256_file(target)
    if expected is None:  # placed there by hand: trust it now, check it from now on
        _write_atomic(recorded, got + "\n")
        return
    if got != expected:
        raise FetchError(
            f"dataset {who!r}: the cached {target} does not match its sha256 (expected "
            f"{expected}, found {got}): it changed after it was downloaded. Delete it (and "
            f"{recorded.name} if present) to download it again."
        )


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _is_set(var: str) -> bool:
    return os.environ.get(var, "").strip().lower() in {"1", "true", "yes"}


def _offline_var() -> str:
    return next(v for v in _OFFLINE_ENVS if _is_set(v))


def _missing(remote: RemoteFile, who: str, url: str, reason: str) -> FetchError:
    return _missing_url(who, url, cached_path(remote), reason, name=remote.name)


def _missing_url(
    who: str, url: str, target: Path, reason: str, *, name: str | None = None
) -> FetchError:
    name = name or target.name
    return FetchError(
        f"dataset {who!r}: {name} is not on this machine and {reason}. Download {url} and save "
        f"it as {target} (or set {DATA_DIR_ENV} to a folder holding {name}, or point `path:` "
        "at your copy)."
    )


__all__ = [
    "MIRROR_ENV",
    "OFFLINE_ENV",
    "REMOTE_FILES",
    "FetchError",
    "RemoteFile",
    "cached_path",
    "download",
    "ensure_file",
    "offline",
    "sha256_file",
]
