"""Benchmark P3: judged (rollout, criterion) pairs per second, with the embedded model as judge.

A rubric reward asks G x |criteria| yes/no questions per prompt, every step. Three ways to ask
the same questions (the real ``rubric_judge`` prompts of ``RubricReward.judge_prompt``), over
``--steps`` steps of ``--prompts`` arithmetic prompts, G = 8 rollouts with the duplicates short
answers have, 5 criteria:

- ``per_pair``: one ``generate`` call per (rollout, criterion): the loop a reward without batching
  runs (the baseline);
- ``batched``: one ``ask_batched`` call per step, every question as is (``judge_schedule: false``);
- ``scheduled``: one :class:`JudgeScheduler` for the run (deduplicated, cached across steps,
  sorted by shared prefix), as the rewards do by default.

Throughput counts every (rollout, criterion) pair the reward needed, answered from the model or
the cache. Runs alternate between modes and the best of ``--repeats`` is reported (a busy CPU
then favours no mode). ``agreement`` is the share of verdict outputs equal to the per-pair ones
(greedy outputs can differ with batch padding in low precision; fp32 here). Target: scheduled
>= 5x per_pair.

    python benchmarks/judge_scheduler.py                 # transformers backend, fp32 CPU
    python benchmarks/judge_scheduler.py --vllm --backend-params '{"enable_prefix_caching": true}'
    python benchmarks/judge_scheduler.py --quick         # smoke run (1 prompt, 1 repeat)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from cat_framework import Backend, Completion, Prompt, RolloutGroup
from cat_plugins.rewards.judge_schedule import JudgeScheduler
from cat_plugins.rewards.judging import JudgeAnswer, ask_batched, chat
from cat_plugins.rewards.rubric import RubricReward
from cat_plugins.rewards.xml_parsing import parse_verdict

RESULTS = Path(__file__).parent / "results" / "judge_scheduler-cpu-2core.json"
QUICK = Path("/tmp/judge_scheduler-quick.json")  # a smoke run is no result

CRITERIA = (
    "States the correct final sum.",
    "Shows the addition step.",
    "Gives a single final answer.",
    "Contains no arithmetic errors.",
    "Is concise (one or two sentences).",
)

#: (a, b) of each prompt; rollouts per step below (8 each, short answers repeat)
QUESTIONS = ((17, 25), (38, 46), (123, 89), (7, 8))


def rollouts(a: int, b: int, step: int) -> list[str]:
    """G = 8 rollouts: in step 0, 5 distinct of 8; later steps repeat most earlier answers."""
    s = a + b
    pool = [
        f"{s}",
        f"{a} + {b} = {s}",
        f"The answer is {s}.",
        f"{s + 1}",
        f"{a} + {b} = {s}. So the answer is {s}.",
        f"I think it is {s - 10}.",
    ]
    # later steps: a new sample of the same prompt, mostly answers seen before, one new one
    picks = [0, 0, 1, 2, 0, 3, 1, 4] if step == 0 else [0, 1, 0, 2, 5, 0, 3, 0]
    return [pool[i] for i in picks]


def workload(n_prompts: int, n_steps: int) -> list[list[list[dict[str, str]]]]:
    """Per step, the judge conversations of every (prompt, rollout, criterion), rollout-major."""
    reward = RubricReward({"judge_sees_question": True})  # a shared question prefix
    steps = []
    for step in range(n_steps):
        convs = []
        for a, b in QUESTIONS[:n_prompts]:
            prompt = Prompt(id=f"{a}+{b}", messages=[{"role": "user", "content": f"{a} + {b}?"}])
            group = RolloutGroup(
                prompt=prompt, rollouts=[Completion(text=t) for t in rollouts(a, b, step)]
            )
            convs += [
                chat(reward.judge_prompt(group, r.text, c))
                for r in group.rollouts
                for c in CRITERIA
            ]
        steps.append(convs)
    return steps


Convs = Sequence[Sequence[Mapping[str, str]]]


def per_pair(backend: Backend, steps: list[Convs], tokens: int) -> list[JudgeAnswer[bool]]:
    return [
        ask_batched(backend, [c], parse_verdict, max_new_tokens=tokens)[0]
        for convs in steps
        for c in convs
    ]


def batched(backend: Backend, steps: list[Convs], tokens: int) -> list[JudgeAnswer[bool]]:
    return [
        a
        for convs in steps
        for a in ask_batched(backend, convs, parse_verdict, max_new_tokens=tokens)
    ]


def scheduled(backend: Backend, steps: list[Convs], tokens: int) -> list[JudgeAnswer[bool]]:
    scheduler = JudgeScheduler()  # one per run, as one per reward instance
    out = [
        a
        for convs in steps
        for a in scheduler.ask(backend, convs, parse_verdict, max_new_tokens=tokens)
    ]
    scheduled.stats = scheduler.total.to_dict()  # type: ignore[attr-defined]
    return out


MODES: dict[str, Callable[[Backend, list[Convs], int], list[JudgeAnswer[bool]]]] = {
    "per_pair": per_pair,
    "batched": batched,
    "scheduled": scheduled,
}


def counting(backend: Backend) -> list[int]:
    """Wrap ``backend.generate`` to record each call's batch size."""
    sizes: list[int] = []
    real = backend.generate

    def generate(requests: Any) -> Any:
        sizes.append(len(requests))
        return real(requests)

    backend.generate = generate  # type: ignore[method-assign]
    return sizes


