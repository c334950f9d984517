"""One self-contained report of a run: report.md, and report.html with every image embedded (base64).

Both are printed from the same list of blocks (heading, paragraph, table, equation, image), so they
say the same thing. Sections: task, data provenance, settings, leaderboard, the best law (equation,
constants with bootstrap intervals, scores, coverage), figures, LLM usage and cost.
"""
from __future__ import annotations

import base64
import html
import io
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import sympy as sp

from discovery.laws.constant_roles import display_order
from discovery.outputs.export import derived as derived_tables
from discovery.outputs.export.latex import equation, numeric_equation, to_latex
from discovery.outputs.export.markdown import cell
from discovery.outputs.export.tables import constant_rows, coverage_line, fmt, metric_rows
from discovery.outputs.labels import group_label
from discovery.outputs.record import LawRecord, kepler_version, load_best, open_store, run_meta


@dataclass(frozen=True)
class Block:
    kind: str  # h1 h2 p table math img list
    text: str = ""
    head: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    path: Path | None = None


def _table(head: list[str], rows: list[list]) -> Block:
    return Block("table", head=tuple(head), rows=tuple(tuple(str(c) for c in r) for r in rows))


def _llm_by_model(run_dir: Path) -> list[list]:
    db = open_store(run_dir)
    try:
        rows = db.execute("SELECT model, COUNT(*) AS calls, SUM(cached) AS cached, SUM(prompt_tokens) AS p, "
                          "SUM(completion_tokens) AS c, SUM(cost_usd) AS cost, AVG(latency_s) AS lat, "
                          "SUM(status != 'ok') AS errors FROM llm_calls GROUP BY model ORDER BY model").fetchall()
    finally:
        db.close()
    return [[r["model"] or "–", r["calls"], r["cached"] or 0, r["p"] or 0, r["c"] or 0, f"${(r['cost'] or 0):.4f}",
             f"{(r['lat'] or 0):.2f}", r["errors"] or 0] for r in rows]


def blocks(record: LawRecord, run_dir: Path, figures: dict[str, Path], protocol) -> list[Block]:
    """The report's content."""
    task = record.task
    best = load_best(run_dir)
    db = open_store(run_dir)
    try:
        meta = run_meta(db)
    finally:
        db.close()
    settings = meta.get("settings", {})
    out = [Block("h1", f"Kepler report: {task.title}"),
           Block("p", f"Run `{run_dir}` ({meta.get('status', '?')}; stopped by {best.get('stop_reason', '?')}). "
                      f"{best.get('candidates_evaluated', '?')} candidates evaluated over "
                      f"{best.get('generations_completed', '?')} generations in {best.get('wall_seconds', '?')} s. "
                      f"Report by Kepler {kepler_version()} on {time.strftime('%Y-%m-%d %H:%M')}."
                      + (f" **{best['clock']}.**" if best.get("clock") else "")),
           Block("h2", "Task"),
           Block("p", f"`{task.name}`: {task.description.strip()} Source: {task.paper}."),
           _table(["symbol", "column", "unit", "meaning"],
                  [[f"${to_latex(sp.Symbol(v.symbol))}$", f"`{v.column}`", v.unit or "–", v.meaning or "–"]
                   for v in task.variables]),
           Block("p", f"Targets: {', '.join(f'`{t}`' for t in task.targets)}. Groups: "
                      f"{len(protocol.train.group_names)}"
                      + (f" (column `{task.group_column}`)" if task.group_column else "")
                      + f". Constant limit: {task.constant_limit or 'none'}."),
           Block("h2", "Data provenance"),
           _table(["file", "pinned URL", "sha256"], [[s.file, s.url, f"`{s.sha256}`"] for s in task.sources]),
           Block("p", f"Split: {task.split.rule} Validation: {task.split.describe_validation()}."),
           _table(["split", "rows"], [["train (all)", len(protocol.train)],
                                      ["fit part of train", len(protocol.fit_part)],
                                      ["validation", len(protocol.validation)], ["test", protocol.n_test]]),
           Block("h2", "Settings"),
           _table(["setting", "value"], [[k, f"`{json.dumps(v)}`"] for k, v in settings.items() if v is not None]),
           Block("h2", "Leaderboard"),
           Block("p", "Validation: constants fitted on the fit part of train, scored on the validation slice (what "
                      "selection saw). Test: constants refit on all of train, scored once on the test split."),
           _leaderboard(best)]
    out += _close_call(best)
    out += _best_law(record)
    out += _derived(record)
    if figures:
        out.append(Block("h2", "Figures"))
        for name, path in figures.items():
            out += [Block("img", caption(record, name), path=path)]
    llm = best.get("llm", {})
    out += [Block("h2", "LLM usage and cost"),
            Block("p", f"{llm.get('calls', 0)} calls ({llm.get('cached', 0)} from the cache), "
                       f"{llm.get('prompt_tokens', 0)} prompt + {llm.get('completion_tokens', 0)} completion tokens, "
                       f"${llm.get('cost_usd', 0.0):.4f}. Proposer: {best.get('proposer', '?')}.")]
    by_model = _llm_by_model(run_dir)
    if by_model:
        out.append(_table(["model", "calls", "cached", "prompt tokens", "completion tokens", "cost", "mean latency s",
                           "errors"], by_model))
    out += [Block("h2", "Reproduce"),
            Block("p", f"`kepler discover --resume {run_dir}` replays a finished run; `kepler export {run_dir}` "
                       f"writes the best law as LaTeX, Markdown, JSON, Python, SLDBench and BibTeX.")]
    return out


