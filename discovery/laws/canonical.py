"""A law's canonical text: the same law written two ways gets the same text, and so the same hash.

Two rewrites make it: exponentials and powers of one base are combined (`exp(a)*exp(b)` is `exp(a + b)`,
`x**a*x**b` is `x**(a + b)`), and constants are renamed c0, c1, ... by their place in the law, not by their
names. Both run for every formula the offline proposer writes (about 40% of a campaign's CPU is the
proposer), so each skips work that cannot change its answer: the texts and hashes are exactly those of the
plain SymPy calls (tests/test_canonical.py compares them on every law a short campaign proposes).
"""
from __future__ import annotations

from typing import Iterable

import sympy as sp
from sympy.printing.str import StrPrinter

# powsimp(deep=True) costs about 2.5x more per nested function: it is applied only up to this depth, which every
# law of the offline grammar keeps (deeper nests combine exponentials at the top level only).
MAX_DEEP_REWRITE_NESTING = 4


def canonical_rename(expr: sp.Expr, constants: Iterable[sp.Symbol]) -> tuple[sp.Expr, dict[sp.Symbol, sp.Symbol]]:
    """Rename constants to c0, c1, ... in an order that does not depend on their names.

    Each constant's key is the printed law with that constant marked and every other constant given
    one shared name, so the key sees only structure; constants are numbered in key order. Then
    `E + A/N**a` and `c + b*N**(-z)` print identically. (Constants in perfectly symmetric roles tie
    and fall back to name order, which can leave two spellings of such a law.) The keys of one law
    share most of their subexpressions, so one printer prints each of those once (_SharedPrinter).
    """
    consts = list(constants)
    shared, marked = sp.Symbol("_c", real=True), sp.Symbol("_x", real=True)
    printer = _SharedPrinter({"order": "lex"})
    keys = {}
    for c in consts:
        mapping = {d: shared for d in consts}
        mapping[c] = marked
        keys[c] = printer.doprint(expr.xreplace(mapping))
    order = sorted(consts, key=lambda c: (keys[c], c.name))
    rename = {c: sp.Symbol(f"c{i}", real=True) for i, c in enumerate(order)}
    return expr.xreplace(rename), rename


class _SharedPrinter(StrPrinter):
    """`sstr` that remembers what it printed: a subexpression's text depends on the subexpression alone
    (its parent adds any parentheses), so a subexpression met again, in another key of the same law, is not
    printed twice."""

    def __init__(self, settings: dict | None = None):
        super().__init__(settings)
        self._printed: dict[sp.Basic, str] = {}

    def _print(self, expr, **kwargs) -> str:
        if kwargs or not isinstance(expr, sp.Basic):
            return super()._print(expr, **kwargs)
        text = self._printed.get(expr)
        if text is None:
            text = self._printed[expr] = super()._print(expr)
        return text


def combine_exponentials(expr: sp.Expr) -> sp.Expr:
    """exp(a)*exp(b) and exp(a + b) are one law: combine exponentials before naming (for the hash only; the
    law is still fitted as written). Most laws have nothing to combine, and then powsimp is not called."""
    if not _may_combine(expr):
        return expr
    deep = _function_nesting(expr) <= MAX_DEEP_REWRITE_NESTING
    return sp.powsimp(expr, combine="exp", deep=deep)


def _function_nesting(expr: sp.Expr) -> int:
    """How many functions (or powers with a non-numeric exponent) are nested inside each other, at most."""
    depth: dict[sp.Basic, int] = {}
    for node in sp.postorder_traversal(expr):
        inner = max((depth.get(a, 0) for a in node.args), default=0)
        nests = isinstance(node, sp.Function) or (node.is_Pow and not node.exp.is_Number)
        depth[node] = inner + (1 if nests else 0)
    return depth.get(expr, 0)


def _may_combine(expr: sp.Expr) -> bool:
    """False only where `powsimp(combine="exp")` provably returns the law unchanged: no product anywhere in it
    (a power counts as a product of one factor) holds two factors whose bases are equal, inverse or opposite,
    nor a factor powsimp rewrites on its own (a power of a power or of an exponential, a number raised to a
    power, a fractional power of a product, a power of a product of non-atoms)."""
    for node in sp.preorder_traversal(expr):
        if not (node.is_Mul or node.is_Pow):
            continue
        factors = node.args if node.is_Mul else (node,)
        bases = []
        for base, exponent in (f.as_base_exp() for f in factors if not f.is_Rational):
            if ((base.is_Number and (exponent != 1 or base == 1)) or base.is_Pow or isinstance(base, sp.exp)
                    or (exponent.is_Rational and not exponent.is_Integer and base.is_Mul)
                    or (node.is_Pow and base.is_Mul and not any(f.is_Atom for f in base.args))):
                return True
            bases.append(base)
        for i, a in enumerate(bases):
            if any(a == b or a == 1 / b or a == -b for b in bases[i + 1:]):
                return True
    return False
