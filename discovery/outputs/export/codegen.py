"""Python source for a law: the very code Kepler evaluates, so exported predictions match bit for bit.

`Law.predict` calls a function that SymPy's `lambdify` generated (NumPy printer, common
subexpressions eliminated). Here the same function is generated again and its source is taken
with `inspect`, together with the imports its free names need (numpy, plus functools.reduce for
Min/Max). Nothing is evaluated from formula text: the law was parsed by `parse_law` first.
"""
from __future__ import annotations

import ast
import builtins
import functools
import inspect
import textwrap

import numpy
import sympy as sp

from discovery.laws.law import Law


class CodegenError(ValueError):
    """The law's generated code uses a name that has no numpy or standard-library home."""


def _imports(fn, source: str) -> list[str]:
    tree = ast.parse(source)
    defined = {a.arg for node in ast.walk(tree) if isinstance(node, ast.arguments) for a in node.args}
    defined |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    used = sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)} - defined)
    from_numpy, lines = [], []
    for name in used:
        value = fn.__globals__.get(name)
        if value is functools.reduce:
            lines.append("from functools import reduce")
        elif value is not None and getattr(numpy, name, None) is value:
            from_numpy.append(name)
        elif value is None and hasattr(builtins, name):
            continue
        else:
            raise CodegenError(f"generated code uses {name!r}, which is neither numpy nor the standard library")
    if from_numpy:
        lines.append(f"from numpy import {', '.join(from_numpy)}")
    return lines


def expressions_source(args: list[sp.Symbol], exprs, name: str) -> tuple[str, list[str]]:
    """(def-source named `name`, import lines) of a function of `args` returning `exprs` (one or a list)."""
    fn = sp.lambdify(args, exprs, modules="numpy", cse=True)
    source = textwrap.dedent(inspect.getsource(fn))
    source = source.replace("def _lambdifygenerated(", f"def {name}(", 1)
    return source.rstrip() + "\n", _imports(fn, source)


def function_source(law: Law, name: str, jacobian: bool = False) -> tuple[str, list[str]]:
    """(def-source named `name`, import lines) of the law's prediction (or Jacobian) function.

    Signature: (*variables in task order, *constants in canonical order)."""
    exprs = [sp.diff(law.expr, c) for c in law.constants] if jacobian else law.expr
    fn = sp.lambdify([*law.variables, *law.constants], exprs, modules="numpy", cse=True)
    source = textwrap.dedent(inspect.getsource(fn))
    source = source.replace("def _lambdifygenerated(", f"def {name}(", 1)
    return source.rstrip() + "\n", _imports(fn, source)