def _close_call(best: dict) -> list[Block]:
    """The laws as good as the best on selection that part from it beyond train, when the data did not decide."""
    call = best.get("close_call")
    if not call or call.get("decided", True):
        return []
    spread = call["spread_sd"]
    spread = "without bound" if spread == "inf" else f"by {spread:.2g} standard deviations of the target"
    return [Block("h2", "Close call"),
            Block("p", f"The laws below score within {call['margin']:.0%} of the best on selection, but part from it "
                       f"{spread} at {call['where']}: the data did not decide between them, and another seed may "
                       f"report one of them. Run more seeds (`kepler sweep`) or add larger-scale runs."),
            _table(["id", "law", "selection NMSE", "validation R²", "complexity"],
                   [[c["id"], f"`{c['formula']}`", f"{c['selection_nmse']:.4g}",
                     "–" if c["validation_r2"] is None else f"{c['validation_r2']:.4f}", c["complexity"]]
                    for c in call["contenders"]])]


CAPTIONS = {
    "observed_vs_predicted": "Observed against predicted, by split (train fit part, validation, test).",
    "isoflop": ("isoFLOP curves: the law's target against model size at fixed compute, at levels over the train "
                "compute range (its isoFLOP groups when it has them) and 10x and 100x the largest; stars mark "
                "each curve's minimum (bar: its 95% bootstrap interval), the dotted line the compute-optimal "
                "frontier, dashed curves the human law."),
    "residuals": "Residuals (predicted − observed) along each variable, by split.",
    "pareto": "Complexity against validation error: every candidate, the Pareto front, the human law.",
    "history": "Best validation score per generation.",
}


def caption(record: LawRecord, name: str) -> str:
    if name.startswith("curves_"):
        symbol = name.removeprefix("curves_")
        v = next((v for v in record.task.variables if v.symbol == symbol), None)
        what = f"{v.column} (${symbol}$)" if v is not None else symbol
        return (f"The law along {what}, the other variables held at observed settings (colour: the held "
                "variable), with its bootstrap band; dashed: the human law; shaded: beyond the train range.")
    return CAPTIONS.get(name, name)


def _derived(record: LawRecord) -> list[Block]:
    derived = record.extra.get("derived")
    if not derived:
        return []
    out = [Block("h2", "Derived quantities"), Block("p", derived_tables.note([derived]))]
    found = derived_tables.allocations([derived])
    if found:
        heads = [f"N_opt / D_opt at C = {fmt(b['compute'], 3)}" for b in found[0][1]["budgets"][-3:]]
        out.append(_table(["group", "a [95%]", "b [95%]", *heads],
                          [[group_label(a["group"]), f"{fmt(a['a'], 3)} {derived_tables.interval(a.get('a_95'))}",
                            f"{fmt(a['b'], 3)} {derived_tables.interval(a.get('b_95'))}",
                            *[f"{fmt(b['n_opt'], 3)} / {fmt(b['d_opt'], 3)}" for b in a["budgets"][-3:]]]
                           for _, a in found]))
    rows = [[group_label(p["group"]), p["at"], ", ".join(f"{k}={fmt(v, 3)}" for k, v in p["point"].items()),
             fmt(p["value"], 4), derived_tables.interval(p["law_band_95"], 4),
             derived_tables.interval(p["prediction_band_95"], 4)]
            for p in derived["predictions"][:48]]
    out.append(_table(["group", "at", "point", "prediction", "law band", "prediction band"], rows))
    return out


def _leaderboard(best: dict) -> Block:
    rows = []
    for r in best["pareto_front"]:
        tag = "**best** (discovered)" if r["id"] == best["best"]["id"] else "Pareto front"
        rows.append([f"#{r['id']}", tag, f"`{r['formula']}`", r["n_constants"], r["complexity"],
                     fmt(r["validation"]["r2"]), fmt(r["test"]["r2"]), fmt(r["test"]["nmse"], 3),
                     fmt(r["test"]["nmae"], 3)])
    for h in best.get("human", []):
        rows.append(["human", f"{h['law']} ({h['constants_from']})", f"`{h['formula']}`", h["n_constants"],
                     h["complexity"], fmt(h["validation"]["r2"]), fmt(h["test"]["r2"]), fmt(h["test"]["nmse"], 3),
                     fmt(h["test"]["nmae"], 3)])
    return _table(["law", "kind", "formula", "constants", "complexity", "R² validation", "R² test", "NMSE test",
                   "NMAE test"], rows)


