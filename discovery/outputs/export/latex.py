"""LaTeX: the law as a (split when long) equation, its constants and its scores, as booktabs tables.

The equation comes from SymPy's LaTeX printer, subclassed (as PySR does) to control float precision,
to print scale factors as powers of ten (`\\frac{D}{10^{10}}`), products with `\\cdot`, `exp` as
`\\exp(...)` and `|x|` plainly, so the equation is unambiguous and parses back (SymPy's own LaTeX
parser reads it). An equation wider than the text is broken at its top-level sums (amsmath `split`).
Constants are listed by role (amplitudes, exponents, offsets, others; alphabetically within a role),
and every label is unique to the law's task, run and candidate, so several laws can share a paper.
Tables fit the text width (see texutil). The snippet needs `\\usepackage{booktabs,amsmath,longtable}`.
"""
from __future__ import annotations

import sympy as sp
from sympy.printing.conventions import split_super_sub
from sympy.printing.latex import LatexPrinter, translate

from discovery.laws.constant_roles import constant_roles, display_order
from discovery.outputs.export.tables import Cell, cell_text, constant_rows, coverage_line, fmt, metric_rows
from discovery.outputs.export.texutil import SIZES, TEXT_WIDTH, escape, math_width, table_float, tex_number
from discovery.outputs.labels import group_label, label_part
from discovery.outputs.record import LawRecord, kepler_version

PACKAGES = "booktabs,amsmath,longtable"
EQUATION_WIDTH = TEXT_WIDTH - 40  # leave room for the equation number
__all__ = ["PACKAGES", "PreciseLatexPrinter", "constants_table", "equation", "equation_block", "escape",
           "law_label", "metrics_table", "numeric_equation", "render", "tex_number", "to_latex"]


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
        if -3 <= e < min(5, self.digits):
            return f"{float(expr):.{self.digits}g}"
        mant = mant.rstrip("0").rstrip(".")
        return rf"10^{{{e}}}" if mant == "1" else rf"{mant} \cdot 10^{{{e}}}"

    def _print_Integer(self, expr: sp.Integer) -> str:
        """Scale factors as powers of ten: 10000000000 -> 10^{10}, 6000000000 -> 6 \\cdot 10^{9}."""
        n = int(expr)
        digits = str(abs(n)).rstrip("0")
        zeros = len(str(abs(n))) - len(digits)
        if abs(n) < 10**4 or zeros < 4 or len(digits) > 3:
            return super()._print_Rational(expr)
        sign = "-" if n < 0 else ""
        mant = f"{digits[0]}.{digits[1:]}" if len(digits) > 1 else digits
        e = zeros + len(digits) - 1
        return rf"{sign}10^{{{e}}}" if mant == "1" else rf"{sign}{mant} \cdot 10^{{{e}}}"

    def _print_Rational(self, expr: sp.Rational) -> str:
        """1/10^k as 10^{-k}; other rationals as SymPy prints them."""
        if expr.p in (1, -1) and expr.q >= 10**4 and str(expr.q).rstrip("0") == "1":
            return rf"{'-' if expr.p < 0 else ''}10^{{-{len(str(expr.q)) - 1}}}"
        return super()._print_Rational(expr)

    def terms(self, expr: sp.Expr) -> list[str]:
        """The top-level terms of a sum as `_print_Add` would join them: the first bare, the others with
        their sign (`+ t`, `- t`); a single term for anything that is not a sum."""
        if not isinstance(expr, sp.Add):
            return [self._print(expr)]
        out = []
        for i, term in enumerate(self._as_ordered_terms(expr, order=None)):
            sign = ""
            if i and term.could_extract_minus_sign():
                sign, term = "- ", -term
            elif i:
                sign = "+ "
            tex = self._print(term)
            if self._needs_add_brackets(term):
                tex = rf"\left({tex}\right)"
            out.append(sign + tex)
        return out

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


def to_latex(expr: sp.Expr, digits: int = 4) -> str:
    return PreciseLatexPrinter(digits).doprint(expr)


