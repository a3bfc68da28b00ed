"""Why synthesis looks slow next to rollouts (issue "faster than the peers", item 2): anchor
synthesis tokens/s against rollout tokens/s on the same model, with the prompt-length effect
separated from decoding.

A synthesized reference reads all G rollouts: its prompt is ~G x the rollout length, while a
rollout's prompt is the short question, prefilled once for its G samples. Per *generated* token
synthesis therefore also pays a long prefill, and it decodes fewer rows at once (one reference
per prompt against G rollouts). This script measures, in one process, on the embedded model:

1. rollouts: P arithmetic prompts x G samples (the quickstart's settings);
2. synthesis: the real ``synthesis`` aggregator on those rollouts (P references);
3. the synthesis prompts' prefill alone (one forward pass over them, no decoding);
4. a control: P short prompts x 1 sample with the synthesis budget (decode at synthesis's batch
   width without the long prompt).

Runs are repeated and interleaved (A B A B); the best is kept.

    OMP_NUM_THREADS=2 python benchmarks/synthesis_speed.py [--prompts 16] [--G 8] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from cat_framework import GenerationRequest, Roles, RolloutGroup
from cat_plugins.aggregators.synthesis import SynthesisAggregator
from cat_plugins.backends.transformers_backend import TransformersBackend
from cat_plugins.datasets.arithmetic import ArithmeticDataset

OUT = Path(__file__).resolve().parent / "results" / "synthesis_speed-cpu-2core.json"


def tokens(completions: list[list[Any]]) -> int:
    return sum(len(c.token_ids) for group in completions for c in group)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--G", type=int, default=8)
    ap.add_argument("--rollout-tokens", type=int, default=64)
    ap.add_argument("--synthesis-tokens", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    load_before = os.getloadavg()
    backend = TransformersBackend({"model": "default", "device": "cpu"})
    prompts = ArithmeticDataset({"count": args.prompts}).load()
    synth = SynthesisAggregator(
        {"max_new_tokens": args.synthesis_tokens},
        roles=Roles(policy=backend, anchor=backend, judge=backend),
    )

    def rollouts() -> tuple[list[RolloutGroup], int, float]:
        reqs = [
            GenerationRequest(messages=p.messages, n=args.G, temperature=0.7, top_p=0.95,
                              max_new_tokens=args.rollout_tokens, seed=i)
            for i, p in enumerate(prompts)
        ]  # fmt: skip
        start = time.perf_counter()
        out = backend.generate(reqs)
        seconds = time.perf_counter() - start
        return [RolloutGroup(p, o) for p, o in zip(prompts, out, strict=True)], tokens(out), seconds

    groups, _, _ = rollouts()  # warm-up, and the rollouts synthesis reads
    synth_ids = [backend.encode_context([{"role": "user", "content": synth.build_prompt(g)[0]}])
                 for g in groups]  # fmt: skip
    rollout_ids = [backend.encode_context(p.messages) for p in prompts]

    def synthesis() -> tuple[int, float]:
        start = time.perf_counter()
        refs = synth.aggregate(groups)
        seconds = time.perf_counter() - start
        return sum(r.details["tokens"] for r in refs), seconds

    def prefill() -> float:
        from cat_plugins.backends.sampling import left_pad

        ids, mask = left_pad(synth_ids, backend.pad_id, backend.device)
        start = time.perf_counter()
        with torch.inference_mode():
            backend.model(input_ids=ids, attention_mask=mask, logits_to_keep=1)
        return time.perf_counter() - start

    def control() -> tuple[int, float]:
        reqs = [
            GenerationRequest(messages=p.messages, n=1, temperature=0.7, top_p=0.95,
                              max_new_tokens=args.synthesis_tokens, seed=i)
            for i, p in enumerate(prompts)
        ]  # fmt: skip
        start = time.perf_counter()
        out = backend.generate(reqs)
        return tokens(out), time.perf_counter() - start

    best: dict[str, dict[str, float]] = {}
    for _ in range(args.repeats):
        for name, fn in (("rollouts", lambda: rollouts()[1:]), ("synthesis", synthesis),
                         ("control", control), ("prefill", lambda: (0, prefill()))):  # fmt: skip
            n, seconds = fn()
            if name not in best or seconds < best[name]["seconds"]:
                best[name] = {"tokens": n, "seconds": round(seconds, 3)}
    for row in best.values():
        row["tok_per_s"] = round(row["tokens"] / row["seconds"], 1) if row["tokens"] else None
    decode_s = best["synthesis"]["seconds"] - best["prefill"]["seconds"]
    per_token = {k: best[k]["seconds"] / best[k]["tokens"] for k in ("rollouts", "synthesis")}
    result = {
        "benchmark": "synthesis_speed",
        "when": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": {
            "model": "embedded SmolLM2-135M-Instruct, fp32, transformers backend",
            "prompts": args.prompts,
            "G": args.G,
            "rollout_max_new_tokens": args.rollout_tokens,
            "synthesis_max_new_tokens": args.synthesis_tokens,
            "repeats": args.repeats,
            "prompt_tokens_mean": {
                "rollout": round(sum(map(len, rollout_ids)) / len(rollout_ids), 1),
                "synthesis": round(sum(map(len, synth_ids)) / len(synth_ids), 1),
            },
        },
        "best": best,
        "ratios": {
            "synthesis_over_rollout_time_per_generated_token": round(
                per_token["synthesis"] / per_token["rollouts"], 2
            ),
            "synthesis_prefill_share": round(
                best["prefill"]["seconds"] / best["synthesis"]["seconds"], 3
            ),
            "synthesis_decode_only_over_rollout_per_token": round(
                decode_s / best["synthesis"]["tokens"] / per_token["rollouts"], 2
            ),
            "control_over_rollout_per_token": round(
                best["control"]["seconds"] / best["control"]["tokens"] / per_token["rollouts"], 2
            ),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
