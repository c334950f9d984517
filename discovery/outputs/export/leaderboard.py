"""The human-vs-discovered leaderboard as a booktabs table for a paper (`kepler bench --runs DIR --format latex`).

Per task: the human law with its published constants (or published R²), the human law fitted by Kepler,
and per proposer the discovered laws over seeds (mean ± sd of the test scores, with min and max) and the
run that is best on validation; test R², NMSE, number of constants and complexity. Runs are listed one
by one in leaderboard.md / .csv / .json, not here.
"""
from __future__ import annotations

from discovery.outputs.export.tables import fmt
from discovery.outputs.export.texutil import LONG_ROWS, escape, tex_number
from evaluators.benchmark import LeaderRow

ENTRIES = ("human (published)", "human (Kepler fit)", "discovered (over seeds)", "discovered (best)")
LABEL = "tab:kepler-leaderboard"


def _num(x: float | None, digits: int = 4) -> str:
    return "--" if x is None else f"${tex_number(fmt(x, digits))}$"


def _spread(mean, sd, lo, hi, digits: int = 4) -> str:
    if mean is None:
        return "--"
    top = f"${tex_number(fmt(mean, digits))}" + (rf" \pm {tex_number(fmt(sd, 2))}$" if sd is not None else "$")
    if lo is None or hi is None or lo == hi:
        return top
    return (rf"\begin{{tabular}}[t]{{@{{}}r@{{}}}}{top}\\ {{\scriptsize $[{tex_number(fmt(lo, digits))}, "
            rf"{tex_number(fmt(hi, digits))}]$}}\end{{tabular}}")


def _count(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"


def _name(r: LeaderRow) -> str:
    if r.entry == "human (published)":
        return f"{escape(r.law)}, published" + (" (R\\textsuperscript{2} only)" if r.nmse is None else "")
    if r.entry == "human (Kepler fit)":
        return f"{escape(r.law)}, fitted by Kepler"
    if r.entry == "discovered (over seeds)":
        if r.runs == 1:
            return f"Kepler, {escape(r.law)} (1 run, seed {escape(r.seeds)})"
        return f"Kepler, {escape(r.law)}: mean $\\pm$ sd over {r.runs} seeds"
    return f"Kepler, {escape(r.proposer or '?')}: best of {r.runs} on validation (seed {r.seed})"


def _title(task: str, titles: dict[str, str] | None, most: int = 64) -> str:
    """The task's title on one line of the table: cut at a colon or bracket, then at `most` characters."""
    title = (titles or {}).get(task, task)
    for mark in (":", " ("):
        if len(title) > most and mark in title:
            title = title.split(mark)[0]
    return title if len(title) <= most else title[: most - 1] + "…"


def render(board: list[LeaderRow], titles: dict[str, str] | None = None) -> str:
    """The leaderboard table; `titles` maps task names to readable titles."""
    rows = [r for r in board if r.entry in ENTRIES and not (r.entry == "discovered (best)" and r.runs == 1)]
    body = []
    for task in dict.fromkeys(r.task for r in rows):
        body.append(rf"\multicolumn{{5}}{{@{{}}l}}{{\textit{{{escape(_title(task, titles))}}}}} \\")
        for r in sorted((r for r in rows if r.task == task), key=lambda r: ENTRIES.index(r.entry)):
            if r.entry == "discovered (over seeds)":
                r2 = _spread(r.r2, r.r2_sd, r.r2_min, r.r2_max)
                nmse = _spread(r.nmse, r.nmse_sd, r.nmse_min, r.nmse_max, 3)
            else:
                r2, nmse = _num(r.r2), _num(r.nmse, 3)
            body.append(f"{_name(r)} & {r2} & {nmse} & {_count(r.n_constants)} & {_count(r.complexity)} \\\\")
        body.append(r"\addlinespace")
    if body:
        body.pop()
    head = r"Law & Test $R^2$ & Test NMSE & Constants & Complexity \\"
    caption = (r"Human and discovered laws on each task's held-out test split (SLDBench metrics; $R^2 = 1 - "
               r"\mathrm{NMSE}$). Discovered laws were selected on validation only, refit on all of train and scored "
               r"once on test; over seeds: mean $\pm$ sd, [min, max].")
    spec = r"@{}p{0.34\linewidth}rrrr@{}"
    if len(body) > LONG_ROWS:
        return "\n".join([r"% Needs \usepackage{booktabs,longtable}.", r"{\footnotesize\setlength{\tabcolsep}{4pt}",
                          rf"\begin{{longtable}}{{{spec}}}", rf"\caption{{{caption}}}\label{{{LABEL}}} \\",
                          r"\toprule", head, r"\midrule", r"\endfirsthead", r"\toprule", head, r"\midrule", r"\endhead",
                          r"\bottomrule", r"\endlastfoot", *body, r"\end{longtable}", "}"]) + "\n"
    return "\n".join([r"% Needs \usepackage{booktabs}.", r"\begin{table}[ht]", r"\centering", r"\footnotesize",
                      r"\setlength{\tabcolsep}{4pt}",
                      rf"\caption{{{caption}}}", rf"\label{{{LABEL}}}", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
                      head, r"\midrule", *body, r"\bottomrule", r"\end{tabular}", r"\end{table}"]) + "\n"
