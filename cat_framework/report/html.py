"""The report page: one self-contained HTML file (inline CSS, PNGs as data URIs, no scripts).

Each section is rendered on its own: a section whose data is missing says so, and a section that
fails to render shows the error instead of taking the whole report down.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Mapping, Sequence

from cat_framework.report.evaluation import evaluation_section
from cat_framework.report.figure import Plot
from cat_framework.report.fragments import kv_table, missing
from cat_framework.report.load import RunData
from cat_framework.report.samples import esc, fmt, samples_section, tag
from cat_framework.report.views import PromptView

CSS = """
:root{--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--soft:#f6f8fa;--accent:#0969da;
--warn:#fff8c5;--warnline:#d4a72c;--bad:#cf222e;--good:#1a7f37}
*{box-sizing:border-box}
body{margin:0;background:#f3f5f7;color:var(--fg);
font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
main{max-width:1200px;margin:0 auto;padding:20px 28px 60px}
header h1{font-size:24px;margin:6px 0 4px}
header .meta{color:var(--muted);font-size:13px}
nav{position:sticky;top:0;z-index:2;background:#f3f5f7;padding:8px 0;border-bottom:1px solid var(--line)}
nav a{color:var(--accent);text-decoration:none;margin-right:16px;font-size:13px}
section{background:#fff;border:1px solid var(--line);border-radius:10px;padding:14px 20px 18px;margin:18px 0}
h2{font-size:18px;margin:0 0 10px;padding-bottom:6px;border-bottom:1px solid #eaeef2}
h3{font-size:15px;margin:14px 0 6px}
h4{font-size:13px;margin:14px 0 4px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted)}
table{border-collapse:collapse;font-size:13px}
th,td{padding:4px 10px;border-bottom:1px solid #eaeef2;text-align:left;vertical-align:top}
th{background:var(--soft);font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.best td{font-weight:600}
code{font:12.5px ui-monospace,"DejaVu Sans Mono",monospace;background:var(--soft);padding:0 4px;border-radius:4px}
.muted{color:var(--muted)} .missing{color:var(--muted);font-style:italic}
.problems{background:var(--warn);border:1px solid var(--warnline);border-radius:8px;padding:8px 14px}
.failure{background:#ffebe9;border:1px solid var(--bad);border-radius:8px;padding:8px 14px;margin:12px 0}
.failure b{color:var(--bad)}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:16px}
figure{margin:0} figure.wide{grid-column:1/-1}
figure img{width:100%;height:auto;border:1px solid #eaeef2;border-radius:6px}
figcaption{font-size:12px;color:var(--muted)} figcaption b{color:var(--fg)}
pre{margin:4px 0;white-space:pre-wrap;word-break:break-word;
font:12.5px/1.45 ui-monospace,"DejaVu Sans Mono",monospace}
pre.text{max-height:16em;overflow:auto;background:var(--soft);padding:7px 10px;border-radius:6px}
pre.config{max-height:32em;overflow:auto;background:var(--soft);padding:10px 12px;border-radius:6px}
.tag{display:inline-block;padding:0 8px;border-radius:10px;font-size:11.5px;line-height:19px;
background:#eef1f4;color:#393f46;margin:1px 2px;white-space:nowrap}
.tag.good{background:#dafbe1;color:var(--good)} .tag.bad{background:#ffebe9;color:var(--bad)}
.tag.warn{background:#fff1c2;color:#7d4e00} .tag.info{background:#ddf4ff;color:#0550ae}
details.prompt{border:1px solid var(--line);border-radius:8px;margin:10px 0;background:#fff}
details.prompt>summary{cursor:pointer;padding:7px 12px;background:var(--soft);border-radius:8px}
details.prompt[open]>summary{border-bottom:1px solid var(--line);border-radius:8px 8px 0 0}
summary .pid{font-weight:600;margin-right:6px}
summary .preview{display:block;color:var(--muted);font-size:12.5px;margin:2px 0 0 2px;
overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.body{padding:4px 16px 14px}
.msg .role{font-size:11.5px;color:var(--muted);font-weight:600}
.ref{border:1px solid #b6e3ff;border-radius:6px;padding:6px 10px;margin:6px 0;background:#f5fbff}
.ref:not(.primary){border-color:var(--line);background:#fff}
.rollout{border:1px solid var(--line);border-left:4px solid #8bd5a0;border-radius:6px;padding:5px 10px;margin:7px 0}
.rollout.disagree{border-left-color:var(--warnline);background:var(--warn)}
.rollout.wrong:not(.disagree){border-left-color:#ff8182}
.rollout.disagree pre.text{background:#fffdf0}
.meta{font-size:12.5px;margin-bottom:2px}
details.inner summary{cursor:pointer;font-size:12.5px;color:var(--muted)}
ul.verdicts{margin:4px 0;padding-left:20px;font-size:12.5px}
.scroll{overflow-x:auto}
table.rubric td.crit{min-width:320px;max-width:560px}
table.rubric th.disagree{background:var(--warn)}
.met-yes{background:#dafbe1;color:var(--good);text-align:center}
.met-no{background:#ffebe9;color:var(--bad);text-align:center}
.met-none{background:#eef1f4;color:var(--muted);text-align:center}
.pill{padding:0 6px;border-radius:4px;font-size:11.5px}
.legend{font-size:12.5px}
.swatch{display:inline-block;width:12px;height:12px;vertical-align:-1px;border-radius:2px}
.swatch.disagree{background:var(--warn);border:1px solid var(--warnline);border-left-width:4px}
.ci{position:relative;width:220px;height:14px;background:var(--soft);border-radius:3px}
.ci .range{position:absolute;top:4px;height:6px;background:#9ecbff;border-radius:3px}
.ci .point{position:absolute;top:1px;width:3px;height:12px;background:var(--accent);margin-left:-1px}
.kv td:first-child{color:var(--muted)}
table.matrix .ci{width:140px}
table.matrix th{white-space:normal;max-width:9em;vertical-align:bottom}
p.note{font-size:12px;margin:6px 0}
details.raw{margin-top:8px} details.raw>summary{cursor:pointer;color:var(--muted);font-size:12.5px}
"""

SECTIONS = [
    ("evaluation", "Evaluation"),
    ("plots", "Plots"),
    ("metrics", "Metrics"),
    ("samples", "Samples"),
    ("log", "Log"),
    ("config", "Config"),
    ("files", "Files"),
]


def plots_section(plots: Sequence[Plot]) -> str:
    if not plots:
        return missing(
            "Nothing to plot: no metrics.jsonl or metrics.json with numbers in this run."
        )
    figs = "".join(
        f'<figure class="{"wide" if p.wide else ""}"><img alt="{esc(p.title)}" '
        f'src="{p.uri}"><figcaption><b>{esc(p.title)}</b> — {esc(p.caption)}</figcaption></figure>'
        for p in plots
    )
    return f'<div class="plots">{figs}</div>'


def metrics_section(run: RunData) -> str:
    if not run.metrics:
        if run.mode == "evaluate":
            return missing("Evaluate runs log no per-step metrics; see Evaluation.")
        return missing("No metrics.jsonl in this run directory.")
    stats: dict[str, list[float]] = {}
    last_step: dict[str, float] = {}
    for row in run.metrics:
        for k, v in row.items():
            if k != "step":
                stats.setdefault(k, []).append(v)
                last_step[k] = row["step"]
    rows = "".join(
        f'<tr><td>{esc(k)}</td><td class="num">{fmt(v[-1], 4)}</td><td class="num">{fmt(last_step[k])}</td>'
        f'<td class="num">{fmt(min(v), 4)}</td><td class="num">{fmt(max(v), 4)}</td></tr>'
        for k, v in sorted(stats.items())
    )
    return (
        f'<p class="muted">{len(run.metrics)} logged steps; last value of every metric.</p>'
        '<div class="scroll"><table><thead><tr><th>metric</th><th class="num">last</th>'
        '<th class="num">at step</th><th class="num">min</th><th class="num">max</th></tr></thead>'
        f"<tbody>{rows}</tbody></table></div>"
    )


def log_section(run: RunData) -> str:
    if run.log is None:
        return missing("No log.jsonl in this run directory.")
    lg = run.log
    out = [
        kv_table(
            {
                "status": lg.status or "unknown (no 'run end' event)",
                "started": lg.started or "—",
                "last event": lg.ended or "—",
                **{f"{k} events": v for k, v in sorted(lg.levels.items())},
            }
        )
    ]
    if lg.notable:
        items = "".join(
            f"<tr><td>{esc(e.get('timestamp', ''))}</td><td>{tag(str(e.get('level', '')), 'warn')}</td>"
            f"<td>{esc(e.get('event', ''))}</td><td><code>"
            f"{esc(', '.join(f'{k}={v}' for k, v in e.items() if k not in ('timestamp', 'level', 'event')))}"
            "</code></td></tr>"
            for e in lg.notable
        )
        out.append(f'<h3>Warnings and errors</h3><div class="scroll"><table>{items}</table></div>')
    return "".join(out)


def config_section(run: RunData) -> str:
    if run.config_text is None:
        return missing("No config.yaml in this run directory.")
    return f'<pre class="config">{esc(run.config_text)}</pre>'


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def files_section(run: RunData) -> str:
    if not run.files:
        return missing("The run directory is empty.")
    rows = "".join(
        f'<tr><td><code>{esc(p)}</code></td><td class="num">{_size(n)}</td></tr>'
        for p, n in run.files
    )
    folders = {
        p.split("/")[1] for p, _ in run.files if p.startswith("checkpoints/") and p.count("/") >= 2
    }
    ckpts = sorted(f for f in folders if f.startswith("step-"))
    best = sorted(f for f in folders if f.startswith("best-"))  # CaT-SFT's lowest validation loss
    note = f"<p>{len(ckpts)} checkpoint(s): {esc(', '.join(ckpts))}</p>" if ckpts else ""
    if best:
        note += f"<p>best weights (lowest validation loss): {esc(', '.join(best))}</p>"
    return f'{note}<div class="scroll"><table>{rows}</table></div>'


def _guard(build: Callable[[], str]) -> str:
    try:
        return build()
    except Exception as exc:  # a bug in one section must not cost the whole report
        return missing(f"This section could not be rendered: {exc.__class__.__name__}: {exc}")


def _headline(run: RunData) -> str:
    policy = ((run.config or {}).get("models") or {}).get("policy")
    model = policy.get("model") or policy.get("backend") if isinstance(policy, Mapping) else None
    bits = [tag(f"mode {run.mode}", "info")]
    status = run.log.status if run.log else None
    if status:
        bits.append(tag(status, "good" if status == "completed" else "bad"))
    if model:
        bits.append(f"policy <code>{esc(model)}</code>")
    bits.append(f"<code>{esc(run.run_dir)}</code>")
    stamp = _dt.datetime.now().isoformat(timespec="seconds")
    return f'<div class="meta">{" ".join(bits)} · report generated {esc(stamp)}</div>'


def failure_banner(run: RunData) -> str:
    """Why a failed run failed, at the top of the page: the first thing its reader needs."""
    status = run.log.status if run.log else None
    if not run.error and status != "failed":
        return ""
    why = (
        f'<pre class="text">{esc(run.error)}</pre>'
        if run.error
        else '<p class="missing">No error message was recorded; see the Log section.</p>'
    )
    return f'<div class="failure" id="failure"><b>This run failed</b>{why}</div>'


def render_page(run: RunData, plots: Sequence[Plot], views: Sequence[PromptView]) -> str:
    """The whole page as one string."""
    problems = (
        '<div class="problems"><b>Problems reading this run</b><ul>'
        + "".join(f"<li>{esc(p)}</li>" for p in run.problems)
        + "</ul></div>"
        if run.problems
        else ""
    )
    builders: dict[str, Callable[[], str]] = {
        "evaluation": lambda: evaluation_section(run),
        "plots": lambda: plots_section(plots),
        "metrics": lambda: metrics_section(run),
        "samples": lambda: samples_section(views, run.n_records, run.record_steps),
        "log": lambda: log_section(run),
        "config": lambda: config_section(run),
        "files": lambda: files_section(run),
    }
    nav = "".join(f'<a href="#{sid}">{title}</a>' for sid, title in SECTIONS)
    body = "".join(
        f'<section id="{sid}"><h2>{title}</h2>{_guard(builders[sid])}</section>'
        for sid, title in SECTIONS
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(run.name)} · cat-framework report</title><style>{CSS}</style></head>"
        f"<body><main><header><h1>{esc(run.name)}</h1>{_headline(run)}</header><nav>{nav}</nav>"
        f"{failure_banner(run)}{problems}{body}</main></body></html>\n"
    )
