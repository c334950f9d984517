"""Formula text -> a safe, canonical, compiled law.

Untrusted text (an LLM reply, a user's command line, a task file) is parsed by Python's `ast` in
`eval` mode and walked node by node through an allow-list; only then is a SymPy expression built,
from our own Symbol/function objects. Nothing from the text ever reaches `eval`, `exec`,
`sympify` or `parse_expr`. Limits on length (tested before anything reads the text), size, depth,
literal magnitudes and exponents keep SymPy from being asked to compute something enormous: a part
of the formula without variables is first evaluated in floating point and must stay within the
literal limits, and so must every number left once SymPy has folded the expression. Whatever SymPy
raises on the way becomes a LawError with its reason; rewrites whose cost can grow with nesting are
limited by the expression's nesting. (The hard wall-clock bound on parsing and compiling untrusted
text is `discovery.laws.guard`.)
"""
from __future__ import annotations

import ast
import builtins
import hashlib
import keyword
import math
from dataclasses import dataclass, fields, replace
from functools import cached_property
from typing import Callable, Iterable, Sequence

import numpy as np
import sympy as sp

from discovery.laws.canonical import canonical_rename, combine_exponentials
from discovery.laws.compiled import CompiledLaw, compile_law

MAX_TEXT_LENGTH = 1000
MAX_AST_NODES = 250
MAX_DEPTH = 24
MAX_LITERAL = 1e30
MAX_EXPONENT_LITERAL = 10.0
MAX_CONSTANT_NAME = 32

# One table drives parsing (text name -> SymPy), so the allow-list is visible in one place.
FUNCTIONS: dict[str, tuple[Callable[..., sp.Expr], int]] = {
    "exp": (sp.exp, 1),
    "log": (sp.log, 1),
    "sqrt": (sp.sqrt, 1),
    "abs": (sp.Abs, 1),
    "tanh": (sp.tanh, 1),
    "Min": (sp.Min, 2),
    "Max": (sp.Max, 2),
    "min": (sp.Min, 2),
    "max": (sp.Max, 2),
    "log10": (lambda a: sp.log(a) / sp.log(10), 1),
    "log2": (lambda a: sp.log(a) / sp.log(2), 1),
    "sigmoid": (lambda a: 1 / (1 + sp.exp(-a)), 1),
}
ROW_AGGREGATES = {"mean", "median", "sum", "std", "var", "avg", "average", "mode", "count", "len", "argmax", "argmin",
                  "amax", "amin", "prod", "cumsum", "quantile", "percentile", "nanmean", "nanmax", "nanmin"}
RESERVED = set(FUNCTIONS) | ROW_AGGREGATES | {"pi", "e", "inf", "nan", "I", "oo", "zoo", "S", "N_", "lambda"}


class LawError(ValueError):
    """The formula was refused; the message is one line naming the reason."""


@dataclass(frozen=True)
class _Num:
    """A literal number folded during the walk, so `10**10**10` is refused before SymPy sees it."""

    value: float


def _check_text(text: str) -> None:
    if not isinstance(text, str):
        raise LawError("formula must be text")
    if len(text) > MAX_TEXT_LENGTH:  # first: a huge text is refused before anything reads it
        raise LawError(f"formula is {len(text)} characters long; the limit is {MAX_TEXT_LENGTH}")
    if not text.strip():
        raise LawError("formula is empty")
    for i, ch in enumerate(text):
        if ord(ch) > 127:
            raise LawError(f"non-ASCII character {ch!r} at position {i}; write formulas in plain ASCII")
        if ch in "\"'`":
            raise LawError("strings are not allowed in a formula")
        if ch in ";\\":
            raise LawError(f"character {ch!r} is not allowed: a formula is one expression")
    depth = 0
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if depth > MAX_DEPTH:
            raise LawError(f"formula is nested deeper than {MAX_DEPTH} brackets")


def syntax_tree(text: str) -> ast.Expression:
    """The checked syntax tree of formula text (length, characters, syntax, size); LawError if refused."""
    _check_text(text)
    return _parse_tree(text)


