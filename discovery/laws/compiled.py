"""A law compiled to machine code by SymEngine's LLVM backend: the fast engine's predict, Jacobian and basis.

SymPy's `diff` + `lambdify` (printing Python source, common subexpressions, `exec`) cost a campaign
about as much CPU per candidate as fitting it. SymEngine (a C++ core with SymPy's semantics) takes
the derivatives and compiles the law and its Jacobian in a few milliseconds, and the compiled code
evaluates as fast as NumPy. Numbers agree with the SymPy path to a few ulps (libm's `exp`/`log`/`pow`
instead of NumPy's, and SymEngine's own arrangement of the derivatives); benchmarks/search_throughput.py
measures what that does to a campaign. A law SymEngine cannot differentiate or compile (Abs, Min, Max)
gets None here and keeps the SymPy path.
"""
from __future__ import annotations

from functools import cached_property
from typing import Callable, Sequence

import numpy as np
import sympy as sp

UNSUPPORTED = (sp.Abs, sp.Min, sp.Max)  # SymEngine has no derivative for these: such a law keeps the SymPy path

try:
    import symengine as se
except ImportError:  # pragma: no cover - symengine is a dependency; a broken install falls back to SymPy
    se = None


def _call(fn: Callable, inp: np.ndarray) -> np.ndarray:
    """Evaluate at every point of `inp` (..., n_inputs) -> (..., n_outputs). Points go in as rows of a 2-D
    array: with one input SymEngine would otherwise read each number of `inp` as a point of its own."""
    out = np.asarray(fn(inp.reshape(-1, inp.shape[-1])), dtype=float)
    return out.reshape(*inp.shape[:-1], -1)


def _llvm(args: list, exprs: list) -> Callable:
    return se.Lambdify(args, exprs, backend="llvm", cse=True, opt_level=0)


class CompiledLaw:
    """Prediction, Jacobian and the variable-projection basis of one law, each compiled when first used (the
    campaign process needs only the Jacobian, for its redundancy screen; a worker needs all three).

    Each compiled function takes one array of shape (..., n_inputs), inputs in the order of its signature.
    """

    def __init__(self, expr, variables: list, consts: list, derivs: list, linear: list[int]):
        self.expr, self.variables, self.consts, self.derivs = expr, variables, consts, derivs
        self.n_vars, self.n_consts = len(variables), len(consts)
        self.linear = linear
        self.nonlinear = [i for i in range(len(consts)) if i not in linear]

    @cached_property
    def _predict(self) -> Callable:
        return _llvm([*self.variables, *self.consts], [self.expr])

    @cached_property
    def _jacobian(self) -> Callable:
        return _llvm([*self.variables, *self.consts], self.derivs)

    @cached_property
    def _basis(self) -> Callable:  # (vars, nonlinear consts) -> [offset, basis of each linear constant]
        offset = self.expr.xreplace({self.consts[i]: se.Integer(0) for i in self.linear})
        return _llvm([*self.variables, *[self.consts[i] for i in self.nonlinear]],
                     [offset, *[self.derivs[i] for i in self.linear]])

    def predict(self, X: np.ndarray, theta: np.ndarray) -> np.ndarray:
        """X: (n, n_vars); theta: (k,) -> (n,), or (S, k) -> (S, n); or X (S, n, n_vars), theta (S, k) -> (S, n)."""
        return self._evaluate(self._predict, X, theta)[..., 0]

    def jacobian(self, X: np.ndarray, theta: np.ndarray) -> np.ndarray:
        """(n, k)."""
        if self.n_consts == 0:
            return np.zeros((len(X), 0))
        return self._evaluate(self._jacobian, X, np.asarray(theta, dtype=float))

    def basis(self, *arrays: np.ndarray) -> list[np.ndarray]:
        """The separable split in lambdify's calling convention: variables then nonlinear constants, each an
        array broadcastable to (S, n) -> [offset, basis_0, ...], each (S, n)."""
        arrays = np.broadcast_arrays(*[np.asarray(a, dtype=float) for a in arrays])
        out = _call(self._basis, np.stack(arrays, axis=-1))
        return [out[..., j] for j in range(out.shape[-1])]

    def jacobians(self, X: np.ndarray, thetas: np.ndarray) -> np.ndarray:
        """(S, n, k): X (n, n_vars) shared, or (S, n, n_vars) with rows of its own per constant vector."""
        if self.n_consts == 0:
            return np.zeros((*np.broadcast_shapes(X.shape[:-1], (len(thetas), 1)), 0))
        return self._evaluate(self._jacobian, X, np.asarray(thetas, dtype=float))

    def _evaluate(self, fn: Callable, X: np.ndarray, theta: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=float)
        theta = np.asarray(theta, dtype=float)
        n = X.shape[-2]
        if X.ndim == 3:  # stacked rows, one block per constant vector (the batched fit of many groups)
            inp = np.empty((*X.shape[:2], self.n_vars + self.n_consts))
            inp[:, :, :self.n_vars] = X
            inp[:, :, self.n_vars:] = theta[:, None, :]
        elif theta.ndim == 2:
            inp = np.empty((theta.shape[0], n, self.n_vars + self.n_consts))
            inp[:, :, :self.n_vars] = X[None, :, :]
            inp[:, :, self.n_vars:] = theta[:, None, :]
        else:
            inp = np.empty((n, self.n_vars + self.n_consts))
            inp[:, :self.n_vars] = X
            inp[:, self.n_vars:] = theta
        return _call(fn, inp)


def compile_law(expr: sp.Expr, variables: Sequence[sp.Symbol], constants: Sequence[sp.Symbol]) -> CompiledLaw | None:
    """A law's expression compiled by SymEngine (inputs: variables, then constants, in the order given), or
    None where SymEngine does not support it (then the SymPy path is used)."""
    if not isinstance(expr, sp.Basic):  # only a law parse_law built through its allow-list, never text
        raise TypeError(f"compile_law takes a parsed SymPy expression, not {type(expr).__name__}")
    if se is None or expr.atoms(*UNSUPPORTED):
        return None
    try:
        variables = [se.Symbol(v.name) for v in variables]
        consts = [se.Symbol(c.name) for c in constants]
        expr = se.sympify(expr)
        derivs = [expr.diff(c) for c in consts]
        compiled = CompiledLaw(expr, variables, consts, derivs, _linear_constants(consts, derivs))
        _ = compiled._predict  # an expression SymEngine cannot compile is found here, not in the middle of a fit
    except (RuntimeError, TypeError, ValueError, NotImplementedError):
        return None
    return compiled


def _linear_constants(consts: list, derivs: list) -> list[int]:
    """The constants the law is linear in, chosen greedily in order, as Law.separable does with SymPy."""
    linear: list[int] = []
    for i, c in enumerate(consts):
        chosen = {consts[j] for j in linear} | {c}
        if derivs[i].free_symbols & chosen:
            continue
        if any(c in derivs[j].free_symbols for j in linear):
            continue
        linear.append(i)
    return linear
