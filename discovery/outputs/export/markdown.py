"""Markdown: the law, its constants per group with intervals, and its scores, for READMEs and issues.

The equation is SymPy's LaTeX inside `$$ ... $$` (GitHub renders it); tables are plain pipe tables.
"""
from __future__ import annotations

from discovery.laws.constant_roles import display_order
from discovery.outputs.export import derived as derived_tables
from discovery.outputs.export.latex import equation, numeric_equation, to_latex
from discovery.outputs.export.tables import Cell, cell_text, constant_rows, coverage_line, fmt, md_table, metric_rows
from discovery.outputs.labels import group_label
from discovery.outputs.record import LawRecord, kepler_version


def cell(c: Cell, digits: int = 4) -> str:
    value, low, high = cell_text(c, digits)
    return value if low is None else f"{value} [{low}, {high}]"


table = md_table


def constants_table(record: LawRecord, digits: int = 4) -> str:
    """Constants in display order (amplitudes, exponents, offsets, others); a row per constant when there are
    more constants than groups, else a row per group."""
    rows = constant_rows(record)
    order = display_order(record.law)
    names = [f"${to_latex(record.law.constants[i])}$" for i in order]
    if len(names) > len(rows):
        return table(["constant", *[group_label(lbl) for lbl, _ in rows]],
                     [[names[k], *[cell(cells[i], digits) for _, cells in rows]] for k, i in enumerate(order)])
    first = "group" if len(record.targets) == 1 else "group/target"
    return table([first, *names], [[group_label(lbl), *[cell(cells[i], digits) for i in order]] for lbl, cells in rows])


def metrics_table(record: LawRecord) -> str:
    return table(["split", "rows", "constants fitted on", "R²", "NMSE", "NMAE"],
                 [[s, str(n if n is not None else "–"), f, fmt(r2), fmt(nmse, 3), fmt(nmae, 3)]
                  for s, n, f, r2, nmse, nmae in metric_rows(record)])


def variables_list(record: LawRecord) -> str:
    used = record.law.expr.free_symbols
    return "\n".join(f"- ${to_latex(s)}$ = `{v.column}`: {v.meaning or v.column}" + (f" ({v.unit})" if v.unit else "")
                     for s, v in zip(record.law.variables, record.task.variables, strict=True) if s in used)


def render(record: LawRecord, digits: int = 4) -> str:
    task = record.task
    parts = [
        f"## {task.title}: law {record.label} ({record.role})", "",
        f"$$\n{equation(record, digits)}\n$$", "",
        f"Formula: `{record.law.text}` (canonical `{record.law.canonical}`, {len(record.law.constants)} constants, "
        f"complexity {record.law.complexity}).", "",
        variables_list(record), "",
    ]
    if len(record.targets) > 1:
        parts += [f"Each target ({', '.join(record.targets)}) has its own constants.", ""]
    numeric = numeric_equation(record, digits)
    if numeric:
        parts += ["With the fitted constants:", "", f"$$\n{numeric}\n$$", ""]
    parts += ["### Constants (fitted on all of train, per group)", "", constants_table(record, digits), ""]
    note = coverage_line(record)
    if note:
        parts += [note, ""]
    parts += ["### Scores (SLDBench definitions)", "", metrics_table(record), ""]
    if record.extra.get("derived"):
        parts += ["### Derived quantities", "", derived_tables.markdown([record.extra["derived"]]), ""]
    parts += [f"Data: {task.paper}. Exported by Kepler {kepler_version()}, seed {record.seed}.", ""]
    return "\n".join(parts)
