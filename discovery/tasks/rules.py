"""Row rules such as `N >= 1e9` (which rows are test), read through an allow-list and never evaluated.

A rule is comparisons (`<`, `<=`, `>`, `>=`, `==`, `!=`, chains like `1e8 <= N < 1e9`) between column
names or variable symbols, numbers and arithmetic on them (`+ - * / **`), joined by `and`, `or`,
`not` and parentheses; `model == "7B"` compares a text column. Python's `ast` parses the text, each node
is checked against the allow-list, and the rule is computed with numpy on the columns: no `eval`.
"""
from __future__ import annotations

import ast
import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

MAX_RULE_LENGTH = 300
_COMPARE = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
            ast.Eq: operator.eq, ast.NotEq: operator.ne}
_ARITH = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
          ast.Pow: operator.pow}


class RuleError(ValueError):
    """The rule was refused or cannot be computed; the message is one line."""


@dataclass(frozen=True)
class Rule:
    text: str
    tree: ast.Expression
    names: tuple[str, ...]

    def evaluate(self, columns: dict[str, pd.Series]) -> np.ndarray:
        """The rule on every row: a boolean array. `columns` maps each name of the rule to its column."""
        with np.errstate(all="ignore"):
            out = _Eval(columns).value(self.tree.body)
        if not isinstance(out, np.ndarray) or out.dtype != bool:
            raise RuleError(f"{self.text!r} is not a condition (write a comparison such as N >= 1e9)")
        return out

    def lower_bounds(self) -> list[str]:
        """The names this rule bounds from below, one per operand, when it is `A >= a or B > b ...` (each operand
        one name against a number): such a test split is the largest rows along any of them. [] otherwise."""
        body = self.tree.body
        operands = body.values if isinstance(body, ast.BoolOp) and isinstance(body.op, ast.Or) else [body]
        names = [_lower_bounded(node) for node in operands]
        return [] if None in names else list(dict.fromkeys(names))


def _lower_bounded(node: ast.AST) -> str | None:
    """`N >= 1e9`, `N > 1e9`, `1e9 <= N` or `1e9 < N`: the name N; None for anything else."""
    if not isinstance(node, ast.Compare) or len(node.ops) != 1:
        return None
    left, op, right = node.left, node.ops[0], node.comparators[0]
    if isinstance(left, ast.Name) and isinstance(op, (ast.Gt, ast.GtE)) and _is_number(right):
        return left.id
    if isinstance(right, ast.Name) and isinstance(op, (ast.Lt, ast.LtE)) and _is_number(left):
        return right.id
    return None


def _is_number(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool)


def parse_rule(text: str) -> Rule:
    if not isinstance(text, str) or not text.strip():
        raise RuleError("the rule is empty; write a comparison such as N >= 1e9")
    if len(text) > MAX_RULE_LENGTH or any(ord(ch) > 127 for ch in text):
        raise RuleError(f"the rule must be plain ASCII of at most {MAX_RULE_LENGTH} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise RuleError(f"{text!r} is not a valid rule: {exc.msg}") from None
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if node.id.startswith("_"):
                raise RuleError(f"name {node.id!r} is not allowed in a rule")
            names.append(node.id)
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float, str)):
                raise RuleError(f"literal {node.value!r} is not allowed in a rule")
        elif not isinstance(node, (ast.Expression, ast.Compare, ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.And, ast.Or,
                                   ast.Not, ast.USub, ast.UAdd, ast.Load, *_COMPARE, *_ARITH)):
            raise RuleError(f"{type(node).__name__} is not allowed in a rule; use comparisons, and/or/not, numbers")
    if not names:
        raise RuleError(f"{text!r} names no column")
    return Rule(text.strip(), tree, tuple(dict.fromkeys(names)))


class _Eval:
    def __init__(self, columns: dict[str, pd.Series]):
        self.columns = columns

    def value(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            col = self.columns[node.id]
            num = pd.to_numeric(col, errors="coerce")
            if num.notna().sum() == col.notna().sum():
                return num.to_numpy(dtype=float)
            return col.astype(str).str.strip().to_numpy(dtype=object)
        if isinstance(node, ast.UnaryOp):
            v = self.value(node.operand)
            if isinstance(node.op, ast.Not):
                return ~self._bool(v)
            if isinstance(v, str) or (isinstance(v, np.ndarray) and v.dtype == object):
                raise RuleError("a sign before text")
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp):
            a, b = self.value(node.left), self.value(node.right)
            if any(isinstance(x, str) or (isinstance(x, np.ndarray) and x.dtype == object) for x in (a, b)):
                raise RuleError("arithmetic on text")
            out = _ARITH[type(node.op)](np.asarray(a, dtype=float), np.asarray(b, dtype=float))
            return out if np.ndim(out) else float(out)
        if isinstance(node, ast.BoolOp):
            parts = [self._bool(self.value(v)) for v in node.values]
            out = parts[0]
            for p in parts[1:]:
                out = (out & p) if isinstance(node.op, ast.And) else (out | p)
            return out
        if isinstance(node, ast.Compare):
            left = self.value(node.left)
            out = None
            for op, comparator in zip(node.ops, node.comparators, strict=True):
                right = self.value(comparator)
                part = self._compare(op, left, right)
                out = part if out is None else out & part
                left = right
            return out
        raise RuleError(f"{type(node).__name__} is not allowed in a rule")  # unreachable after parse_rule

    @staticmethod
    def _bool(v: Any) -> np.ndarray:
        if not isinstance(v, np.ndarray) or v.dtype != bool:
            raise RuleError("and/or/not join comparisons only")
        return v

    @staticmethod
    def _compare(op: ast.cmpop, a: Any, b: Any) -> np.ndarray:
        text = [isinstance(x, str) or (isinstance(x, np.ndarray) and x.dtype == object) for x in (a, b)]
        if any(text):
            if not isinstance(op, (ast.Eq, ast.NotEq)):
                raise RuleError("text can only be compared with == or !=")
            a = a if text[0] else np.asarray(a, dtype=float).astype(str)
            b = b if text[1] else np.asarray(b, dtype=float).astype(str)
            return np.asarray(_COMPARE[type(op)](np.asarray(a, dtype=object), b), dtype=bool)
        a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        bad = np.broadcast_to(np.isnan(a) | np.isnan(b), np.broadcast(a, b).shape)
        if bad.any():
            raise RuleError(f"a missing value in row {int(np.flatnonzero(bad)[0])}")
        return np.asarray(_COMPARE[type(op)](a, b), dtype=bool)
