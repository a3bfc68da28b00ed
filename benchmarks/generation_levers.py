"""The generation levers of a decode step, measured on the embedded SmolLM2-135M-Instruct:
float32 vs bfloat16 weights, the dynamic KV cache of the ``transformers`` backend vs a static
cache with a ``torch.compile``-d decode step, at 1 to 32 rows per step.

    python benchmarks/generation_levers.py [--rows 1,8,16,32] [--steps 32] [--out FILE]

Each cell is the median milliseconds of one decode step (one new token for every row) after a
40-token prefill, greedy, over ``--steps`` steps, the variants interleaved per repeat. The compile
time (paid once per batch shape: a shrinking batch recompiles per size) is reported apart.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

PROMPT = 40


def decode_ms(model: Any, rows: int, steps: int, static: Any = None, forward: Any = None) -> float:
    """Milliseconds per decode step: dynamic cache (``static`` None) or a static cache."""
    forward = forward or model.forward
    ids = torch.randint(100, 1000, (rows, PROMPT), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if static is None:
            out = model(input_ids=ids, use_cache=True)
            past = out.past_key_values
        else:
            static.reset()
            past = static
            out = model(input_ids=ids, past_key_values=past, cache_position=torch.arange(PROMPT))
        nxt = out.logits[:, -1:].argmax(-1)
        start = time.perf_counter()
        for i in range(steps):
            extra = {} if static is None else {"cache_position": torch.tensor([PROMPT + i])}
            out = forward(input_ids=nxt, past_key_values=past, use_cache=True, **extra)
            past = out.past_key_values if static is None else static
            nxt = out.logits[:, -1:].argmax(-1)
        return (time.perf_counter() - start) / steps * 1e3


def measure(rows_list: list[int], steps: int, repeats: int) -> dict[str, Any]:
    from transformers import StaticCache

    from cat_plugins.backends.transformers_backend import TransformersBackend

    base = TransformersBackend({"model": "default", "dtype": "float32"}).model.eval()
    low = TransformersBackend({"model": "default", "dtype": "bfloat16"}).model.eval()
    cells: dict[str, dict[int, list[float]]] = {}
    compile_s: dict[str, dict[int, float]] = {}
    for rows in rows_list:
        variants = {}
        for name, model in (("float32", base), ("bfloat16", low)):
            cache = StaticCache(config=model.config, max_cache_len=PROMPT + steps + 1)
            compiled = torch.compile(model.forward, dynamic=False)
            start = time.perf_counter()
            decode_ms(model, rows, 2, cache, compiled)  # compiles for this shape
            compile_s.setdefault(f"{name} static compiled", {})[rows] = time.perf_counter() - start
            variants[f"{name} dynamic"] = (model, None, None)
            variants[f"{name} static compiled"] = (model, cache, compiled)
        for _ in range(repeats):
            for name, (model, cache, forward) in variants.items():
                ms = decode_ms(model, rows, steps, cache, forward)
                cells.setdefault(name, {}).setdefault(rows, []).append(ms)
        torch._dynamo.reset()
    medians = {k: {r: statistics.median(v) for r, v in by.items()} for k, by in cells.items()}
    return {"ms_per_step": medians, "raw": cells, "compile_s": compile_s}


def report(result: dict[str, Any]) -> str:
    rows = result["rows"]
    ms = result["ms_per_step"]
    ref = ms["float32 dynamic"]
    lines = [
        "# Generation levers: one decode step (CPU)",
        "",
        f"Machine: {result['machine']}. Embedded SmolLM2-135M-Instruct, greedy, a {PROMPT}-token "
        f"prefill then {result['steps']} decode steps, median of {result['repeats']} "
        "interleaved repeats.",
        f"Command: `{result['command']}`",
        "",
        "ms per decode step (one token for every row), and the speed-up over the float32 "
        "dynamic-cache step the `transformers` backend runs today:",
        "",
        "| variant | " + " | ".join(f"{r} rows" for r in rows) + " |",
        "|---|" + "---|" * len(rows),
    ]
    for name, by in ms.items():
        cells = [f"{by[r]:.1f} ({ref[r] / by[r]:.2f}x)" for r in rows]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Compile time per batch shape (s):", ""]
    lines += ["| variant | " + " | ".join(f"{r} rows" for r in rows) + " |"]
    lines += ["|---|" + "---|" * len(rows)]
    for name, by in result["compile_s"].items():
        lines.append(f"| {name} | " + " | ".join(f"{by[r]:.0f}" for r in rows) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="1,8,16,32")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="write .md and .json here")
    args = parser.parse_args(argv)
    rows = [int(r) for r in args.rows.split(",")]
    load = os.getloadavg()
    result = measure(rows, args.steps, args.repeats)
    from generation import cpu_name  # the benchmarks' one reading of the CPU model

    cpu = cpu_name()
    result.update(
        rows=rows, steps=args.steps, repeats=args.repeats,
        command=" ".join(["python", "benchmarks/generation_levers.py", *(argv or sys.argv[1:])]),
        machine=f"{os.cpu_count()}-core {cpu}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load {load[0]:.1f} -> {os.getloadavg()[0]:.1f}",
    )  # fmt: skip
    text = report(result)
    print(text)
    if args.out is not None:
        args.out.with_suffix(".md").write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