def target_tex(record: LawRecord) -> str:
    return r"\mathrm{%s}" % escape(record.targets[0]) if len(record.targets) == 1 else "y"


def equation(record: LawRecord, digits: int = 4) -> str:
    """`lhs = rhs` in LaTeX math on one line, with the constants as symbols."""
    return f"{target_tex(record)} = {to_latex(record.law.expr, digits)}"


def _numeric_expr(record: LawRecord) -> sp.Expr | None:
    if len(record.constants) != 1:
        return None
    theta = next(iter(record.constants.values()))
    return record.law.expr.xreplace({c: sp.Float(float(v)) for c, v in zip(record.law.constants, theta, strict=True)})


def numeric_equation(record: LawRecord, digits: int = 4) -> str | None:
    """The law with its constants substituted, when there is a single group and target."""
    expr = _numeric_expr(record)
    return None if expr is None else f"{target_tex(record)} = {to_latex(expr, digits)}"


def split_lines(lhs: str, expr: sp.Expr, digits: int = 4, width: float = EQUATION_WIDTH) -> list[str]:
    """The right-hand side's terms, grouped greedily into lines that fit `width` beside `lhs = `."""
    terms = PreciseLatexPrinter(digits).terms(expr)
    lines: list[list[str]] = [[]]
    room = width - math_width(lhs + "=")
    used = 0.0
    for t in terms:
        w = math_width(t)
        if lines[-1] and used + w > room:
            lines.append([])
            used = 0.0
        lines[-1].append(t)
        used += w
    return [" ".join(line) for line in lines]


def equation_block(lhs: str, expr: sp.Expr, label: str | None, digits: int = 4) -> str:
    """An equation environment (starred without a label), split over lines at its sums when too wide."""
    star = "" if label else "*"
    lines = split_lines(lhs, expr, digits)
    tag = [rf"  \label{{{label}}}"] if label else []
    if len(lines) == 1:
        return "\n".join([rf"\begin{{equation{star}}}", f"  {lhs} = {lines[0]}", *tag, rf"\end{{equation{star}}}"])
    body = [f"    {lhs} ={{}}& {lines[0]} \\\\", *[f"    &{line} \\\\" for line in lines[1:-1]], f"    &{lines[-1]}"]
    return "\n".join([rf"\begin{{equation{star}}}", r"  \begin{split}", *body, r"  \end{split}", *tag,
                      rf"\end{{equation{star}}}"])


def law_label(record: LawRecord) -> str:
    """A label base unique to the law: `kepler:<task>:<run>:c<candidate>` (or the record's own label)."""
    parts = [record.task.name]
    if record.run_dir is not None:
        parts.append(record.run_dir.name)
    parts.append(f"c{record.candidate_id}" if record.candidate_id is not None else record.label)
    return "kepler:" + ":".join(label_part(p) for p in parts)


def _cell(c: Cell, digits: int) -> str:
    value, low, high = (None if t is None else tex_number(t) for t in cell_text(c, digits))
    if low is None:
        return f"${value}$"
    return rf"${value}$ {{\scriptsize $[{low}, {high}]$}}"


def _stacked(c: Cell, digits: int) -> tuple[str, float]:
    """A value with its interval below it (one table cell), and its estimated width."""
    value, low, high = (None if t is None else tex_number(t) for t in cell_text(c, digits))
    if low is None:
        return f"${value}$", math_width(value, SIZES[r"\small"])
    interval = f"[{low}, {high}]"
    tex = rf"\begin{{tabular}}[t]{{@{{}}r@{{}}}}${value}$\\ {{\scriptsize $[{low}, {high}]$}}\end{{tabular}}"
    return tex, max(math_width(value, SIZES[r"\small"]), math_width(interval, SIZES[r"\scriptsize"]))


