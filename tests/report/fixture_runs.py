"""Run directories for the report tests, made without waiting for any model.

``make_eval_run`` runs a real ``mode: evaluate`` pipeline with the scripted echo backend (the
model text includes an injected ``<script>``); ``make_train_run`` writes a synthetic training run
(config, log, metrics over steps with eval steps, a checkpoint, a metrics line cut by a crash)
whose records are built as the trainer builds them: the engine's ``build_record`` over rewards
whose details are the rubric reward's (``verdict_record`` verdicts, ``rubric``,
``rubric_status``), so no test pins a record layout the engine does not write.
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import yaml

from cat_framework import hookimpl, load_plugins
from cat_framework.engine.record_builder import build_record
from cat_framework.pipeline import load_pipeline
from cat_framework.runner import run_pipeline
from cat_framework.types import Completion, Criterion, Prompt, Reference, Rewards, RolloutGroup
from cat_plugins.rewards.judging import JudgeAnswer, verdict_record
from tests.helpers.echo_backend import EchoBackend

INJECTED = "<script>alert('pwned')</script>"


class EchoPlugin:
    @hookimpl
    def register_backends(self, register):
        register(EchoBackend)


def make_eval_run(tmp: Path) -> Path:
    """A real ``mode: evaluate`` run: rollouts "4" (with an injected script), "4", "2.5"."""
    rows = [
        {"id": "a", "question": "What is 2+2? <b>bold?</b>", "answer": "4"},
        {"id": "b", "question": "What is 2+3?", "answer": "5"},
        {"id": "c", "question": "What is 10/4?", "answer": "\\frac{5}{2}"},
    ]
    data = tmp / "toy.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    replies = [f"{INJECTED} so \\boxed{{4}}", "\\boxed{4}", "so \\boxed{2.5}"]
    (tmp / "p.yaml").write_text(
        textwrap.dedent(f"""\
        name: toy-eval
        mode: evaluate
        models:
          policy: {{backend: echo, replies: {json.dumps(replies)}}}
        data:
          eval: {{dataset: jsonl, path: "{data}", answer_field: answer, id_field: id}}
        rollouts: {{n: 3, max_new_tokens: 8}}
        eval:
          aggregators: [single, majority, minppl, synthesis]
          bootstrap: 200
        """)
    )
    plugins = load_plugins(entry_points=False, extra=[("echo", EchoPlugin())])
    pipe = load_pipeline(tmp / "p.yaml", plugins=plugins)
    run_dir = tmp / "run"
    run_pipeline(pipe, plugins=plugins, run_dir=str(run_dir))
    return run_dir


RUBRIC = [
    "Recommends seeing a doctor if symptoms persist",
    "Mentions hydration",
    "Does not prescribe antibiotics",
    "Explains when to seek urgent care",
    "Uses plain language",
]


def _rubric_details(pattern: list[bool | None]) -> dict:
    """One rollout's details as the rubric reward writes them (the keys the report reads)."""
    raws = {True: "yes", False: "no"}
    return {
        "verdicts": [
            verdict_record(Criterion(c), JudgeAnswer(m, (raws.get(m, "??"),)))
            for c, m in zip(RUBRIC, pattern, strict=True)
        ],
        "rubric": list(RUBRIC),
        "rubric_status": "ok",
    }


#: the rollouts' verdicts on RUBRIC (``None``: unparsed), the same at every step
PATTERNS = [
    [True] * 5,
    [True, False, True, None, True],
    [False] * 5,
    [True, True, True, True, False],
]


def train_records(step: int, prompts: int, g: int) -> list[dict]:
    """The records of one step as ``grpo_step`` writes them (``build_record(...).to_dict()``)."""
    patterns = PATTERNS[:g]
    rewards = [sum(v is True for v in pat) / sum(v is not None for v in pat) for pat in patterns]
    mu = sum(rewards) / len(rewards)
    sd = math.sqrt(sum((r - mu) ** 2 for r in rewards) / len(rewards)) or 1.0
    ref = Reference(
        "Rest, hydrate, see a doctor if it lasts > 10 days.", "synthesis", None, {"order": [0, 1]}
    )
    out = []
    for p in range(prompts):
        question = f"I have a cold (step {step}). What should I do?"
        prompt = Prompt(
            f"hb-{p}", ({"role": "user", "content": question},), meta={"task": "freeform"}
        )
        rollouts = tuple(
            Completion(
                (INJECTED if i == 1 else "") + f"Rest and drink fluids. Variant {i}.",
                token_ids=tuple(range(30 + i)),
                finish_reason="length" if i == 2 else "stop",
            )
            for i in range(g)
        )
        record = build_record(
            "train", step, RolloutGroup(prompt, rollouts), {"synthesis": ref}, "synthesis",
            rewards=Rewards(rewards, [_rubric_details(pat) for pat in patterns]),
            advantages=[(r - mu) / sd for r in rewards],
        )  # fmt: skip
        out.append(record.to_dict())
    return out


