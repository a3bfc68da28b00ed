"""Do our sampler and ``model.generate`` (TRL's generation) produce completions of the same length?

The GRPO side by side (``grpo_vs_trl.py``) saw TRL generate more tokens per step for the same
prompts. This draws many completions of the same prompts, at the benchmark's settings
(temperature 0.7, top-p 1, top-k 0, 128 new tokens, the embedded SmolLM2-135M-Instruct, fp32),
from our ``transformers`` backend and from ``model.generate`` on a left-padded batch of all the
prompts (what TRL's ``_generate`` runs), and compares the length distributions: means with
their standard errors, a Welch t statistic, and the per-sample lengths (in the JSON).

    python benchmarks/completion_lengths.py [--samples 64] [--prompts 2]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "plugins"))
MAX_NEW, TEMPERATURE = 128, 0.7


def ours(backend: Any, prompts: list[Any], samples: int) -> list[int]:
    from cat_framework.types import GenerationRequest

    requests = [
        GenerationRequest(messages=tuple(map(dict, p.messages)), n=samples,
                          temperature=TEMPERATURE, max_new_tokens=MAX_NEW, seed=1000 + i)
        for i, p in enumerate(prompts)
    ]  # fmt: skip
    return [len(c.token_ids) for group in backend.generate(requests) for c in group]


def hf_generate(model: Any, tok: Any, prompts: list[Any], samples: int) -> list[int]:
    """``model.generate`` on a left-padded batch of every prompt, ``samples`` rows each; lengths
    count up to and including the first EOS (TRL's completion mask)."""
    import torch

    texts = [
        tok.apply_chat_template([dict(m) for m in p.messages], add_generation_prompt=True,
                                tokenize=False)
        for p in prompts
    ]  # fmt: skip
    tok.padding_side = "left"
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(
            **batch, do_sample=True, temperature=TEMPERATURE, top_k=0, top_p=1.0,
            max_new_tokens=MAX_NEW, num_return_sequences=samples, pad_token_id=tok.pad_token_id,
        )  # fmt: skip
    lengths = []
    for row in out[:, batch["input_ids"].shape[1] :].tolist():
        lengths.append(next((k + 1 for k, t in enumerate(row) if t == tok.eos_token_id), len(row)))
    return lengths


def summary(xs: list[int]) -> dict[str, float]:
    return {
        "n": len(xs),
        "mean": statistics.mean(xs),
        "sd": statistics.stdev(xs),
        "se": statistics.stdev(xs) / math.sqrt(len(xs)),
        "truncated_share": sum(x >= MAX_NEW for x in xs) / len(xs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=64, help="completions per prompt and side")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/completion_lengths-cpu-2core.json")
    args = parser.parse_args()
    from cat_plugins.backends.embedded import resolve_model_path
    from cat_plugins.backends.transformers_backend import TransformersBackend
    from cat_plugins.datasets.arithmetic import ArithmeticDataset

    prompts = ArithmeticDataset({"split": "train", "count": args.prompts, "seed": 0}).load()
    folder = resolve_model_path("embedded:smollm2-135m-instruct")
    backend = TransformersBackend({"model": folder, "dtype": "float32"})
    a = ours(backend, prompts, args.samples)
    b = hf_generate(backend.model, backend.tokenizer, prompts, args.samples)
    sa, sb = summary(a), summary(b)
    welch = (sa["mean"] - sb["mean"]) / math.sqrt(sa["se"] ** 2 + sb["se"] ** 2)
    report = {
        "benchmark": "completion_lengths",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "settings": {"model": "embedded:smollm2-135m-instruct", "temperature": TEMPERATURE,
                     "top_p": 1.0, "top_k": 0, "max_new_tokens": MAX_NEW,
                     "prompts": [p.id for p in prompts], "samples_per_prompt": args.samples},
        "ours": sa,
        "model_generate": sb,
        "welch_t": welch,
        "lengths": {"ours": a, "model_generate": b},
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "lengths"}, indent=1))


if __name__ == "__main__":
    main()