def constants_table(record: LawRecord, label: str, digits: int = 4) -> str:
    """Constants per group, in display order. One group: a row per constant (value, interval, role);
    several: a row per group and a column per constant (split into several tables if too wide)."""
    rows = constant_rows(record)
    order = display_order(record.law)
    roles = constant_roles(record.law)
    names = [f"${to_latex(record.law.constants[i])}$" for i in order]
    u = record.uncertainty
    level = f"{int(u['level'] * 100)}\\%" if u else ""
    what = f" with {level} bootstrap intervals ({u['resamples']} resamples)" if u else ""
    caption = (f"Constants of Eq.~\\eqref{{eq:{label}}}, fitted on all of the train split"
               + (" per group" if len(rows) > 1 else "") + f"{what}.")
    if len(rows) == 1:
        cells = rows[0][1]
        body = []
        for name, i in zip(names, order, strict=True):
            value, low, high = (None if t is None else tex_number(t) for t in cell_text(cells[i], digits))
            body.append([name, escape(roles[record.law.constants[i].name]), f"${value}$",
                         f"$[{low}, {high}]$" if low is not None else "--"])
        head = ["Constant", "Role", "Value", f"{level} interval" if u else "Interval"]
        return table_float(caption, f"tab:{label}-constants", head, "llrr", body)
    first = "Group" if len(record.targets) == 1 else "Group / target"
    body, widths = [], None
    for lbl, cells in rows:
        stacked = [_stacked(cells[i], digits) for i in order]
        body.append([escape(group_label(lbl)), *[t for t, _ in stacked]])
        w = [w for _, w in stacked]
        widths = w if widths is None else [max(a, b) for a, b in zip(widths, w, strict=True)]
    first_w = max(5.0 * SIZES[r"\small"] * len(group_label(lbl)) for lbl, _ in rows)
    head_w = [math_width(n.strip("$"), SIZES[r"\small"]) for n in names]
    widths = [first_w, *[max(a, b) for a, b in zip(widths or [], head_w, strict=True)]]
    return table_float(caption, f"tab:{label}-constants", [first, *names], "l" + "r" * len(names), body,
                       widths=widths)


def metrics_table(record: LawRecord, label: str) -> str:
    body = [[escape(s.split(" (")[0]), str(n) if n is not None else "--", escape(f), f"${tex_number(fmt(r2, 4))}$",
             f"${tex_number(fmt(nmse, 3))}$", f"${tex_number(fmt(nmae, 3))}$"]
            for s, n, f, r2, nmse, nmae in metric_rows(record)]
    return table_float(r"Scores by split (SLDBench definitions: $R^2 = 1 - \mathrm{NMSE}$); validation is the "
                       r"largest-scale slice of train, test the held-out extrapolation split.", f"tab:{label}-scores",
                       ["Split", "Rows", "Constants fitted on", "$R^2$", "NMSE", "NMAE"], "lrlrrr", body)


def render(record: LawRecord, digits: int = 4) -> str:
    task = record.task
    label = law_label(record)
    symbols = ", ".join(
        f"${to_latex(s)}$ is {escape(v.meaning or v.column)}" + (f" ({escape(v.unit)})" if v.unit else "")
        for s, v in zip(record.law.variables, task.variables, strict=True) if s in record.law.expr.free_symbols)
    parts = [
        f"% Kepler {kepler_version()}: task {task.name}, law {record.label} ({record.role}).",
        f"% Needs \\usepackage{{{PACKAGES}}} in the preamble. Labels: eq:{label}, tab:{label}-*.",
        equation_block(target_tex(record), record.law.expr, f"eq:{label}", digits),
        f"where {symbols}.",
    ]
    if len(record.targets) > 1:
        parts.append("Each target (" + ", ".join(escape(t) for t in record.targets) +
                     ") has its own constants.")
    numeric = _numeric_expr(record)
    if numeric is not None:
        parts += ["With the fitted constants:", equation_block(target_tex(record), numeric, None, digits)]
    note = coverage_line(record)
    if note:
        parts.append(escape(note))
    parts += [constants_table(record, label, digits), metrics_table(record, label)]
    derived = record.extra.get("derived")
    if derived:
        from discovery.outputs.export.derived import latex as derived_latex

        parts.append(derived_latex([derived], f"tab:{label}"))
    return "\n".join(parts) + "\n"
