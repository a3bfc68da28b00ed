"""Optimizer, scheduler and RNG states stored so that reading them never runs code.

``torch.save``/``torch.load`` pickle, and unpickling a file can run any code it names, so a
planted ``optimizer.pt`` in a run directory would execute on ``--resume``. (``weights_only=True``
narrows that, but older torch releases that this project supports had escapes.) Here a state is
one safetensors file: its tensors are the file's tensors, and the nested structure around them
(dicts, lists, tuples, numbers, strings, None) is JSON in the file's header metadata. Loading
parses JSON and reads raw tensor bytes; nothing else.

JSON floats round-trip exactly (``repr`` is the shortest exact form) and tensors keep their
dtype, so a resume from these files is bit-exact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cat_framework.bounded import loads_json
from cat_framework.engine.files import fsync_file
from cat_framework.errors import CatError

#: the header metadata key holding the structure
KEY = "cat_state"
#: tags of the non-JSON shapes (plain dicts never have ``$`` keys: others go through $items)
TENSOR, TUPLE, ITEMS = "$tensor", "$tuple", "$items"


def save_state(path: Path, obj: Any) -> None:
    """Write ``obj`` (tensors, numbers, strings, None, and lists, tuples or dicts of these) to
    ``path`` and fsync it. Anything else is refused: it could only be restored by running code."""
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(obj, tensors, set(), path.stem)
    save_file(tensors, str(path), metadata={KEY: json.dumps(structure)})
    fsync_file(path)


def load_state(path: Path) -> Any:
    """Read a state written by :func:`save_state` (tensors on CPU)."""
    structure, _ = _read_structure(path)
    try:
        tensors = load_file(str(path))
    except Exception as e:  # SafetensorError: data damaged after the header
        raise CatError(f"{path.name} is damaged ({e})") from None
    try:
        return _decode(structure, tensors)
    except (KeyError, TypeError, ValueError) as e:
        raise CatError(f"{path.name}: its '{KEY}' structure is malformed ({e!r})") from None


def check_state(path: Path) -> None:
    """Validate a state file without reading its tensors: header readable, file size matching
    the header, structure parseable and well formed (decoded with placeholders for the
    tensors), every tensor it names present. A checkpoint that passes is one a resume can read,
    so a malformed one is skipped for an older one instead of failing the resume."""
    structure, names = _read_structure(path)
    try:
        _decode(structure, dict.fromkeys(names))
    except (KeyError, TypeError, ValueError) as e:
        raise CatError(f"{path.name}: its '{KEY}' structure is malformed ({e!r})") from None


def _read_structure(path: Path) -> tuple[Any, set[str]]:
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            names = set(f.keys())
    except Exception as e:  # SafetensorError: truncated, or not safetensors at all
        raise CatError(f"{path.name} is damaged or not a safetensors file ({e})") from None
    if KEY not in meta:
        raise CatError(f"{path.name} holds no '{KEY}' structure: not written by cat-framework")
    try:  # nesting deeper than any state has is refused here, before any recursive walk
        structure = loads_json(meta[KEY])
    except ValueError as e:
        raise CatError(f"{path.name}: its '{KEY}' structure is not valid JSON ({e})") from None
    missing = _tensor_names(structure) - names
    if missing:
        raise CatError(f"{path.name} lacks tensors its structure names: {sorted(missing)[:3]}")
    return structure, names


def _encode(obj: Any, tensors: dict[str, torch.Tensor], storages: set[int], where: str) -> Any:
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, torch.Tensor):
        tensor = obj.detach().to("cpu").contiguous()
        storage = tensor.untyped_storage()
        # safetensors refuses tensors sharing memory: copy views and repeats
        if storage.nbytes() != tensor.nbytes or storage.data_ptr() in storages:
            tensor = tensor.clone()
        storages.add(tensor.untyped_storage().data_ptr())
        name = f"t{len(tensors)}"
        tensors[name] = tensor
        return {TENSOR: name}
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, tensors, storages, f"{where}[{i}]") for i, v in enumerate(obj)]
        return {TUPLE: items} if isinstance(obj, tuple) else items
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: _encode(v, tensors, storages, f"{where}.{k}") for k, v in obj.items()}
        return {
            ITEMS: [
                [_encode(k, tensors, storages, where), _encode(v, tensors, storages, where)]
                for k, v in obj.items()
            ]
        }
    raise CatError(
        f"cannot store {where} (a {type(obj).__name__}) in a checkpoint: only tensors, numbers, "
        "strings, None and lists, tuples or dicts of these are stored, because anything else "
        "would need code to be run to load it"
    )


def _decode(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(node, list):
        return [_decode(v, tensors) for v in node]
    if not isinstance(node, dict):
        return node
    tag = next(iter(node), None) if len(node) == 1 else None
    if tag == TENSOR:
        return tensors[node[TENSOR]]
    if tag == TUPLE:
        return tuple(_decode(v, tensors) for v in node[TUPLE])
    if tag == ITEMS:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in node[ITEMS]}
    return {k: _decode(v, tensors) for k, v in node.items()}


def _tensor_names(node: Any) -> set[str]:
    if isinstance(node, list):
        return set().union(*(_tensor_names(v) for v in node))
    if isinstance(node, dict):
        if len(node) == 1 and TENSOR in node:
            return {str(node[TENSOR])}
        return set().union(*(_tensor_names(v) for v in node.values()))
    return set()


__all__ = ["check_state", "load_state", "save_state"]