def _parse_tree(text: str) -> ast.Expression:
    try:
        tree = ast.parse(text.strip().replace("^", "**"), mode="eval")
    except SyntaxError as exc:
        raise LawError(f"not a valid expression: {exc.msg}") from None
    except (RecursionError, MemoryError, ValueError):
        raise LawError("formula is too deeply nested or too large to parse") from None
    n_nodes = sum(1 for _ in ast.walk(tree))
    if n_nodes > MAX_AST_NODES:
        raise LawError(f"formula has {n_nodes} syntax nodes; the limit is {MAX_AST_NODES}")
    return tree


class _Walker:
    """Turns an allow-listed AST into SymPy, collecting variable and constant names."""

    def __init__(self, variables: dict[str, sp.Symbol], constants: set[str] | None, column_hints: dict[str, str],
                 check_typos: bool = True):
        self.variables = variables
        self.declared = constants
        self.column_hints = column_hints
        self.check_typos = check_typos
        self.constants: dict[str, sp.Symbol] = {}

    def walk(self, node: ast.AST, depth: int = 0) -> sp.Expr | _Num:
        if depth > MAX_DEPTH:
            raise LawError(f"formula is nested deeper than {MAX_DEPTH} levels")
        method = getattr(self, "_" + type(node).__name__, None)
        if method is None:
            raise LawError(f"{_describe_node(node)} is not allowed in a formula")
        return method(node, depth + 1)

    def _Expression(self, node: ast.Expression, depth: int):
        return self.walk(node.body, depth)

    def _Constant(self, node: ast.Constant, depth: int) -> _Num:
        v = node.value
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise LawError(f"literal {v!r} is not allowed; only real numbers")
        if isinstance(v, int) and abs(v) > MAX_LITERAL:
            raise LawError(f"literal {v} exceeds {MAX_LITERAL:g} in magnitude")
        v = float(v)
        if not math.isfinite(v) or abs(v) > MAX_LITERAL:
            raise LawError(f"literal {v!r} exceeds {MAX_LITERAL:g} in magnitude")
        return _Num(v)

    def _Name(self, node: ast.Name, depth: int) -> sp.Symbol:
        name = node.id
        if name in self.variables:
            return self.variables[name]
        check_constant_name(name, list(self.variables), self.declared, self.column_hints, self.check_typos)
        return self.constants.setdefault(name, sp.Symbol(name, real=True))

    def _UnaryOp(self, node: ast.UnaryOp, depth: int):
        operand = self.walk(node.operand, depth)
        if isinstance(node.op, ast.USub):
            return _Num(-operand.value) if isinstance(operand, _Num) else -operand
        if isinstance(node.op, ast.UAdd):
            return operand
        raise LawError(f"operator {type(node.op).__name__} is not allowed")

    def _BinOp(self, node: ast.BinOp, depth: int):
        left, right = self.walk(node.left, depth), self.walk(node.right, depth)
        op = type(node.op)
        if op is ast.Pow:
            return self._power(left, right)
        if isinstance(left, _Num) and isinstance(right, _Num):
            return _Num(self._fold(op, left.value, right.value))
        a, b = _sym(left), _sym(right)
        if op is ast.Add:
            return _bounded(a + b)
        if op is ast.Sub:
            return _bounded(a - b)
        if op is ast.Mult:
            return _bounded(a * b)
        if op is ast.Div:
            if b == 0:
                raise LawError("division by zero")
            return _bounded(a / b)
        raise LawError(f"operator {op.__name__} is not allowed; use + - * / **")

    @staticmethod
    def _fold(op: type, a: float, b: float) -> float:
        try:
            value = {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b}.get(op)
            if op is ast.Div:
                value = a / b
        except ZeroDivisionError:
            raise LawError("division by zero") from None
        if value is None:
            raise LawError(f"operator {op.__name__} is not allowed; use + - * / **")
        if not math.isfinite(value) or abs(value) > MAX_LITERAL:
            raise LawError(f"a literal expression exceeds {MAX_LITERAL:g} in magnitude")
        return value

    def _power(self, base, exponent):
        if isinstance(exponent, _Num):
            if abs(exponent.value) > MAX_EXPONENT_LITERAL:
                raise LawError(f"exponent literal {exponent.value:g} exceeds {MAX_EXPONENT_LITERAL:g} in magnitude")
            if isinstance(base, _Num):
                try:
                    value = math.pow(base.value, exponent.value)
                except (OverflowError, ValueError, ZeroDivisionError):
                    raise LawError("a literal power is undefined or too large") from None
                if not math.isfinite(value) or abs(value) > MAX_LITERAL:
                    raise LawError(f"a literal power exceeds {MAX_LITERAL:g} in magnitude")
                return _Num(value)
        exponent, base = _sym(exponent), _sym(base)
        if not exponent.free_symbols:  # sqrt(1e14)*sqrt(1e14) is a literal too: 2**that is a 10**14-bit integer
            value = _check_constant_part(_float_of(exponent))
            if abs(value) > MAX_EXPONENT_LITERAL:
                raise LawError(f"exponent {value:g} exceeds {MAX_EXPONENT_LITERAL:g} in magnitude")
        return _bounded(base ** exponent)

    def _Call(self, node: ast.Call, depth: int):
        if not isinstance(node.func, ast.Name):
            raise LawError(f"{_describe_node(node.func)} cannot be called; only plain function names")
        name = node.func.id
        if node.keywords:
            raise LawError(f"keyword arguments are not allowed in {name}()")
        if name in ROW_AGGREGATES or (name in ("max", "min", "Max", "Min") and len(node.args) < 2):
            raise LawError(f"{name}() over rows is a data-dependent statistic; use fixed reference scales instead")
        if name not in FUNCTIONS:
            allowed = ", ".join(sorted(FUNCTIONS))
            raise LawError(f"function {name!r} is not allowed; allowed: {allowed}")
        fn, arity = FUNCTIONS[name]
        if len(node.args) != arity:
            raise LawError(f"{name}() takes {arity} argument(s), got {len(node.args)}")
        args = [_sym(self.walk(a, depth)) for a in node.args]
        if not any(a.free_symbols for a in args):  # all constant: check the value before SymPy evaluates it
            _check_constant_part(_apply(_FLOAT_FUNCTIONS[name], [_float_of(a) for a in args]))
        return _bounded(fn(*args))