def make_backend(vllm: bool, params: dict[str, Any]) -> Backend:
    if vllm:  # imported only when asked for
        from cat_plugins.backends.vllm_backend import VLLMBackend

        return VLLMBackend({"model": "default", "dtype": "float32", **params})
    from cat_plugins.backends.transformers_backend import TransformersBackend

    return TransformersBackend({"model": "default", "device": "cpu", **params})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=2, help="prompts per step (<= 4)")
    parser.add_argument("--steps", type=int, default=2, help="steps (the cache works from 2)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="judge token budget")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs per mode")
    parser.add_argument("--vllm", action="store_true", help="vllm backend instead of transformers")
    parser.add_argument("--backend-params", default="{}", help="JSON params for the backend")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 prompt, 1 repeat")
    parser.add_argument(
        "--out", type=Path, default=None, help=f"JSON output (default {RESULTS}; --quick: {QUICK})"
    )
    args = parser.parse_args()
    if args.quick:
        args.prompts, args.repeats = 1, 1
    steps = workload(min(args.prompts, len(QUESTIONS)), args.steps)
    n_pairs = sum(len(s) for s in steps)
    load_before = os.getloadavg()
    backend = make_backend(args.vllm, json.loads(args.backend_params))
    sizes = counting(backend)
    MODES["batched"](backend, steps[:1], args.max_new_tokens)  # warm-up, not timed
    best: dict[str, float] = {}
    raws: dict[str, list[float]] = {m: [] for m in MODES}
    calls: dict[str, list[int]] = {}
    outputs: dict[str, list[JudgeAnswer[bool]]] = {}
    for _ in range(args.repeats):
        for mode, run in MODES.items():
            sizes.clear()
            start = time.perf_counter()
            outputs[mode] = run(backend, steps, args.max_new_tokens)
            raws[mode].append(time.perf_counter() - start)
            calls[mode] = list(sizes)
    for mode, times in raws.items():
        best[mode] = min(times)
    base = outputs["per_pair"]
    result = {
        "benchmark": "P3 judge scheduler: judged (rollout, criterion) pairs per second",
        "backend": "vllm" if args.vllm else "transformers",
        "backend_params": json.loads(args.backend_params),
        "model": "embedded SmolLM2-135M-Instruct, fp32",
        "quick": args.quick,
        "workload": {
            "prompts_per_step": min(args.prompts, len(QUESTIONS)),
            "steps": args.steps,
            "rollouts_per_prompt": 8,
            "criteria": len(CRITERIA),
            "pairs": n_pairs,
            "max_new_tokens": args.max_new_tokens,
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "load": {"before": load_before, "after": os.getloadavg()},
        "repeats": args.repeats,
        "seconds": raws,
        "best_s": best,
        "pairs_per_s": {m: n_pairs / t for m, t in best.items()},
        "ratio_vs_per_pair": {m: best["per_pair"] / t for m, t in best.items()},
        "generate_calls": {m: len(c) for m, c in calls.items()},
        "requests_sent": {m: sum(c) for m, c in calls.items()},
        "schedule_stats": getattr(scheduled, "stats", {}),
        "agreement_with_per_pair": {
            m: sum(a.raw == b.raw for a, b in zip(out, base, strict=True)) / len(base)
            for m, out in outputs.items()
        },
        "parsed_share": {
            m: sum(a.value is not None for a in out) / len(out) for m, out in outputs.items()
        },
        "target": "scheduled >= 5x per_pair",
    }
    out = args.out or (QUICK if args.quick else RESULTS)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("pairs_per_s", "ratio_vs_per_pair")}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