def _best_law(record: LawRecord) -> list[Block]:
    order = display_order(record.law)
    names = [f"${to_latex(record.law.constants[i])}$" for i in order]
    const_rows = [[group_label(label), *[cell(cells[i]) for i in order]] for label, cells in constant_rows(record)]
    out = [Block("h2", f"Best law: {record.label}"), Block("math", equation(record)),
           Block("p", f"Formula `{record.law.text}`; canonical `{record.law.canonical}`; "
                      f"{len(record.law.constants)} constants; complexity {record.law.complexity}.")]
    numeric = numeric_equation(record)
    if numeric:
        out += [Block("p", "With the fitted constants:"), Block("math", numeric)]
    out.append(_table(["group" if len(record.targets) == 1 else "group/target", *names], const_rows))
    note = coverage_line(record)
    if note:
        out.append(Block("p", note))
    out.append(_table(["split", "rows", "constants fitted on", "R²", "NMSE", "NMAE"],
                      [[s, n if n is not None else "–", f, fmt(r2), fmt(nmse, 3), fmt(nmae, 3)]
                       for s, n, f, r2, nmse, nmae in metric_rows(record)]))
    return out


# --- printing ---------------------------------------------------------------------------------------
def to_markdown(content: list[Block], base: Path) -> str:
    lines: list[str] = []
    for b in content:
        if b.kind in ("h1", "h2"):
            lines += ["#" * int(b.kind[1]) + " " + b.text, ""]
        elif b.kind == "p":
            lines += [b.text, ""]
        elif b.kind == "math":
            lines += ["$$", b.text, "$$", ""]
        elif b.kind == "table":
            lines += ["| " + " | ".join(b.head) + " |", "|" + "---|" * len(b.head)]
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in b.rows]
            lines.append("")
        elif b.kind == "img":
            rel = b.path.relative_to(base) if b.path.is_relative_to(base) else b.path
            lines += [f"![{b.text}]({rel.as_posix()})", "", f"*{b.text}*", ""]
    return "\n".join(lines)


def _math_png(tex: str, fontsize: int = 14) -> str | None:
    """A LaTeX snippet rendered by matplotlib's mathtext as a base64 PNG, or None if mathtext can't."""
    from matplotlib.figure import Figure

    try:
        fig = Figure(figsize=(0.01, 0.01))
        fig.text(0, 0, f"${tex}$", fontsize=fontsize)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", pad_inches=0.04, transparent=True)
    except Exception:  # mathtext does not know every LaTeX command
        return None
    return base64.b64encode(buf.getvalue()).decode()


_INLINE = re.compile(r"\$([^$]+)\$|`([^`]+)`|\*\*([^*]+)\*\*")


def _inline_html(text: str) -> str:
    out, pos = [], 0
    for m in _INLINE.finditer(text):
        out.append(html.escape(text[pos:m.start()]))
        if m.group(1) is not None:
            png = _math_png(m.group(1), 10)
            out.append(f'<img class="m" alt="{html.escape(m.group(1))}" src="data:image/png;base64,{png}">' if png
                       else f"<code>{html.escape(m.group(1))}</code>")
        elif m.group(2) is not None:
            out.append(f"<code>{html.escape(m.group(2))}</code>")
        else:
            out.append(f"<b>{html.escape(m.group(3))}</b>")
        pos = m.end()
    out.append(html.escape(text[pos:]))
    return "".join(out)


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:90%}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}code{background:#f6f6f6;padding:0 3px}img.m{vertical-align:middle}
figure img{max-width:100%}figcaption{font-style:italic;color:#555}.eq{text-align:center;margin:1em}"""


def to_html(content: list[Block]) -> str:
    title = next((b.text for b in content if b.kind == "h1"), "Kepler report")
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body>"]
    for b in content:
        if b.kind in ("h1", "h2"):
            parts.append(f"<{b.kind}>{html.escape(b.text)}</{b.kind}>")
        elif b.kind == "p":
            parts.append(f"<p>{_inline_html(b.text)}</p>")
        elif b.kind == "math":
            png = _math_png(b.text, 16)
            parts.append(f'<div class="eq"><img alt="{html.escape(b.text)}" src="data:image/png;base64,{png}"></div>'
                         if png else f'<div class="eq"><code>{html.escape(b.text)}</code></div>')
        elif b.kind == "table":
            head = "".join(f"<th>{_inline_html(h)}</th>" for h in b.head)
            body = "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in r) + "</tr>" for r in b.rows)
            parts.append(f"<table><tr>{head}</tr>{body}</table>")
        elif b.kind == "img":
            data = base64.b64encode(b.path.read_bytes()).decode()
            parts.append(f'<figure><img alt="{html.escape(b.text)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{html.escape(b.text)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(record: LawRecord, run_dir: Path, out_dir: Path, figures: dict[str, Path], protocol) -> list[Path]:
    """Write report.md and report.html into `out_dir`; `figures` maps names to PNG files."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    content = blocks(record, Path(run_dir), figures, protocol)
    md, page = out_dir / "report.md", out_dir / "report.html"
    md.write_text(to_markdown(content, out_dir), encoding="utf-8")
    page.write_text(to_html(content), encoding="utf-8")
    return [md, page]
