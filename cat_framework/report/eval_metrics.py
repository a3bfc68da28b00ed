"""A run's evaluations as one matrix: estimator x (score, CI, the reference diagnostics).

The engine names every evaluation number ``eval/<label>/<metric>`` (``metrics.jsonl`` of a
training run, once per evaluation) or nests them in ``metrics.json`` (``mode: evaluate``); both
are read here as the same flat rows, so the report and ``compare`` show one thing one way. A
reader needs the last evaluation per estimator, the score it started from, and the four
diagnostics that say *why* an estimator scores what it does; the raw rows stay available.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cat_framework.report.figure import Rows
from cat_framework.report.load import RunData, numeric

#: an evaluation number: ``eval/<label>/<metric>`` (``rollouts`` is the policy's own samples)
EVAL_KEY = re.compile(r"^eval/(?P<label>[^/]+)/(?P<metric>.+)$")
ROLLOUTS = "rollouts"

#: the matrix's diagnostic columns: metric (as the engine names it), header, what it counts
RATES: tuple[tuple[str, str, str], ...] = (
    (
        "reference/no_answer",
        "no answer",
        "references that commit to no final answer, over prompts",
    ),
    (
        "reference/disagree_majority",
        "disagrees with the vote",
        "the reference's answer differs from the rollouts' majority, over prompts where both exist",
    ),
    (
        "reference/correct_when_disagreeing",
        "right when disagreeing",
        "gold audit: the reference is right, over the prompts where it disagrees with the vote",
    ),
    (
        "reference/correct_when_all_wrong",
        "right when all rollouts were wrong",
        "gold audit: the reference is right, over prompts whose rollouts are all wrong",
    ),
)


@dataclass
class Rate:
    """One diagnostic of one estimator: the rate (None when nothing was counted) and its counts."""

    rate: float | None
    count: float | None
    total: float | None


@dataclass
class EstimatorRow:
    """One estimator's last evaluation, and its first score when the run evaluated more than once."""

    label: str
    score: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    n: float | None = None
    unscorable: float | None = None
    first: float | None = None
    rates: dict[str, Rate] = field(default_factory=dict)


@dataclass
class EvalMatrix:
    """The last evaluation of a run, one row per estimator; ``rollouts`` is the policy's own."""

    step: float
    first_step: float | None  # the first evaluation, when it is not the last
    steps: list[float]
    rows: list[EstimatorRow]
    rates: list[tuple[str, str, str]]  # the RATES some estimator has
    rollouts: dict[str, float]
    first_rollouts: dict[str, float]
    raw: dict[str, float]  # every eval/ number of the last evaluation


def summary_row(summary: Mapping[str, Any]) -> dict[str, float]:
    """``metrics.json`` of ``mode: evaluate`` as the flat ``eval/...`` row a training run logs
    (the engine's ``flat_metrics``), at step 0."""
    row: dict[str, float] = {"step": 0.0}

    def put(label: str, values: Any) -> None:
        for key, value in (values if isinstance(values, Mapping) else {}).items():
            if numeric(value) is not None:
                row[f"eval/{label}/{key}"] = numeric(value)  # type: ignore[assignment]

    for label, values in (summary.get("aggregators") or {}).items():
        put(str(label), values)
    put(ROLLOUTS, summary.get("rollouts"))
    for label, values in (summary.get("diagnostics") or {}).items():
        put(str(label), values)
    return row


def eval_rows(run: RunData) -> list[dict[str, float]]:
    """Every evaluation of ``run`` as flat rows over steps (an evaluate run: one, at step 0)."""
    summary = run.eval_summary
    if isinstance(summary, Mapping) and isinstance(summary.get("aggregators"), Mapping):
        return [summary_row(summary)]
    return [
        {k: v for k, v in row.items() if k == "step" or k.startswith("eval/")}
        for row in run.metrics
        if any(k.startswith("eval/") for k in row)
    ]


def estimator_labels(rows: Rows) -> list[str]:
    """The estimators that were scored (``eval/<label>/score``), in logged order."""
    return list(
        dict.fromkeys(
            m.group("label")
            for row in rows
            for k in row
            if (m := EVAL_KEY.match(k)) and m.group("metric") == "score"
        )
    )


def _rates(row: Mapping[str, float], label: str) -> dict[str, Rate]:
    out = {}
    for name, _, _ in RATES:
        base = f"eval/{label}/{name}"
        rate = Rate(row.get(base), row.get(base + "/count"), row.get(base + "/total"))
        if rate != Rate(None, None, None):
            out[name] = rate
    return out


def _estimator(row: Mapping[str, float], first: Mapping[str, float], label: str) -> EstimatorRow:
    def get(key: str) -> float | None:
        return row.get(f"eval/{label}/{key}")

    start = first.get(f"eval/{label}/score") if first is not row else None
    return EstimatorRow(
        label=label,
        score=get("score"),
        ci_low=get("ci_low"),
        ci_high=get("ci_high"),
        n=get("n"),
        unscorable=get("unscorable"),
        first=start,
        rates=_rates(row, label),
    )


def _rollouts(row: Mapping[str, float]) -> dict[str, float]:
    prefix = f"eval/{ROLLOUTS}/"
    return {k.removeprefix(prefix): v for k, v in row.items() if k.startswith(prefix)}


def eval_matrix(rows: Sequence[Mapping[str, float]]) -> EvalMatrix | None:
    """The matrix of the last evaluation in ``rows`` (flat ``eval/`` rows), None without one."""
    evals = [r for r in rows if any(EVAL_KEY.match(k) for k in r)]
    if not evals:
        return None
    last, first = evals[-1], evals[0]
    labels = [k for k in estimator_labels([last]) if k != ROLLOUTS]
    estimators = [_estimator(last, first, label) for label in labels]
    present = {name for e in estimators for name in e.rates}
    return EvalMatrix(
        step=last.get("step", float(len(rows))),
        first_step=first.get("step") if first is not last else None,
        steps=[r["step"] for r in evals if "step" in r],
        rows=estimators,
        rates=[spec for spec in RATES if spec[0] in present],
        rollouts=_rollouts(last),
        first_rollouts=_rollouts(first) if first is not last else {},
        raw={k: v for k, v in last.items() if k.startswith("eval/")},
    )


__all__ = [
    "EVAL_KEY",
    "RATES",
    "ROLLOUTS",
    "EstimatorRow",
    "EvalMatrix",
    "Rate",
    "estimator_labels",
    "eval_matrix",
    "eval_rows",
    "summary_row",
]
