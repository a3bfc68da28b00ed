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
            "| estimator | accuracy [95% CI] | no answer | disagrees w/ majority | right when "
            "disagreeing | right when all rollouts wrong |",
            "|---|---|---|---|---|---|",
        ]
        for label, c in tt["estimators"].items():
            d = tt["diagnostics"].get(label, {})

            def rate(key: str, d: dict[str, Any] = d) -> str:
                n, t = d.get(f"reference/{key}/count"), d.get(f"reference/{key}/total")
                return f"{int(n)}/{int(t)}" if n is not None and t else "—"

            lines.append(
                f"| {label} | {_ci(c)} | {rate('no_answer')} | {rate('disagree_majority')} | "
                f"{rate('correct_when_disagreeing')} | {rate('correct_when_all_wrong')} |"
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
    tr = r.get("training")
    if tr:
        lines += [
            f"## Training arms: {s['training']['steps']} GRPO steps, held-out "
            f"{s['training']['eval_problems']} problems (95% bootstrap CI)",
            "",
            "| arm | single before | single after | majority before | majority after | "
            "rollout acc. before | after |",
            "|---|---|---|---|---|---|---|",
        ]
        for arm, t in tr.items():
            b, a = t.get("before") or {}, t.get("after") or {}
            acc = [x.get("rollout_accuracy") for x in (b, a)]
            lines.append(
                f"| {arm} | {_ci(b.get('single'))} | {_ci(a.get('single'))} | "
                f"{_ci(b.get('majority'))} | {_ci(a.get('majority'))} | "
                + " | ".join(f"{x:.3f}" if x is not None else "—" for x in acc)
                + " |"
            )
        lines.append("")
    gs = r.get("g_scaling")
    if gs:
        lines += [
            f"## G-scaling: {s['g_scaling']['problems']} problems",
            "",
            "| G | majority | synthesis | rollout accuracy | synthesis read at `number` "
            "(post hoc) |",
            "|---|---|---|---|---|",
        ]
        for p in gs:
            acc = p.get("rollout_accuracy")
            post = (p.get("read_at_number_level") or {}).get("synthesis")
            lines.append(
                f"| {p['G']} | {_ci(p.get('majority'))} | {_ci(p.get('synthesis'))} | "
                + (f"{acc:.3f}" if acc is not None else "—")
                + f" | {_ci(post)} |"
            )
        lines.append("")
    return "\n".join(lines)


def plots(out: Path, r: dict[str, Any]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if r.get("g_scaling"):
        fig = Figure(figsize=(5.5, 3.4), dpi=110, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        pts = r["g_scaling"]
        gs = [p["G"] for p in pts]
        for label, color in (("majority", "#f58518"), ("synthesis", "#4c78a8")):
            ys = [p[label]["score"] for p in pts]
            lo = [p[label]["ci_low"] for p in pts]
            hi = [p[label]["ci_high"] for p in pts]
            ax.plot(gs, ys, marker="o", color=color, label=label)
            ax.fill_between(gs, lo, hi, color=color, alpha=0.15)
        ax.plot(gs, [p["rollout_accuracy"] for p in pts], ":", color="#777", label="rollout acc.")
        ax.set_xscale("log", base=2)
        ax.set_xticks(gs, [str(g) for g in gs])
        ax.set_xlabel("G (rollouts per problem)")
        ax.set_ylabel("accuracy")
        ax.legend(frameon=False, fontsize=8)
        fig.savefig(out / "g_scaling.png")
    if r.get("training"):
        fig = Figure(figsize=(5.5, 3.4), dpi=110, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        for i, (arm, t) in enumerate(r["training"].items()):
            ev = t.get("evaluations") or []
            xs = [e["step"] for e in ev]
            ax.plot(xs, [e["single"]["score"] for e in ev], marker="o", color=f"C{i}", label=arm)
            ax.fill_between(
                xs,
                [e["single"]["ci_low"] for e in ev],
                [e["single"]["ci_high"] for e in ev],
                color=f"C{i}",
                alpha=0.1,
            )
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("GRPO step")
        ax.set_ylabel("held-out accuracy (single sample)")
        ax.legend(frameon=False, fontsize=8)
        fig.savefig(out / "training.png")