def _rate(name: str, count: int, total: int) -> dict[str, float]:
    """A diagnostic as the engine logs it: the rate (absent when nothing was counted), its
    count and its total."""
    out = {f"{name}/count": float(count), f"{name}/total": float(total)}
    return {**out, name: count / total} if total else out


def teacher_diagnostics(step: int) -> dict[str, float]:
    """The teacher's diagnostics of a training step, under the engine's names."""
    return {
        **_rate("reference/no_answer", step % 2, 4),
        **_rate("reference/disagree_majority", 1, 4 - step % 2),
        **_rate("reference/correct_when_disagreeing", step % 2, 1),
        **_rate("reward/unscorable", 0, 16),
        "reference/accuracy": 0.5 + 0.02 * step,
        "reward/length_corr": 0.1 * (step % 5) - 0.2,
    }


def make_train_run(
    root: Path, steps: int = 12, eval_every: int = 4, prompts: int = 2, g: int = 4
) -> Path:
    """A training run directory: config, log, metrics, the trainer's records, a checkpoint."""
    root.mkdir(parents=True, exist_ok=True)
    config = {
        "name": "toy-cat-rl",
        "mode": "train",
        "models": {
            "policy": {"backend": "transformers", "model": "tiny-llama"},
            "anchor": "initial-policy",
        },
        "rollouts": {"n": g, "max_new_tokens": 64},
        "reward": {"name": "rubric"},
        "trainer": {"steps": steps, "learning_rate": 5e-7, "beta": 0.001},
        "eval": {"confidence": 0.95},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    log = [
        {
            "event": "run start",
            "level": "info",
            "timestamp": "2025-01-01T10:00:00",
            "mode": "train",
        },
        {
            "event": "rubric fallback",
            "level": "warning",
            "timestamp": "2025-01-01T10:01:00",
            "groups": 1,
        },
        {
            "event": "run end",
            "level": "info",
            "timestamp": "2025-01-01T10:09:00",
            "status": "completed",
        },
    ]
    (root / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log))
    with (root / "metrics.jsonl").open("w") as f:
        for s in range(1, steps + 1):
            row = {
                "step": s,
                "reward/mean": 0.3 + 0.04 * s,
                "reward/std": 0.2 - 0.01 * s,
                "frac_reward_zero_std": 0.1,
                "kl": 1e-4 * s,
                "clip_fraction": 0.02,
                "entropy": 1.5 - 0.05 * s,
                "completions/mean_length": 40 + s,
                "completions/max_length": 64,
                "tokens_per_s": 120.0,
                "time/step": 3.0 + 0.1 * s,
                "time/teacher": 1.2,
                "time/training": 1.5,
                "mystery": {"nested": [1, 2], "flag": True},
                **teacher_diagnostics(s),
            }
            if s % eval_every == 0:
                score = 0.4 + 0.02 * s
                row.update(
                    {
                        "eval/synthesis/score": score,
                        "eval/synthesis/ci_low": score - 0.1,
                        "eval/synthesis/ci_high": score + 0.1,
                        "eval/synthesis/n": 50,
                        "eval/rollouts/accuracy": score - 0.05,
                        **_rate("eval/synthesis/reference/no_answer", s % 3, 50),
                        **_rate("eval/synthesis/reference/disagree_majority", 10, 50 - s % 3),
                        **_rate("eval/synthesis/reference/correct_when_disagreeing", 4, 10),
                        **_rate("eval/synthesis/reference/correct_when_all_wrong", 0, 0),
                    }
                )
            f.write(json.dumps(row) + "\n")
        f.write('{"step": 99, "cut by a cra')  # a crash mid-line
    with (root / "records.jsonl").open("w") as f:
        for s in range(1, steps + 1):
            f.writelines(json.dumps(rec) + "\n" for rec in train_records(s, prompts, g))
    ckpt = root / "checkpoints" / "step-000008"
    ckpt.mkdir(parents=True)
    (ckpt / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    return root
