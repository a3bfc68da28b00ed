"""Generation benchmark: the ``transformers`` backend against a bare ``model.generate`` on the
same batch (framework overhead, goal <= 5%), and the embedded model's first load (GGUF
conversion, cold cache) against its second (cached folder; goal >= 3x faster).

    python benchmarks/generation.py [--max-new-tokens 64] [--repeats 3] [--out FILE]
    python benchmarks/generation.py --vllm --vllm-params '{"enforce_eager": true}'
    python benchmarks/generation.py --skip-load --max-new-tokens 8 --repeats 1   # smoke run
    python benchmarks/generation.py --skip-load --sections step --max-new-tokens 128

``--sections step`` is the P2 re-measure on the rollouts of a real GRPO step: the arithmetic
prompts of ``benchmarks/grpo_vs_trl.py`` (2 x G=8, temperature 0.7, top_p 1.0, seeded).

``--vllm`` adds the ``vllm`` backend (imported only then) on the same requests. Runs alternate
between runners and the best of ``--repeats`` is reported, which keeps a busy CPU from
favouring whichever runner happened to go first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cat_framework import Backend, GenerationRequest
from cat_plugins.backends.transformers_backend import TransformersBackend

# open-ended prompts of different lengths: greedy rows all run to max_new_tokens, so the greedy
# section compares per-step cost alone (no row finishes early for the backend to drop)
PROMPTS = [
    "Write a long story about a dragon.",
    "Explain in detail how a computer works, step by step.",
    "Describe the history of Rome.",
    "List twenty animals and describe each one.",
    "Write an essay about the ocean and why it matters to life on Earth.",
    "Explain photosynthesis to a child.",
    "Describe your ideal city in great detail, including its streets, parks and people.",
    "Write a poem about autumn.",
]

#: a runner generates for the batch and returns the number of generated tokens
Runner = Callable[[], int]


def measure_load() -> dict[str, float]:
    """Build the backend twice in a fresh cache dir: the first call converts the GGUF."""
    import transformers  # noqa: F401  # imports are not what is being measured

    old = os.environ.get("CAT_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="cat-bench-cache-") as tmp:
        os.environ["CAT_CACHE_DIR"] = tmp
        try:
            times = []
            for _ in range(2):
                start = time.perf_counter()
                backend = TransformersBackend({"model": "default", "device": "cpu"})
                times.append(time.perf_counter() - start)
                backend.close()
        finally:
            if old is None:
                os.environ.pop("CAT_CACHE_DIR", None)
            else:
                os.environ["CAT_CACHE_DIR"] = old
    return {"first_s": times[0], "second_s": times[1], "ratio": times[0] / times[1]}


def step_requests(max_new_tokens: int, prompts: int = 2, g: int = 8) -> list[GenerationRequest]:
    """The rollouts of one GRPO step: ``prompts`` arithmetic problems x ``g`` samples."""
    from cat_plugins.datasets.arithmetic import ArithmeticDataset

    data = ArithmeticDataset({"split": "train", "count": prompts, "seed": 0}).load()
    return [
        GenerationRequest(
            messages=q.messages, n=g, max_new_tokens=max_new_tokens, temperature=0.7, seed=i
        )
        for i, q in enumerate(data)
    ]


def requests_for(max_new_tokens: int, sampled: bool) -> list[GenerationRequest]:
    if not sampled:  # greedy: every runner must produce the same tokens
        return [
            GenerationRequest(
                messages=[{"role": "user", "content": p}],
                max_new_tokens=max_new_tokens,
                temperature=0.0,
            )
            for p in PROMPTS
        ]
    return [
        GenerationRequest(
            messages=[{"role": "user", "content": p}],
            n=4,
            max_new_tokens=max_new_tokens,
            temperature=0.7,
            top_p=0.8,
            seed=i,
        )
        for i, p in enumerate(PROMPTS[:2])
    ]


def backend_runner(backend: Backend, requests: list[GenerationRequest], log: list) -> Runner:
    def run() -> int:
        out = backend.generate(requests)
        log.append([c.token_ids for group in out for c in group])
        return sum(len(c.token_ids) for group in out for c in group)

    return run


def bare_runner(
    backend: TransformersBackend, requests: list[GenerationRequest], log: list
) -> Runner:
    """``model.generate`` on the same prompts (left padded, as the backend does); a sampled
    request becomes ``num_return_sequences``."""
    model = backend.model
    prompts = [backend.encode_context(r.messages) for r in requests]
    width = max(map(len, prompts))
    ids = torch.tensor([[backend.pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    req = requests[0]
    sampled = req.temperature > 0
    kwargs: dict[str, Any] = {"do_sample": sampled, "max_new_tokens": req.max_new_tokens}
    if sampled:
        kwargs.update(
            temperature=req.temperature, top_p=req.top_p, top_k=0, num_return_sequences=req.n
        )
    eos = set(backend.eos_ids)

    def run() -> int:
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids, attention_mask=mask, pad_token_id=backend.pad_id, **kwargs
            )
        rows = []
        for row in out[:, width:].tolist():  # count up to and including the first EOS
            end = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
            rows.append(tuple(row[:end]))
        log.append(rows)
        return sum(map(len, rows))

    return run


def vllm_backend(params: dict[str, Any]) -> Backend:
    """The vLLM backend on the embedded model, fp32 like the others (vLLM's ``auto`` would run
    an fp32 checkpoint in 16 bits); imported only when ``--vllm`` is given."""
    from cat_plugins.backends.vllm_backend import VLLMBackend

    return VLLMBackend({"model": "default", "dtype": "float32", **params})


def time_runners(runners: dict[str, Runner], repeats: int) -> dict[str, dict[str, float]]:
    for run in runners.values():  # warm-up: first-call allocations, lazy kernels
        run()
    best: dict[str, dict[str, float]] = {}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            tokens = run()
            elapsed = time.perf_counter() - start
            if name not in best or elapsed < best[name]["seconds"]:
                best[name] = {"seconds": elapsed, "tokens": tokens, "tok_s": tokens / elapsed}
    return best


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one, else the architecture."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def report(load: dict[str, float] | None, sections: dict[str, Any], args: Any) -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    lines = [
        "# Generation benchmark (CPU)",
        "",
        f"Machine: {os.cpu_count()}-core CPU ({cpu_name()}), {gpu}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"transformers {__import__('transformers').__version__}; "
        f"1-minute load average {args.load_start:.1f} before the run (other work on the "
        f"machine) and {os.getloadavg()[0]:.1f} at its end (the run's own threads included). "
        "Embedded SmolLM2-135M-Instruct, fp32.",
        f"Command: `{shlex.join(['python', 'benchmarks/generation.py', *args.argv])}`",
        "",
    ]
    if args.vllm:
        import vllm

        params = {"dtype": "float32", **json.loads(args.vllm_params)}
        lines[-1:-1] = [f"vLLM {vllm.__version__} (vllm backend params {json.dumps(params)})."]
    if load:
        lines += [
            "## Embedded model load",
            "",
            "| first load (GGUF -> cache) | second load (cached) | ratio (goal >= 3x) |",
            "|---|---|---|",
            f"| {load['first_s']:.1f} s | {load['second_s']:.2f} s | {load['ratio']:.0f}x |",
            "",
        ]
    for title, (results, note) in sections.items():
        base = results.get("bare model.generate")
        lines += [
            f"## {title}",
            "",
            note,
            "",
            "| runner | tokens | seconds | seconds vs bare | tok/s | time/token vs bare |",
        ]
        lines.append("|---|---|---|---|---|---|")
        for name, r in results.items():
            rel = f"{base['tok_s'] / r['tok_s'] - 1:+.1%}" if base else "-"
            wall = f"{r['seconds'] / base['seconds'] - 1:+.1%}" if base else "-"
            row = (
                f"| {name} | {r['tokens']} | {r['seconds']:.2f} | {wall} | {r['tok_s']:.1f} "
                f"| {rel} |"
            )
            lines.append(row)
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import sys

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-load", action="store_true", help="skip the cold/warm load test")
    parser.add_argument("--vllm", action="store_true", help="also run the vllm backend")
    parser.add_argument("--vllm-params", default="{}", help="JSON params for the vllm backend")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    parser.add_argument(
        "--sections",
        default="greedy,sampled,step",
        help="comma-separated: greedy, sampled (open prompts), step (a GRPO step's rollouts)",
    )
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    args.load_start = os.getloadavg()[0]

    load = None if args.skip_load else measure_load()
    backend = TransformersBackend({"model": "default", "device": "cpu"})
    other = vllm_backend(json.loads(args.vllm_params)) if args.vllm else None
    sections = {}
    wanted = args.sections.split(",")
    for kind in wanted:
        if kind not in ("greedy", "sampled", "step"):
            raise SystemExit(f"--sections: unknown section {kind!r} (greedy, sampled, step)")
    for kind in ("greedy", "sampled", "step"):
        if kind not in wanted:
            continue
        sampled = kind != "greedy"
        requests = (
            step_requests(args.max_new_tokens)
            if kind == "step"
            else requests_for(args.max_new_tokens, sampled)
        )
        logs: dict[str, list] = {"backend": [], "bare": [], "vllm": []}
        runners = {
            "transformers backend": backend_runner(backend, requests, logs["backend"]),
            "bare model.generate": bare_runner(backend, requests, logs["bare"]),
        }
        if other is not None:
            runners["vllm backend"] = backend_runner(other, requests, logs["vllm"])
        results = time_runners(runners, args.repeats)
        if kind == "step":
            title = (
                f"A GRPO step's rollouts: 2 arithmetic prompts x G=8, temperature 0.7, "
                f"top_p 1.0, max_new_tokens={args.max_new_tokens}"
            )
            note = (
                "The prompts and sampling settings of `benchmarks/grpo_vs_trl.py`. Different "
                "random draws per runner, so the kept token counts differ: 'seconds vs bare' "
                "compares generating the step's rollouts, 'time/token' the cost per kept token. "
                "Bare generate steps every row until the longest ends (or max_new_tokens) and "
                "prefills each prompt G times; the backend drops finished rows and prefills a "
                "prompt once per group, so it can be faster than bare generate."
            )
        elif sampled:
            title = "Sampled: 2 prompts x n=4, temperature 0.7, top_p 0.8"
            note = (
                "Different random draws per runner: compare tok/s, not texts. Tokens are the "
                "ones kept (up to EOS); bare generate keeps stepping finished rows until the "
                "longest ends, the backend drops them from the batch."
            )
        else:
            title = f"Greedy: 8 chat prompts, max_new_tokens={args.max_new_tokens}"
            same = logs["backend"][-1] == logs["bare"][-1]
            full = all(len(t) == args.max_new_tokens for t in logs["bare"][-1])
            note = (
                f"Backend and bare generate produced identical tokens: {'yes' if same else 'NO'}; "
                f"every row ran to max_new_tokens: {'yes' if full else 'no'}."
            )
            if other is not None:
                rows = zip(logs["vllm"][-1], logs["backend"][-1], strict=True)
                agree = sum(a == b for a, b in rows)
                note += f" vLLM's tokens equal the backend's in {agree} of {len(requests)} rows."
        sections[title] = (results, note)
    text = report(load, sections, args)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
