"""LaTeX: the law as an equation, a constants table per group and a metrics table per split.

The equation comes from SymPy's LaTeX printer, subclassed (as PySR does) to control float precision,
and to print products with `\\cdot`, `exp` as `\\exp(...)` and `|x|` plainly, so the equation is
unambiguous and parses back (SymPy's own LaTeX parser reads it). The snippet needs `\\usepackage{booktabs,amsmath}`.
"""
from __future__ import annotations

import re

import sympy as sp
from sympy.printing.conventions import split_super_sub
from sympy.printing.latex import LatexPrinter, translate

from discovery.outputs.export.tables import Cell, cell_text, constant_rows, coverage_line, fmt, metric_rows
from discovery.outputs.record import LawRecord, kepler_version

_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
            "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
            "–": "--", "—": "---", "≤": r"$\le$", "≥": r"$\ge$", "×": r"$\times$", "·": r"$\cdot$",
            "²": r"$^2$", "→": r"$\to$", "∞": r"$\infty$", "≈": r"$\approx$", "±": r"$\pm$"}


class PreciseLatexPrinter(LatexPrinter):
    """SymPy's LaTeX printer with `digits` significant digits for floats, and nothing left ambiguous.

    Products get `\\cdot`; functions print as `\\exp\\left(x\\right)` (braces after a function name make
    its argument greedy for parsers), powers of functions are bracketed, and names of several letters are
    set in `\\mathit{}` so `RN` is one symbol, not R times N; `d` is braced so it is not a differential.
    """

    def __init__(self, digits: int = 4, settings: dict | None = None):
        super().__init__({"mul_symbol": "dot", **(settings or {})})
        self.digits = digits

    def _print_Float(self, expr: sp.Float) -> str:
        mant, _, exp = f"{float(expr):.{self.digits - 1}e}".partition("e")
        e = int(exp)
        if -3 <= e < 5:
            return f"{float(expr):.{self.digits}g}"
        return rf"{mant} \cdot 10^{{{e}}}"

    def _name(self, text: str) -> str:
        tex = translate(text)
        return rf"\mathit{{{text}}}" if tex == text and len(text) > 1 else tex

    def _print_Symbol(self, expr: sp.Symbol, style: str = "plain") -> str:
        if expr.name == "d":  # a bare `d` before `\\cdot` or `\\right` reads as a differential to parsers
            return "{d}"
        base, sups, subs = split_super_sub(expr.name)
        if sups or (translate(base) != base or len(base) == 1) and all(translate(x) != x or len(x) == 1 or x.isdigit()
                                                                      for x in subs):
            return super()._print_Symbol(expr, style)
        tex = self._name(base)
        if subs:
            tex += "_{" + " ".join(x if x.isdigit() else self._name(x) for x in subs) + "}"
        return tex

    def _call(self, name: str, arg: sp.Expr, exp: str | None) -> str:
        tex = rf"\{name}\left({self._print(arg)} \right)"
        return rf"\left({tex}\right)^{{{exp}}}" if exp is not None else tex

    def _print_ExpBase(self, expr, exp=None) -> str:
        return self._call("exp", expr.args[0], exp)

    def _print_log(self, expr, exp=None) -> str:
        return self._call("log", expr.args[0], exp)

    def _print_tanh(self, expr, exp=None) -> str:
        return self._call("tanh", expr.args[0], exp)

    def _print_Abs(self, expr, exp=None) -> str:
        tex = r"|%s|" % self._print(expr.args[0])
        return rf"\left({tex}\right)^{{{exp}}}" if exp is not None else tex


def escape(text: str) -> str:
    """Text-mode escaping of LaTeX's special characters."""
    return "".join(_SPECIAL.get(ch, ch) for ch in str(text))


def to_latex(expr: sp.Expr, digits: int = 4) -> str:
    return PreciseLatexPrinter(digits).doprint(expr)


def target_tex(record: LawRecord) -> str:
    return r"\mathrm{%s}" % escape(record.targets[0]) if len(record.targets) == 1 else "y"


def equation(record: LawRecord, digits: int = 4) -> str:
    """`lhs = rhs` in LaTeX math, with the constants as symbols."""
    return f"{target_tex(record)} = {to_latex(record.law.expr, digits)}"


