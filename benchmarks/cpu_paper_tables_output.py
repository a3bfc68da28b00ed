"""Tables (markdown) and plots (PNG) of ``cpu_paper_tables.py``'s results, kept apart from the
code that runs the experiment."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _ci(c: dict[str, Any] | None) -> str:
    if not c or c.get("score") is None:
        return "—"
    lo, hi = c.get("ci_low"), c.get("ci_high")
    ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""
    return f"{c['score']:.3f}{ci}"


def markdown(r: dict[str, Any]) -> str:
    """The tables, exactly as measured (see docs/experiments.md for what they mean)."""
    s = r["settings"]
    lines = [
        "# CPU-scale paper tables (arithmetic task, embedded SmolLM2-135M)",
        "",
        f"Machine: {r['machine']['cpu']}, "
        + (
            "tabulated with --collect from runs made earlier (how they ran: README.md). "
            if r["machine"].get("tabulated_only")
            else f"{r['machine']['cores_used']} core(s) used, "
            f"{r['machine']['torch_threads']} torch thread(s). "
        )
        + f"Mode: {r['mode']}. Wall time: "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in r["wall_s"].items() if v is not None)
        + f" (total {sum(v for v in r['wall_s'].values() if v) / 60:.0f} min).",
        "",
    ]
    if r.get("missing"):
        lines += [f"**Not complete, left out:** {', '.join(r['missing'])}.", ""]
    tt = r.get("test_time")
    if tt:
        lines += [
            f"## Test-time CaT: {s['test_time']['problems']} problems, "
            f"G = {s['test_time']['G']} (95% bootstrap CI)",
            "",
            "| estimator | accuracy [95% CI] | no answer | differs from majority | right when "
            "it differs | right when all rollouts wrong |",
            "|---|---|---|---|---|---|",
        ]
        for label, c in tt["estimators"].items():
            v = tt["versus_majority"][label]
            lines.append(
                f"| {label} | {_ci(c)} | {v['no_answer']}/{v['problems']} | "
                f"{v['disagrees']}/{v['problems']} | {v['right_when_disagreeing']}/"
                f"{v['disagrees']} | {v['right_when_all_wrong']}/{v['all_rollouts_wrong']} |"
            )
        lenient = tt.get("estimators_read_at_number_level") or {}
        if lenient:
            lines += [
                "",
                "Post hoc, not the framework's rule: the same references read at the `number` "
                "level (a reference's last number is its answer, as `single` reads a rollout): "
                + ", ".join(f"{k} {_ci(v)}" for k, v in lenient.items())
                + ".",
            ]
        ro = tt["rollouts"]
        lines += [
            "",
            f"Rollout accuracy {ro.get('accuracy', float('nan')):.3f}, pass@G "
            f"{ro.get('pass_at_g', float('nan')):.3f}.",
            "",
        ]
    tt_pairs = (tt or {}).get("pairs")
    if tt_pairs:
        lines += _estimator_pairs(tt_pairs)
    tr = r.get("training")
    if tr:
        lines += _training(tr, s["training"])
    dc = r.get("data_check")
    if dc:
        lines += ["## Data check (on the runs' own records)", ""]
        lines += [
            f"- {name}: {c['problems']} problems, {c['distinct']} distinct, "
            f"{c['also_trained_on']} also trained on"
            for name, c in dc.items()
            if isinstance(c, dict)
        ]
        lines += [
            f"- distinct questions trained on (all arms, all seeds): {dc['trained_distinct']}",
            "",
        ]
    return "\n".join(lines)


def _p(x: float) -> str:
    return f"{x:.3f}" if x >= 0.001 else "<0.001"


def _estimator_pairs(pairs: list[dict[str, Any]]) -> list[str]:
    lines = [
        "### Every estimator pair on the same problems",
        "",
        "| A vs B | A - B [paired 95% CI] | A right only | B right only | McNemar p | Holm p |",
        "|---|---|---|---|---|---|",
    ]
    for q in pairs:
        lines.append(
            f"| {q['a']} vs {q['b']} | {q['diff']:+.3f} [{q['ci_low']:+.3f}, {q['ci_high']:+.3f}] "
            f"| {q['a_only']} | {q['b_only']} | {_p(q['p'])} | {_p(q['p_holm'])} |"
        )
    return [*lines, ""]


def _training(tr: dict[str, Any], s: dict[str, Any]) -> list[str]:
    seeds = s["seeds"]
    lines = [
        f"## Training arms: {s['steps']} GRPO steps x {s['prompts_per_step']} prompts x "
        f"G = {s['G']}, seeds {', '.join(map(str, seeds))}; held-out {s['eval_problems']} "
        "problems",
        "",
        "Accuracy per seed (95% bootstrap CI over problems) and the mean over seeds.",
        "",
        "| arm | measure | " + " | ".join(f"seed {x}" for x in seeds) + " | mean |",
        "|---|---|" + "---|" * len(seeds) + "---|",
    ]
    for arm, t in tr["arms"].items():
        for m in ("rollouts", "single", "majority"):
            cells = [_ci(t["seeds"].get(x, t["seeds"].get(str(x), {})).get(m)) for x in seeds]
            lines.append(f"| {arm} | {m} | " + " | ".join(cells) + f" | {t['mean'][m]:.3f} |")
    lines += [
        "",
        "Mean over seeds:",
        "",
        "| arm | rollouts | single | majority |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {arm} | "
        + " | ".join(f"{t['mean'][m]:.3f}" for m in ("rollouts", "single", "majority"))
        + " |"
        for arm, t in tr["arms"].items()
    ]
    lines += [
        "",
        "### Every arm pair on the same held-out problems, pooled over seeds",
        "",
        "Rollout accuracy: per problem, the share of its rollouts that were right, averaged "
        "over seeds; paired bootstrap CI and sign-flip p. Majority: right/wrong per (problem, "
        "seed); McNemar exact. Holm-adjusted within each column family.",
        "",
        "| A vs B | rollouts A - B [paired 95% CI] | p | Holm p | majority A - B | "
        "A only / B only | McNemar p | Holm p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for q in tr["pairs"]:
        ro, mj = q["rollouts"], q["majority"]
        lines.append(
            f"| {q['a']} vs {q['b']} | {ro['diff']:+.3f} [{ro['ci_low']:+.3f}, "
            f"{ro['ci_high']:+.3f}] | {_p(ro['p'])} | {_p(ro['p_holm'])} | {mj['diff']:+.3f} | "
            f"{mj['a_only']} / {mj['b_only']} | {_p(mj['p'])} | {_p(mj['p_holm'])} |"
        )
    return [*lines, ""]


def plots(out: Path, r: dict[str, Any]) -> None:
    """Held-out accuracy per arm: each seed a dot, the mean a bar (one panel per measure)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tr = r.get("training")
    if not tr:
        return
    measures = ("rollouts", "single", "majority")
    fig = Figure(figsize=(9, 3.2), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(measures), sharey=True)
    arms = list(tr["arms"])
    for ax, m in zip(axes, measures, strict=True):
        for i, arm in enumerate(arms):
            t = tr["arms"][arm]
            ax.bar(i, t["mean"][m], color=f"C{i}", alpha=0.35)
            ys = [v[m]["score"] for v in t["seeds"].values()]
            ax.plot([i] * len(ys), ys, "o", color=f"C{i}", markersize=4)
        ax.set_xticks(range(len(arms)), arms, rotation=20, fontsize=8)
        ax.set_title(m if m != "rollouts" else "rollout accuracy", fontsize=9)
    axes[0].set_ylabel("held-out accuracy")
    fig.savefig(out / "training.png")
