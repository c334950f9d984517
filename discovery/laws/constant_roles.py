"""What each constant of a law does, so tables can list them in an order a reader expects.

Roles, read off the formula: an *amplitude* multiplies a term that depends on the variables and enters
linearly (A in A/N**alpha); an *exponent* sits in the exponent of a power (alpha); an *offset* is an
additive constant (E); anything else (a shift inside a term, a scale inside exp) is *other*. Tables
print amplitudes, then exponents, then offsets, then the others, alphabetically within each role.
"""
from __future__ import annotations

import sympy as sp

from discovery.laws.law import Law

ROLE_ORDER = ("amplitude", "exponent", "offset", "other")


def constant_roles(law: Law) -> dict[str, str]:
    """{constant name: role} for every constant of the law."""
    variables = set(law.variables)
    out = {}
    for c in law.constants:
        d = sp.diff(law.expr, c)
        linear = c not in d.free_symbols
        if linear and not (d.free_symbols & variables):
            out[c.name] = "offset" if d.free_symbols.isdisjoint(set(law.constants)) else "amplitude"
        elif linear:
            out[c.name] = "amplitude"
        elif any(isinstance(node, sp.Pow) and c in node.exp.free_symbols for node in sp.preorder_traversal(law.expr)):
            out[c.name] = "exponent"
        else:
            out[c.name] = "other"
    return out


def display_order(law: Law) -> list[int]:
    """Indices into `law.constants` in display order: by role, then by name (case-insensitive)."""
    roles = constant_roles(law)
    names = law.constant_names
    return sorted(range(len(names)), key=lambda i: (ROLE_ORDER.index(roles[names[i]]), names[i].lower(), names[i]))