def numeric_equation(record: LawRecord, digits: int = 4) -> str | None:
    """The law with its constants substituted, when there is a single group and target."""
    if len(record.constants) != 1:
        return None
    theta = next(iter(record.constants.values()))
    expr = record.law.expr.xreplace({c: sp.Float(float(v)) for c, v in zip(record.law.constants, theta, strict=True)})
    return f"{target_tex(record)} = {to_latex(expr, digits)}"


def _tex_number(text: str) -> str:
    m = re.fullmatch(r"(-?[\d.]+)e([+-]\d+)", text)
    if m:
        return rf"{m.group(1)} \cdot 10^{{{int(m.group(2))}}}"
    return text.replace("–", "--").replace("∞", r"\infty")


def _num(x: float, digits: int) -> str:
    return _tex_number(fmt(x, digits))


def _cell(c: Cell, digits: int) -> str:
    value, low, high = (None if t is None else _tex_number(t) for t in cell_text(c, digits))
    if low is None:
        return f"${value}$"
    return rf"${value}$ {{\footnotesize $[{low}, {high}]$}}"


def constants_table(record: LawRecord, label: str, digits: int = 4) -> str:
    rows = constant_rows(record)
    names = [f"${to_latex(c)}$" for c in record.law.constants]
    header_first = "Group" if len(record.targets) == 1 else "Group / target"
    if len(names) > len(rows):  # transpose: one row per constant
        head = ["Constant", *[escape(lbl) for lbl, _ in rows]]
        body = [[names[i], *[_cell(cells[i], digits) for _, cells in rows]] for i in range(len(names))]
    else:
        head = [header_first, *names]
        body = [[escape(lbl), *[_cell(c, digits) for c in cells]] for lbl, cells in rows]
    u = record.uncertainty
    what = (f" with {int(u['level'] * 100)}\\% bootstrap intervals ({u['resamples']} resamples)" if u else "")
    return "\n".join([
        r"\begin{table}[ht]", r"\centering", r"\small",
        rf"\caption{{Constants of Eq.~\eqref{{{label}}}, fitted on all of the train split per group{what}.}}",
        r"\begin{tabular}{l" + "r" * (len(head) - 1) + "}", r"\toprule",
        " & ".join(head) + r" \\", r"\midrule",
        *[" & ".join(r) + r" \\" for r in body],
        r"\bottomrule", r"\end{tabular}", r"\end{table}",
    ])


def metrics_table(record: LawRecord) -> str:
    body = [f"{escape(s)} & {n if n is not None else '--'} & {escape(f)} & ${_num(r2, 4)}$ & ${_num(nmse, 3)}$ & "
            f"${_num(nmae, 3)}$ \\\\" for s, n, f, r2, nmse, nmae in metric_rows(record)]
    return "\n".join([
        r"\begin{table}[ht]", r"\centering", r"\small",
        r"\caption{Scores by split (SLDBench definitions: $R^2 = 1 - \mathrm{NMSE}$).}",
        r"\begin{tabular}{lrlrrr}", r"\toprule",
        r"Split & Rows & Constants fitted on & $R^2$ & NMSE & NMAE \\", r"\midrule",
        *body, r"\bottomrule", r"\end{tabular}", r"\end{table}",
    ])


def render(record: LawRecord, digits: int = 4) -> str:
    task = record.task
    label = f"eq:kepler-{task.name.replace('_', '-')}"
    symbols = ", ".join(
        f"${to_latex(s)}$ is {escape(v.meaning or v.column)}" + (f" ({escape(v.unit)})" if v.unit else "")
        for s, v in zip(record.law.variables, task.variables, strict=True) if s in record.law.expr.free_symbols)
    parts = [
        f"% Kepler {kepler_version()}: task {task.name}, law {record.label} ({record.role}).",
        r"% Needs \usepackage{booktabs,amsmath} in the preamble.",
        r"\begin{equation}", f"  {equation(record, digits)}", rf"  \label{{{label}}}", r"\end{equation}",
        f"where {symbols}.",
    ]
    if len(record.targets) > 1:
        parts.append("Each target (" + ", ".join(escape(t) for t in record.targets) +
                     ") has its own constants.")
    numeric = numeric_equation(record, digits)
    if numeric:
        parts += ["With the fitted constants:", r"\begin{equation*}", f"  {numeric}", r"\end{equation*}"]
    note = coverage_line(record)
    if note:
        parts.append(escape(note))
    parts += [constants_table(record, label, digits), metrics_table(record)]
    return "\n".join(parts) + "\n"
