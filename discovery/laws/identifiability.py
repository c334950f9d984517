"""Redundant constants: a law whose constants cannot all be told apart by the data is a wasted fit.

`A*N**a*N**b` or `A*log(N) + B*log(N)` fit exactly like a law with one constant fewer, but they
cost a fit, crowd the population with copies, and their constants mean nothing. The check is
numerical and generic: the Jacobian of the prediction with respect to the constants, on the rows
the law will be fitted to, must have full column rank at two random points near the starting
values. Only a deficiency seen at both points counts, so an unlucky start cannot condemn a law. The
campaign applies it to the offline grammar's laws, whose variables are scaled to order one.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from discovery.laws.law import Law
from discovery.tasks.dataset import Dataset
from discovery.tasks.values import ConstantSpec

MAX_ROWS = 96  # distinct rows of the largest group: enough to show every variable's spread, cheap to check
RANK_TOLERANCE = 1e-8  # smallest / largest singular value of the column-normalised Jacobian
POINTS = 2


def screening_rows(data: Dataset) -> np.ndarray:
    """The rows a law is checked on: the largest group's distinct rows, at most MAX_ROWS spread evenly."""
    if len(data) == 0:
        return data.X
    names, counts = np.unique(data.groups, return_counts=True)
    rows = np.unique(data.X[data.groups == names[np.argmax(counts)]], axis=0)
    if len(rows) > MAX_ROWS:
        rows = rows[np.linspace(0, len(rows) - 1, MAX_ROWS).round().astype(int)]
    return rows


def _point(law: Law, specs: Mapping[str, ConstantSpec], rng: np.random.Generator) -> np.ndarray:
    theta = np.empty(len(law.constants))
    for i, c in enumerate(law.constants):
        spec = specs.get(c.name) or ConstantSpec(init=1.0)
        lo, hi = spec.bounds
        value = spec.init * (1 + 0.3 * rng.standard_normal()) + 0.1 * rng.standard_normal()
        theta[i] = np.clip(value, lo if np.isfinite(lo) else -np.inf, hi if np.isfinite(hi) else np.inf)
    return theta


def _null_direction(J: np.ndarray) -> np.ndarray | None:
    """The unit combination of constants the prediction does not depend on, or None at full rank."""
    norms = np.linalg.norm(J, axis=0)
    if not np.isfinite(J).all() or norms.max() == 0:
        return None  # cannot judge here (e.g. a log of a negative start): let the fitter decide
    dead = norms == 0  # exactly: a column that is only tiny (raw units, poor start) can still be fitted
    if dead.any():
        v = np.zeros(J.shape[1])
        v[np.flatnonzero(dead)[0]] = 1.0
        return v
    s, vt = np.linalg.svd(J / norms, full_matrices=False)[1:]
    return vt[-1] if s[-1] < RANK_TOLERANCE * s[0] else None


def redundant_constants(law: Law, X: np.ndarray, specs: Mapping[str, ConstantSpec] | None,
                        seed: int = 0) -> str | None:
    """Why some constants of `law` cannot be fitted separately on rows `X`, or None if they can."""
    if len(law.constants) < 2 or len(X) == 0:
        return None
    rng = np.random.default_rng(seed)
    direction = None
    for _ in range(POINTS):
        direction = _null_direction(law.jacobian(X, _point(law, specs or {}, rng)))
        if direction is None:
            return None
    names = [c.name for c, w in zip(law.constants, np.abs(direction), strict=True) if w > 0.2 * np.abs(direction).max()]
    if len(names) == 1:
        return f"redundant constant: the prediction does not depend on {names[0]}"
    return (f"redundant constants: {', '.join(names)} cannot be told apart by the data "
            f"(the law has fewer free constants than it names)")