def _sigmoid_float(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x > -700 else 0.0


_FLOAT_FUNCTIONS: dict[str, Callable[..., float]] = {
    "exp": math.exp, "log": math.log, "sqrt": math.sqrt, "abs": abs, "tanh": math.tanh,
    "Min": min, "Max": max, "min": min, "max": max, "log10": math.log10, "log2": math.log2,
    "sigmoid": _sigmoid_float,
}
_FLOAT_OF_FUNCTION: dict[type, Callable[..., float]] = {
    sp.exp: math.exp, sp.log: math.log, sp.Abs: abs, sp.tanh: math.tanh, sp.Min: min, sp.Max: max,
}


def _float_of(expr: sp.Expr) -> float:
    """The value of a part without symbols, in IEEE floats (never SymPy's arbitrary precision, which a
    part such as exp(exp(exp(3))) sends into hours of big-integer work): inf when it overflows, nan
    when it is undefined or complex."""
    try:
        if expr.is_Number:
            return float(expr)
        if expr is sp.E:
            return math.e
        if expr is sp.pi:
            return math.pi
        args = [_float_of(a) for a in expr.args]
        if any(math.isnan(a) for a in args):
            return math.nan
        if expr.is_Add:
            return math.fsum(args)
        if expr.is_Mul:
            return math.prod(args)
        if expr.is_Pow:
            return _apply(math.pow, args)
        fn = _FLOAT_OF_FUNCTION.get(expr.func)
        return _apply(fn, args) if fn is not None else math.nan
    except OverflowError:
        return math.inf
    except (ValueError, ZeroDivisionError, TypeError):
        return math.nan


def _apply(fn: Callable[..., float], args: list[float]) -> float:
    try:
        value = fn(*args)
    except OverflowError:
        return math.inf
    except (ValueError, ZeroDivisionError, TypeError):
        return math.nan
    return value if isinstance(value, float) else float(value) if isinstance(value, int) else math.nan


def _check_constant_part(value: float) -> float:
    if math.isnan(value):
        raise LawError("a part of the formula without variables is undefined or complex")
    if not math.isfinite(value) or abs(value) > MAX_LITERAL:
        raise LawError(f"a part of the formula without variables exceeds {MAX_LITERAL:g} in magnitude")
    return value


def _bounded(expr: sp.Expr) -> sp.Expr:
    """A freshly built node: if it has no symbols (SymPy may have folded one), its value must be bounded."""
    if not expr.free_symbols:
        _check_constant_part(_float_of(expr))
    return expr


def _one_edit(a: str, b: str) -> bool:
    """a and b differ by exactly one inserted, deleted or substituted character."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b, strict=True)) == 1
    short, long = sorted((a, b), key=len)
    return any(long[:i] + long[i + 1:] == short for i in range(len(long)))


def near_miss(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate `name` is probably a typo of: the same letters in another case, or one edit away
    (for names of one letter, only the case counts: `a` is not a near miss of `N`)."""
    for c in candidates:
        if name.lower() == c.lower() or (max(len(name), len(c)) >= 2 and _one_edit(name, c)):
            return c
    return None


def check_constant_name(name: str, variables: list[str], declared: set[str] | None, column_hints: dict[str, str],
                        check_typos: bool = True) -> None:
    """Decide whether an identifier that is not a variable may be a constant; otherwise a one-line LawError.

    A constant is a declared name, or, when none are declared, any name that is neither reserved, nor a data
    column (`column_hints`: column -> its variable symbol, or "" for a column that is no variable), nor a
    near miss of a variable or of a variable's column (with `check_typos`; off when re-reading stored laws)."""
    if name in FUNCTIONS:
        raise LawError(f"function {name!r} used without a call")
    if column_hints.get(name):
        raise LawError(f"unknown variable {name!r}: write it as {column_hints[name]!r}")
    if name in column_hints:
        raise LawError(f"`{name}` is a data column but not a variable of this task (variables: {', '.join(variables)})")
    if name in ("e", "pi"):
        raise LawError(f"{name!r} is reserved: write exp(x) for e**x, and give pi as a number")
    if name.startswith("_") or name in RESERVED or keyword.iskeyword(name) or len(name) > MAX_CONSTANT_NAME:
        raise LawError(f"name {name!r} is not allowed as a constant (reserved: Python keywords, names starting "
                       f"with _, longer than {MAX_CONSTANT_NAME} characters, function names, "
                       f"{', '.join(sorted(RESERVED - set(FUNCTIONS) - ROW_AGGREGATES))}); rename it")
    if declared is not None:
        if name not in declared:
            guess = near_miss(name, variables)
            hint = f"; did you mean `{guess}`?" if guess else "; declare constants explicitly"
            raise LawError(f"unknown variable {name!r}: variables are {', '.join(variables)}{hint}")
        return
    if not check_typos:
        return
    guess = near_miss(name, variables)
    if guess is None:
        by_column = {c: s for c, s in column_hints.items() if s}
        column = near_miss(name, by_column)
        if column is not None:
            raise LawError(f"`{name}` is not a variable of this task; did you mean `{by_column[column]}` "
                           f"(column {column})?")
        other = near_miss(name, [c for c, s in column_hints.items() if not s])
        if other is not None:
            raise LawError(f"`{name}` is not a variable of this task; it looks like data column `{other}`, which is "
                           f"not a variable (variables: {', '.join(variables)})")
        return
    raise LawError(f"`{name}` is not a variable of this task; did you mean `{guess}`? (to fit a constant of that "
                   "name, declare it)")


def _sym(x) -> sp.Expr:
    if isinstance(x, _Num):
        return sp.Rational(repr(x.value)) if x.value != int(x.value) or abs(x.value) < 1e15 else sp.Float(x.value)
    return x


def _describe_node(node: ast.AST) -> str:
    names = {
        "Attribute": "attribute access", "Lambda": "lambda", "ListComp": "a comprehension",
        "GeneratorExp": "a comprehension", "SetComp": "a comprehension", "DictComp": "a comprehension",
        "Subscript": "indexing", "Compare": "a comparison", "BoolOp": "a boolean operator",
        "IfExp": "a conditional expression", "NamedExpr": "an assignment", "List": "a list", "Tuple": "a tuple",
        "Dict": "a dict", "Set": "a set", "Starred": "a starred expression", "Await": "await",
        "JoinedStr": "an f-string", "Yield": "yield", "YieldFrom": "yield", "Slice": "a slice",
    }
    return names.get(type(node).__name__, f"syntax {type(node).__name__}")


# Names the generated code may call (NumPy's and Python's, and the modules lambdify refers to). An argument named
# like one (a constant `sign`, `select` or `maximum`, a variable `exp`, `log` or `abs`) would shadow it.
_GENERATED_NAMES = frozenset(dir(np)) | frozenset(dir(builtins)) | {"numpy", "functools", "math", "mpmath", "scipy"}


def _numpy_function(args: list[sp.Symbol], exprs) -> Callable:
    """NumPy code for `exprs` (one expression or a list), safe from user names: lambdify adds the symbols of a
    lone expression to the code's namespace, under their names, so it is always given a list; and when an
    argument is named like a function the code may call, the arguments are renamed in the code (dummify;
    only then, since renaming rebuilds the expression, which costs as much as building it did)."""
    clash = any(a.name in _GENERATED_NAMES for a in args)
    if isinstance(exprs, sp.Basic):
        one = sp.lambdify(args, [exprs], modules="numpy", cse=True, dummify=clash)
        return lambda *values: one(*values)[0]
    return sp.lambdify(args, exprs, modules="numpy", cse=True, dummify=clash)


@dataclass(frozen=True)
class Separable:
    linear: list[int]
    nonlinear: list[int]
    func: Callable  # (vars..., nonlinear consts...) -> [offset, basis_0, basis_1, ...]


@dataclass(frozen=True, eq=False)
class Law:
    """A parsed, validated law. Constants are named as written; `canonical` uses c0, c1, ..."""

    text: str
    expr: sp.Expr
    variables: tuple[sp.Symbol, ...]  # all task variables, in task order (the call signature)
    constants: tuple[sp.Symbol, ...]  # in canonical order (c0, c1, ...)
    canonical: str
    hash: str
    complexity: int
    # How predictions and the Jacobian are computed: "sympy" (lambdify to NumPy) or "symengine" (compiled by
    # SymEngine's LLVM backend, see discovery.laws.compiled; laws it does not support stay on "sympy").
    engine: str = "sympy"

    def __getstate__(self) -> dict:
        """Pickled without SymPy's compiled functions (a fit job sends the parsed law; the worker compiles what it
        needs); SymEngine's compiled code travels along (machine code, a few kB: the worker need not rebuild it)."""
        state = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.__dict__.get("_compiled") is not None:
            state["_compiled"] = self.__dict__["_compiled"]
        return state

    def with_engine(self, engine: str) -> "Law":
        return self if engine == self.engine else replace(self, engine=engine)

    @property
    def constant_names(self) -> list[str]:
        return [c.name for c in self.constants]

    @property
    def variable_names(self) -> list[str]:
        return [v.name for v in self.variables]

    @cached_property
    def _compiled(self) -> "CompiledLaw | None":
        if self.engine != "symengine":
            return None
        return compile_law(self.expr, self.variables, self.constants)

    @cached_property
    def _predict(self) -> Callable:
        return _numpy_function([*self.variables, *self.constants], self.expr)

    @cached_property
    def _jacobian(self) -> Callable:
        derivs = [sp.diff(self.expr, c) for c in self.constants]
        return _numpy_function([*self.variables, *self.constants], derivs)

    def compile(self) -> "Law":
        """Build every compiled function now (prediction, Jacobian, variable projection, with this law's
        engine); they are otherwise built on first use. `discovery.laws.guard` times this with the parse."""
        if self._compiled is None:
            _ = self._predict, self._jacobian
        _ = self.separable
        return self

    def predict(self, X: np.ndarray, theta: np.ndarray) -> np.ndarray:
        """X: (n, n_vars) in task variable order; theta: (k,) -> (n,), or (S, k) -> (S, n). X may also be
        (S, n, n_vars) with theta (S, k): block s of rows with constants theta[s] -> (S, n)."""
        if self._compiled is not None:
            with np.errstate(all="ignore"):
                return self._compiled.predict(X, theta)
        X = np.asarray(X, dtype=float)
        theta = np.asarray(theta, dtype=float)
        if X.ndim == 3:  # stacked rows (S, n, n_vars), one block per constant vector
            cols = [X[..., j] for j in range(X.shape[-1])]
            params = [theta[:, [i]] for i in range(theta.shape[1])]
            with np.errstate(all="ignore"):
                out = self._predict(*cols, *params)
            return np.broadcast_to(np.asarray(out, dtype=float), X.shape[:2])
        cols = [X[:, j] for j in range(X.shape[1])]
        if theta.ndim == 2:
            cols = [c[None, :] for c in cols]
            params = [theta[:, [i]] for i in range(theta.shape[1])]
            shape = (theta.shape[0], X.shape[0])
        else:
            params = list(theta)
            shape = (X.shape[0],)
        with np.errstate(all="ignore"):
            out = self._predict(*cols, *params)
        return np.broadcast_to(np.asarray(out, dtype=float), shape)

    def predict_rows(self, X: np.ndarray, thetas: np.ndarray) -> np.ndarray:
        """Row i of X with constants thetas[i]: X (n, n_vars), thetas (n, k) -> (n,)."""
        X, thetas = np.asarray(X, dtype=float), np.asarray(thetas, dtype=float)
        with np.errstate(all="ignore"):
            out = self._predict(*[X[:, j] for j in range(X.shape[1])], *[thetas[:, i] for i in range(thetas.shape[1])])
        return np.broadcast_to(np.asarray(out, dtype=float), (X.shape[0],))

    def jacobians(self, X: np.ndarray, thetas: np.ndarray) -> np.ndarray:
        """d prediction / d constants for many constant vectors: X (n, n_vars), thetas (S, k) -> (S, n, k)."""
        X, thetas = np.asarray(X, dtype=float), np.asarray(thetas, dtype=float)
        shape = (thetas.shape[0], X.shape[0])
        with np.errstate(all="ignore"):
            parts = self._jacobian(*[X[:, j][None, :] for j in range(X.shape[1])],
                                   *[thetas[:, [i]] for i in range(thetas.shape[1])])
        out = np.empty((*shape, len(parts)))
        for i, p in enumerate(parts):
            out[:, :, i] = np.broadcast_to(np.asarray(p, dtype=float), shape)
        return out

    def stacked_jacobians(self, X: np.ndarray, thetas: np.ndarray) -> np.ndarray:
        """d prediction / d constants with this law's engine for blocks of rows of their own: X (S, n, n_vars),
        thetas (S, k) -> (S, n, k). The batched fit of many groups at once (discovery.laws.fit.fit_law_batched)."""
        if self._compiled is not None:
            with np.errstate(all="ignore"):
                return self._compiled.jacobians(X, thetas)
        X, thetas = np.asarray(X, dtype=float), np.asarray(thetas, dtype=float)
        shape = X.shape[:2]
        with np.errstate(all="ignore"):
            parts = self._jacobian(*[X[..., j] for j in range(X.shape[-1])],
                                   *[thetas[:, [i]] for i in range(thetas.shape[1])])
        out = np.empty((*shape, len(parts)))
        for i, p in enumerate(parts):
            out[:, :, i] = np.broadcast_to(np.asarray(p, dtype=float), shape)
        return out

    def jacobian(self, X: np.ndarray, theta: np.ndarray) -> np.ndarray:
        """d prediction / d constants, shape (n, k)."""
        if self._compiled is not None:
            with np.errstate(all="ignore"):
                return self._compiled.jacobian(X, theta)
        X = np.asarray(X, dtype=float)
        n = X.shape[0]
        with np.errstate(all="ignore"):
            cols = self._jacobian(*[X[:, j] for j in range(X.shape[1])], *np.asarray(theta, dtype=float))
        if not cols:
            return np.zeros((n, 0))
        return np.column_stack([np.broadcast_to(np.asarray(c, dtype=float), (n,)) for c in cols])

    @cached_property
    def separable(self) -> "Separable":
        """Split constants into linear amplitudes (solved exactly) and the rest (searched).

        The law is then pred = h(X, nl) + sum_i lin_i * g_i(X, nl): variable projection.
        """
        if self._compiled is not None:
            c = self._compiled
            return Separable(linear=c.linear, nonlinear=c.nonlinear, func=c.basis)
        linear: list[int] = []
        for i, c in enumerate(self.constants):
            d = sp.diff(self.expr, c)
            chosen = [self.constants[j] for j in linear] + [c]
            if d.free_symbols & set(chosen):
                continue
            if any(c in sp.diff(self.expr, self.constants[j]).free_symbols for j in linear):
                continue
            linear.append(i)
        nonlinear = [i for i in range(len(self.constants)) if i not in linear]
        lin_syms = [self.constants[i] for i in linear]
        basis = [sp.diff(self.expr, c) for c in lin_syms]
        offset = self.expr.xreplace({c: 0 for c in lin_syms})
        args = [*self.variables, *[self.constants[i] for i in nonlinear]]
        func = _numpy_function(args, [offset, *basis])
        return Separable(linear=linear, nonlinear=nonlinear, func=func)

    def rename_constants(self, theta_by_name: dict[str, float]) -> np.ndarray:
        return np.array([theta_by_name[c.name] for c in self.constants], dtype=float)

    def latex(self) -> str:
        return sp.latex(self.expr)


def parse_law(
    text: str,
    variables: Sequence[str],
    *,
    constants: Iterable[str] | None = None,
    max_constants: int | None = None,
    column_hints: dict[str, str] | None = None,
    check_typos: bool = True,
) -> Law:
    """Parse untrusted formula text over the given variable symbols.

    `constants`: if given, the only names allowed besides variables (an LLM declares them);
    otherwise every other identifier is a constant unless it looks like a typo of a variable (see
    `check_constant_name`). `column_hints` maps data column names to symbols ("" for a column that is
    not a variable) so a formula written with column names gets a helpful refusal. `check_typos=False`
    re-reads a law that was accepted before (stored in a run, exported). Raises LawError, and only
    LawError, for anything wrong with the text (whatever SymPy raises on the way included). This runs
    in the caller's process; `discovery.laws.guard.parse_bounded` adds a hard time bound.
    """
    tree = syntax_tree(text)
    try:
        return _build(text, tree, variables, constants, max_constants, column_hints, check_typos)
    except LawError:
        raise
    except RecursionError:
        raise LawError("formula is too deeply nested to simplify") from None
    except MemoryError:
        raise LawError("formula is too large to simplify") from None
    except Exception as exc:  # SymPy's own errors (OverflowError from mpmath, TypeError, ...): a reason, not a crash
        raise LawError(" ".join(f"SymPy cannot process the formula: {type(exc).__name__}: {exc}".split())[:300]) \
            from None


def _build(text: str, tree: ast.Expression, variables: Sequence[str], constants: Iterable[str] | None,
           max_constants: int | None, column_hints: dict[str, str] | None, check_typos: bool) -> Law:
    var_syms = {v: sp.Symbol(v, real=True) for v in variables}
    walker = _Walker(var_syms, set(constants) if constants is not None else None, column_hints or {}, check_typos)
    result = walker.walk(tree)
    if isinstance(result, _Num) or not (result.free_symbols & set(var_syms.values())):
        raise LawError("formula uses no variable; it must depend on at least one of " + ", ".join(variables))
    expr = result
    if expr.has(sp.zoo, sp.nan, sp.oo, -sp.oo, sp.I):
        raise LawError("formula simplifies to an undefined or complex value")
    _check_folded(expr)
    used_consts = sorted(expr.free_symbols - set(var_syms.values()), key=lambda s: s.name)
    if not used_consts:
        raise LawError("formula has no fittable constant")
    if max_constants is not None and len(used_consts) > max_constants:
        raise LawError(f"formula has {len(used_consts)} constants; this task allows at most {max_constants}")
    canon_expr, mapping = canonical_rename(combine_exponentials(expr), used_consts)
    canonical = sp.sstr(canon_expr, order="lex")
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    order = sorted(used_consts, key=lambda c: int(mapping[c].name[1:]))
    complexity = sum(1 for _ in sp.preorder_traversal(expr))
    return Law(
        text=text.strip(),
        expr=expr,
        variables=tuple(var_syms.values()),
        constants=tuple(order),
        canonical=canonical,
        hash=digest,
        complexity=complexity,
    )


def _check_folded(expr: sp.Expr) -> None:
    """The literal limits hold for the numbers SymPy folded, too: `A*N*1e30*1e30` carries 1e60."""
    for number in expr.atoms(sp.Number):
        if abs(_float_of(number)) > MAX_LITERAL:
            raise LawError(f"the formula folds to the constant {float(number):g}, beyond {MAX_LITERAL:g} in magnitude")
    for power in expr.atoms(sp.Pow):
        if power.exp.is_Number and abs(_float_of(power.exp)) > MAX_EXPONENT_LITERAL:
            raise LawError(f"the formula folds to the exponent {float(power.exp):g}, beyond "
                           f"{MAX_EXPONENT_LITERAL:g} in magnitude")
