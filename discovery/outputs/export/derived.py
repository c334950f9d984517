"""Derived quantities (compute-optimal allocation, predictions beyond the largest run) as Markdown and
LaTeX tables, for `kepler derive`, the exports and the report. Input: `derive.derive(...)` dicts."""
from __future__ import annotations

import math

from discovery.outputs.export.tables import fmt, md_table
from discovery.outputs.export.texutil import escape, table_float, tex_number
from discovery.outputs.labels import group_label

KEY_BUDGETS = 3  # the largest train compute, 10x and 100x it


def _ok(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def _v(x, digits: int = 3) -> str:
    return fmt(x, digits) if _ok(x) else "–"


def interval(pair, digits: int = 3) -> str:
    return f"[{fmt(pair[0], digits)}, {fmt(pair[1], digits)}]" if pair and _ok(pair[0]) and _ok(pair[1]) else "–"


def _tv(x, digits: int = 3) -> str:
    return f"${tex_number(fmt(x, digits))}$" if _ok(x) else "--"


def _tiv(pair, digits: int = 3) -> str:
    if not (pair and _ok(pair[0]) and _ok(pair[1])):
        return ""
    return rf"{{\scriptsize $[{tex_number(fmt(pair[0], digits))}, {tex_number(fmt(pair[1], digits))}]$}}"


def allocations(derived: list[dict]) -> list[tuple[str, dict]]:
    return [(d["law"], a) for d in derived for a in (d.get("allocation") or [])]


def note(derived: list[dict]) -> str:
    """One paragraph: the bootstrap, the cost, the budgets and what was held fixed (or why no allocation)."""
    d = derived[0]
    parts = [f"Intervals: {int(round(100 * d['level']))}% percentile bootstrap ({d['bootstrap_resamples']} "
             "resamples)."]
    found = allocations(derived)
    if found:
        a = found[0][1]
        held = ", ".join(f"{k} = {fmt(v, 3)}" for k, v in a["held"].items())
        parts.append(f"Allocation under C = {d['cost'].replace('*', '')} (in the task's units): N_opt ∝ C^a and "
                     f"D_opt ∝ C^b, least-squares slopes over budgets from {fmt(a['compute_range'][0], 3)} to "
                     f"{fmt(a['compute_range'][1], 3)} (the train range, then 10x and 100x the largest)"
                     + (f"; held at train medians: {held}" if held else "") + ".")
    else:
        parts.append(f"No allocation: {d.get('allocation_note', 'the law is not in model size and data')}.")
    return " ".join(parts)


def markdown(derived: list[dict], max_groups: int = 12) -> str:
    table = md_table
    out = [note(derived), ""]
    found = allocations(derived)
    if found:
        heads = [f"N_opt / D_opt at C = {fmt(b['compute'], 3)}" for b in found[0][1]["budgets"][-KEY_BUDGETS:]]
        rows = [[law, group_label(a["group"]), f"{_v(a['a'])} {interval(a.get('a_95'))}",
                 f"{_v(a['b'])} {interval(a.get('b_95'))}",
                 *[f"{_v(b['n_opt'])} / {_v(b['d_opt'])}" for b in a["budgets"][-KEY_BUDGETS:]]] for law, a in found]
        out += [table(["law", "group", "a [95%]", "b [95%]", *heads], rows), ""]
    rows = []
    for d in derived:
        groups = list(dict.fromkeys(p["group"] for p in d["predictions"]))[:max_groups]
        for p in d["predictions"]:
            if p["group"] in groups:
                point = ", ".join(f"{k}={fmt(v, 3)}" for k, v in p["point"].items())
                rows.append([d["law"], group_label(p["group"]), p["at"], point, _v(p["value"], 4),
                             interval(p["law_band_95"], 4),
                             interval(p["prediction_band_95"], 4)])
    out += [table(["law", "group", "at", "point", "prediction", "law band", "prediction band"], rows), ""]
    return "\n".join(out)


def latex(derived: list[dict], label: str, max_groups: int = 4) -> str:
    """Booktabs tables for the allocation and the predictions, labelled `<label>-allocation` and
    `<label>-predictions`."""
    level = int(round(100 * derived[0]["level"]))
    parts = [f"% {escape(note(derived))}"]
    found = allocations(derived)
    if found:
        body = [[escape(law), escape(group_label(a["group"])), f"{_tv(a['a'])} {_tiv(a.get('a_95'))}",
                 f"{_tv(a['b'])} {_tiv(a.get('b_95'))}"] for law, a in found]
        parts.append(table_float(
            rf"Compute-optimal allocation $N_\mathrm{{opt}} \propto C^a$, $D_\mathrm{{opt}} \propto C^b$ "
            rf"({level}\% bootstrap intervals).", f"{label}-allocation", ["Law", "Group", "$a$", "$b$"], "llll", body))
    rows = []
    for d in derived:
        groups = list(dict.fromkeys(p["group"] for p in d["predictions"]))[:max_groups]
        for p in d["predictions"]:
            if p["group"] in groups:
                rows.append([escape(d["law"]), escape(group_label(p["group"])), escape(p["at"]), _tv(p["value"], 4),
                             _tiv(p["prediction_band_95"], 4) or "--"])
    if rows:
        parts.append(table_float(rf"Predictions beyond the largest training run, with {level}\% prediction bands.",
                                 f"{label}-predictions", ["Law", "Group", "At", "Prediction", "Band"], "lllrl", rows))
    return "\n".join(parts) + "\n"
